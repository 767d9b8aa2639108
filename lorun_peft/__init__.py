"""lorun_peft: LoRun deep LoRA-unfolding networks for image restoration, as a PEFT plugin.

The small public API: degradation operators (``physics``), denoisers as transformers models,
StageLoRA on PEFT (``tuners``), the unfolding network ``LoRunModel`` in its three modes
(Block-K, Block-K-share, LoRun-K), the training loop, and the field's metrics. Everything else
is importable from its subpackage but may change.
"""

from . import _torchvision_compat  # noqa: F401 - first: lets transformers import torchvision (see it)
from .denoisers import (
    ResUNetConfig,
    ResUNetDenoiser,
    TransformerConfig,
    TransformerDenoiser,
    UNetConfig,
    UNetDenoiser,
)
from .metrics import psnr, ssim
from .physics import CASSI, BlockCS, BlurDownsample, Denoising, LinearOperator, physics_from_config
from .pretrained import load_pretrained
from .training import UnfoldingTrainingConfig, train
from .tuners import StageLoRAConfig, parameter_report, stage
from .unfolding import LoRunConfig, LoRunModel, LoRunOutput

__version__ = "0.1.0"

__all__ = [
    "CASSI",
    "BlockCS",
    "BlurDownsample",
    "Denoising",
    "LinearOperator",
    "LoRunConfig",
    "LoRunModel",
    "LoRunOutput",
    "ResUNetConfig",
    "ResUNetDenoiser",
    "StageLoRAConfig",
    "TransformerConfig",
    "TransformerDenoiser",
    "UNetConfig",
    "UNetDenoiser",
    "UnfoldingTrainingConfig",
    "load_pretrained",
    "parameter_report",
    "physics_from_config",
    "psnr",
    "ssim",
    "stage",
    "train",
]
