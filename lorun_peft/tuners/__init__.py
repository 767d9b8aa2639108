"""The PEFT side of LoRun: stage LoRA config, layers, stage control, adapter sets and accounting.

``StageLoRAConfig`` (eq. 12 ranks, paper/PEFT conv layouts) registers the StageLoRA layers with PEFT,
``add_stage_adapters`` injects K stage adapters into a denoiser, ``with stage(model, k):`` activates
adapter k without touching ``requires_grad``, adapter sets are switched (``injection``) and saved/loaded
(``adapter_set``) as task modes, and ``parameter_report`` separates base, adapter and task parameters.
See docs/stage_lora.md.
"""

from .accounting import ParameterCount, ParameterReport, parameter_report
from .adapter_set import load_adapter_set, record_set_checksums, save_adapter_set
from .config import CONV_LAYOUTS, StageLoRAConfig, stage_rank
from .fingerprint import base_fingerprint
from .injection import (
    AdapterSetError,
    LoadedAdapterSet,
    add_stage_adapters,
    delete_adapter_set,
    list_adapter_sets,
    set_adapter_set,
    stage_adapter_name,
    validate_set_name,
)
from .layers import (
    MERGE_MODES,
    STAGE_LORA_LAYERS,
    StageLoRAConv2d,
    StageLoRAConvTranspose2d,
    StageLoRALayer,
    StageLoRALinear,
)
from .stage import active_adapter_set, get_merge_mode, merge, set_merge_mode, stage, unmerge

__all__ = [
    "CONV_LAYOUTS",
    "MERGE_MODES",
    "STAGE_LORA_LAYERS",
    "AdapterSetError",
    "LoadedAdapterSet",
    "ParameterCount",
    "ParameterReport",
    "StageLoRAConfig",
    "StageLoRAConv2d",
    "StageLoRAConvTranspose2d",
    "StageLoRALayer",
    "StageLoRALinear",
    "active_adapter_set",
    "add_stage_adapters",
    "base_fingerprint",
    "delete_adapter_set",
    "get_merge_mode",
    "list_adapter_sets",
    "load_adapter_set",
    "record_set_checksums",
    "merge",
    "parameter_report",
    "save_adapter_set",
    "set_adapter_set",
    "set_merge_mode",
    "stage",
    "stage_adapter_name",
    "stage_rank",
    "unmerge",
    "validate_set_name",
]
