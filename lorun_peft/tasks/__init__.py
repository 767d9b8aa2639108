"""Tasks as data: one :class:`TaskSpec` per restoration task, the only place that knows a task by name.

``cs`` (block compressive sensing), ``sr`` (super-resolution with a blur kernel), ``cassi`` (SD-CASSI
spectral snapshot imaging), ``inpainting`` (pixel inpainting with random masks, through the operator
protocol) and ``denoising`` are registered on import. :func:`get_task` looks one up by name and
:func:`task_for_physics` by a model's physics; :func:`register_task` adds one (docs/architecture.md).
"""

from .base import (
    ImageTask,
    Item,
    TaskSpec,
    data_roots,
    default_data_dir,
    get_task,
    png_bytes,
    register_task,
    repo_root,
    task_for_physics,
    task_names,
)
from .cassi import CASSIArguments, CASSITask, crop_mask, resolve_mask, synthetic_cube, synthetic_mask
from .cs import CSArguments, CSTask, cs_set_name
from .denoising import DenoisingArguments, DenoisingTask
from .inpainting import InpaintingArguments, InpaintingTask, RandomPixelMasks, inpainting_set_name
from .sr import (
    SRArguments,
    SRTask,
    is_all_kernels,
    kernel_index,
    load_sr_kernel,
    load_sr_kernels,
    sr_set_name,
)

for _spec in (CSTask(), SRTask(), CASSITask(), InpaintingTask(), DenoisingTask()):
    register_task(_spec)

__all__ = [
    "CASSIArguments",
    "CASSITask",
    "CSArguments",
    "CSTask",
    "DenoisingArguments",
    "DenoisingTask",
    "ImageTask",
    "InpaintingArguments",
    "InpaintingTask",
    "Item",
    "RandomPixelMasks",
    "SRArguments",
    "SRTask",
    "TaskSpec",
    "crop_mask",
    "cs_set_name",
    "data_roots",
    "default_data_dir",
    "get_task",
    "inpainting_set_name",
    "is_all_kernels",
    "kernel_index",
    "load_sr_kernel",
    "load_sr_kernels",
    "png_bytes",
    "register_task",
    "repo_root",
    "resolve_mask",
    "sr_set_name",
    "synthetic_cube",
    "synthetic_mask",
    "task_for_physics",
    "task_names",
]
