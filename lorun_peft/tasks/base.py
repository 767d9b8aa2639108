"""What a task is: :class:`TaskSpec`, the one place that knows a task's physics, data, naming and scoring.

Every module above this floor (the training recipes, evaluation, the Hub cards, figures, the CLI) asks
the spec of a task instead of branching on its name. A spec says:

* its name, its command-line options (``arguments``: a dataclass for ``HfArgumentParser``), its image
  channels and the paper's unfolded algorithm;
* how to build its physics from those options (and what to redraw per batch, if anything), and how
  to name the adapter set of a task mode (``ratio-25``, ``x2-k1``, ``mask-28``, ``missing-70``);
* its data: default training and test sets, how test items are read and training patches are cut;
* its scoring protocol (the field's published one), the per-stage metric, its Hub tag, and how a
  restored item is saved.

Register a new task with :func:`register_task` (``docs/architecture.md`` shows a whole one).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor

from lorun_peft.hub import register_task_tag
from lorun_peft.io import write_atomic

__all__ = [
    "ImageTask",
    "Item",
    "TaskSpec",
    "data_roots",
    "default_data_dir",
    "get_task",
    "png_bytes",
    "register_task",
    "repo_root",
    "task_for_physics",
    "task_names",
]

#: A test item: its name and the clean ``(C, H, W)`` tensor in [0, 1].
Item = tuple[str, Tensor]
#: A metric ``metric(estimate, clean) -> scalar tensor`` on batched ``(B, C, H, W)`` tensors.
Metric = Callable[[Tensor, Tensor], Tensor]


def repo_root() -> Path:
    """The source checkout's root (where ``examples/`` and ``../shared`` are looked for)."""
    return Path(__file__).resolve().parents[2]


def default_data_dir() -> Path | None:
    """``$LORUN_DATA_DIR``, else ``<repo>/../shared/data`` when it exists, else ``None``."""
    env = os.environ.get("LORUN_DATA_DIR")
    if env:
        return Path(env)
    shared = repo_root().parent / "shared" / "data"
    return shared if shared.is_dir() else None


def data_roots(data_dir: str | os.PathLike | None) -> list[Path]:
    """Roots searched for default data files: ``--data_dir``, ``$LORUN_DATA_DIR``, ``../shared/data``."""
    roots = [Path(data_dir)] if data_dir else []
    fallback = default_data_dir()
    return roots + ([fallback] if fallback is not None and fallback not in roots else [])


