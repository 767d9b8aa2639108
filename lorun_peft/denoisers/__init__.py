"""Denoisers (the PMMs of the unfolding stages) as transformers models.

Each family is a config + model registered with ``AutoConfig``/``AutoModel`` on import: the paper's
classic ``lorun-unet`` (:class:`UNetDenoiser`), ``lorun-transformer`` (:class:`TransformerDenoiser`)
and ``lorun-resunet`` (:class:`ResUNetDenoiser`, SR), and the task-specific ``lorun-cppnet`` (CS) and
``lorun-ssr`` (CASSI). All share :class:`DenoiserPreTrainedModel`'s
``forward(pixel_values, sigma=None) -> Tensor`` contract; see docs/denoisers.md.
"""

from transformers import AutoConfig, AutoModel

from .base import DenoiserConfig, DenoiserPreTrainedModel, count_parameters, denoiser_from_config
from .cppnet import CPPNetConfig, CPPNetDenoiser
from .families import DENOISER_FAMILIES, build_denoiser
from .resunet import ResUNetConfig, ResUNetDenoiser
from .ssr import SSRConfig, SSRDenoiser
from .transformer import TransformerConfig, TransformerDenoiser
from .unet import UNetConfig, UNetDenoiser

for _config, _model in (
    (UNetConfig, UNetDenoiser),
    (TransformerConfig, TransformerDenoiser),
    (ResUNetConfig, ResUNetDenoiser),
    (CPPNetConfig, CPPNetDenoiser),
    (SSRConfig, SSRDenoiser),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)

__all__ = [
    "CPPNetConfig",
    "CPPNetDenoiser",
    "DENOISER_FAMILIES",
    "DenoiserConfig",
    "DenoiserPreTrainedModel",
    "ResUNetConfig",
    "ResUNetDenoiser",
    "SSRConfig",
    "SSRDenoiser",
    "TransformerConfig",
    "TransformerDenoiser",
    "build_denoiser",
    "UNetConfig",
    "UNetDenoiser",
    "count_parameters",
    "denoiser_from_config",
]