def png_bytes(image: Tensor) -> bytes:
    """``(C, H, W)`` in [0, 1] (C = 1 or 3) as 8-bit PNG bytes (clipped, rounded)."""
    array = (image.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class TaskSpec:
    """One restoration task. Subclasses set the class attributes and override what differs.

    ``arguments`` is the dataclass of the task's options; every method taking ``args`` gets an instance.
    """

    #: Short name used on the command line and in folder names (``cs``).
    name: ClassVar[str] = ""
    #: How messages name the task (``CS``).
    label: ClassVar[str] = ""
    #: One line for listings (``lorun info --list``).
    title: ClassVar[str] = ""
    #: The dataclass of the task's options (parsed by ``HfArgumentParser`` in the example scripts).
    arguments: ClassVar[type] = object
    #: The unfolded algorithm the paper (or this library) uses for the task: ``pgd`` or ``hqs``.
    algorithm: ClassVar[str] = "pgd"
    #: The protocol's name as printed beside a score (``lorun restore``).
    protocol_label: ClassVar[str] = ""
    #: Whether an image file can be the clean input of ``lorun restore`` (CASSI restores measurements only).
    restores_images: ClassVar[bool] = True
    #: Whether ``lorun evaluate --mask`` gives every test item one (user's) mask: CASSI's coded aperture.
    evaluates_with_one_mask: ClassVar[bool] = False
    #: Hub tag of the task (model cards).
    hub_tag: ClassVar[str] = "image-restoration"
    #: The scoring protocol, in words (written into every evaluation report).
    protocol: ClassVar[str] = ""
    #: Default training and test data, relative to the data root (``../shared/data``).
    train_data: ClassVar[str | None] = None
    test_data: ClassVar[str | None] = None
    #: ``physics.get_config()["type"]`` values this task owns.
    physics_types: ClassVar[tuple[str, ...]] = ()
    #: Patch side of ``--smoke`` runs.
    smoke_patch_size: ClassVar[int] = 32
    #: Whether training takes non-square crops (``--patch_height``): CASSI's full-width strips.
    strip_patches: ClassVar[bool] = False
    #: The adapter set ``load_pretrained`` activates when none is named (if installed).
    default_set: ClassVar[str | None] = None
    #: The option that names a task mode (``ratio`` for CS): :meth:`set_name_for` needs it.
    set_key: ClassVar[str] = ""
    #: ``lorun train``'s lines: options of ``examples/train_<name>.py`` for phase 1, then phase-2 sets.
    recipe: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ identity
    def owns(self, config: dict[str, Any]) -> bool:
        """Whether a physics config (``LinearOperator.get_config()``) is this task's."""
        return config.get("type") in self.physics_types

    def channels(self, args: Any) -> int:
        """Image channels (1 gray, 3 RGB, the band count of a cube)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ physics
    def build_physics(
        self, args: Any, patch_size: int, *, smoke: bool = False, seed: int = 0, data_dir: Any = None
    ) -> tuple[Any, str]:
        """The operator for training on ``patch_size`` crops, and a one-line description of it."""
        raise NotImplementedError

    def physics_sampler(
        self, args: Any, patch_size: int, *, smoke: bool = False, seed: int = 0, data_dir: Any = None
    ) -> Callable[[Any, torch.Generator], None] | None:
        """What redraws part of the operator before every batch (a mask crop, a kernel), or ``None``."""
        return None

    def set_name(self, args: Any) -> str:
        """The adapter-set name of the task mode ``args`` selects (``ratio-25``)."""
        raise NotImplementedError

    def set_name_for(self, **selection: Any) -> str:
        """The set name of a task mode given by keywords (``ratio=0.25``); raises ``ValueError`` otherwise."""
        if self.set_key not in selection:
            raise ValueError(
                f"a {self.label} adapter set is named by its {self.set_key}: pass {self.set_key}= "
                f"(got {sorted(selection) or 'nothing'})"
            )
        try:
            args = self.arguments(**selection)
        except TypeError as error:
            raise ValueError(
                f"a {self.label} adapter set is not named by {sorted(selection)}: {error}"
            ) from None
        return self.set_name(args)

    def describe_physics(self, config: dict[str, Any]) -> str:
        """One line for a physics config of this task."""
        return ", ".join(f"{key}={value}" for key, value in sorted(config.items()))

    def finish_training(self, model: Any, sampler: Any) -> None:
        """Put the trained model's physics in the state it is saved with (default: as trained)."""

    def start_phase2(
        self, physics: Any, backbone_physics: Any, args: Any, model_args: Any, seed: int
    ) -> bool:
        """Prepare a phase-2 set's physics from the backbone's; ``True`` when the set keeps the backbone's."""
        return False

    # ------------------------------------------------------------------ data
    def load_test_items(
        self, source: Any, args: Any | None = None, *, max_items: int | None = None
    ) -> list[Item]:
        """``[(name, (C, H, W) tensor in [0, 1])]`` test items of a folder (or file), sorted by name."""
        raise NotImplementedError

    def train_dataset(self, path: Path, args: Any, data: Any, *, seed: int = 0) -> tuple[Any, str]:
        """Training patches from ``path`` (a ``torch`` dataset) and where they come from."""
        raise NotImplementedError

    def smoke_items(self, args: Any, size: int = 64, count: int = 2) -> list[Item]:
        """``count`` small items made from the shipped sample images (runs without data)."""
        raise NotImplementedError

    def smoke_dataset(self, args: Any, data: Any, *, seed: int = 0) -> tuple[Any, str]:
        """Training patches of ``--smoke`` runs without data: crops of two :meth:`smoke_items`."""
        from lorun_peft.data.images import RandomPatchDataset

        tensors = [t for _, t in self.smoke_items(args, size=max(64, data.patch_size), count=2)]
        return RandomPatchDataset(tensors, data.patch_size, data.patches_per_image, seed=seed), (
            "shipped sample images"
        )

    def training_overrides(self, args: Any) -> dict[str, Any]:
        """Fields of the training config the task mode fixes (e.g. the noise level of a denoising set)."""
        return {}

    def evaluation_options(self, args: Any, *, smoke: bool = False, data_dir: Any = None) -> dict[str, Any]:
        """Extra keywords for :func:`lorun_peft.evaluation.evaluate_items` during training (e.g. a mask)."""
        return {}

    # ------------------------------------------------------------------ scoring
    def prepare(self, image: Tensor, physics: Any) -> Tensor:
        """The clean item as the protocol scores it (e.g. cropped to a multiple of the SR scale)."""
        return image

    @contextlib.contextmanager
    def evaluation_physics(
        self, model: Any, shape: tuple[int, ...], *, index: int = 0, seed: int = 0, **options: Any
    ) -> Iterator[Any]:
        """The operator that measures an item of ``shape``; any change to the model is undone on exit."""
        yield model.physics

    def score(self, restored: Tensor, clean: Tensor, physics: Any) -> tuple[float, float]:
        """``(PSNR, SSIM)`` of one restored ``(1, C, H, W)`` item with the task's protocol."""
        raise NotImplementedError

    def stage_metric(self, physics: Any) -> Metric:
        """The PSNR the protocol uses, as ``metric(estimate, clean)`` (per-stage curves, training logs)."""
        raise NotImplementedError

    def read_mask(self, path: Path) -> Tensor:
        """A user's mask file for ``--mask`` (CASSI coded aperture, inpainting mask)."""
        raise ValueError(f"--mask is not used by {self.name} models")

    def read_real_measurement(
        self, path: Path, real_scale: Any, physics: Any
    ) -> tuple[Tensor, dict[str, str]] | None:
        """A real instrument's measurement file in its own layout and scale, or ``None`` (ordinary file)."""
        return None

    def write_restored(self, image: Tensor, png: Path) -> list[Path]:
        """``lorun restore``'s output: the PNG (cubes: pseudo-colour, and the cube as ``.npy`` beside it)."""
        return [write_atomic(png, png_bytes(image))]

    def save_restored(self, image: Tensor, folder: Path, name: str, **options: Any) -> list[Path]:
        """Write one restored ``(C, H, W)`` item; returns the files."""
        return [write_atomic(folder / f"{name}.png", png_bytes(image))]


class ImageTask(TaskSpec):
    """A task on ordinary images (gray or RGB) read from folders or Hub datasets."""

    #: Channels of the task's images.
    image_channels: ClassVar[int] = 1

    def channels(self, args: Any = None) -> int:
        return self.image_channels

    def load_test_items(
        self, source: Any, args: Any | None = None, *, max_items: int | None = None
    ) -> list[Item]:
        """Every image of a folder or Hub dataset (:func:`~lorun_peft.data.load_image_folder`), by name."""
        import datasets

        from lorun_peft.data.images import image_to_tensor, load_image_folder

        channels = self.channels(args)
        dataset = load_image_folder(str(source), split="train", channels=channels)
        paths = dataset.cast_column("image", datasets.Image(decode=False))["image"]
        items = [
            (
                Path(record["path"]).stem if record.get("path") else f"{index:04d}",
                image_to_tensor(row["image"], channels),
            )
            for index, (record, row) in enumerate(zip(paths, dataset))
        ]
        items.sort(key=lambda item: item[0])
        return items[:max_items] if max_items is not None else items

    def train_dataset(self, path: Path, args: Any, data: Any, *, seed: int = 0) -> tuple[Any, str]:
        """Random augmented crops (:class:`~lorun_peft.data.RandomPatchDataset`), every file decoded once."""
        from lorun_peft.data.images import RandomPatchDataset, load_image_folder

        images = load_image_folder(str(path), split="train", channels=self.channels(args))
        if data.max_train_images is not None:
            images = images.select(range(min(data.max_train_images, len(images))))
        dataset = RandomPatchDataset(
            images, data.patch_size, data.patches_per_image, seed=seed, cache_images=True
        )
        for index in range(len(images)):  # a crop larger than an image fails now, naming the file
            dataset[index * data.patches_per_image]
        return dataset, f"images {path}"

    def smoke_items(self, args: Any, size: int = 64, count: int = 2) -> list[Item]:
        """Centre crops of the shipped sample photographs (gray or RGB)."""
        from lorun_peft.data.samples import load_sample_image

        items = []
        for name in ("camera", "astronaut", "coffee", "chelsea")[:count]:
            image = load_sample_image(name, mode="L" if self.channels(args) == 1 else "RGB")
            top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
            items.append((name, image[:, top : top + size, left : left + size].contiguous()))
        return items


# ---------------------------------------------------------------------------------------------- registry
_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make ``spec`` known to the recipes, evaluation, cards and CLI (replaces one of the same name)."""
    if not isinstance(spec, TaskSpec) or not spec.name:
        raise TypeError(f"register_task needs a TaskSpec instance with a name, got {spec!r}")
    _TASKS[spec.name] = spec
    register_task_tag(spec.owns, spec.hub_tag)
    return spec


def task_names() -> tuple[str, ...]:
    """The registered task names, in registration order."""
    return tuple(_TASKS)


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The spec registered as ``name`` (a spec is returned as is); ``ValueError`` listing the tasks."""
    if isinstance(name, TaskSpec):
        return name
    if name not in _TASKS:
        raise ValueError(f"task must be one of {task_names()}, got {name!r}")
    return _TASKS[name]


def task_for_physics(physics: Any) -> TaskSpec:
    """The task owning a physics (an operator, a model with ``.physics``, or a config dict)."""
    if hasattr(physics, "physics") and not isinstance(physics, dict):
        physics = physics.physics
    config = physics if isinstance(physics, dict) else physics.get_config()
    for spec in _TASKS.values():
        if spec.owns(config):
            return spec
    raise ValueError(
        f"no task owns physics {config.get('type')!r} (tasks: {task_names()}); register one with "
        "lorun_peft.tasks.register_task"
    )
