"""Deep unfolding networks: the PGD/HQS loop, the block/shared/lorun modes and adapter sets.

:class:`LoRunModel` (``model_type="lorun"``, registered with ``AutoConfig``/``AutoModel`` on import)
runs K stages of data step + denoiser on a measurement; :class:`LoRunConfig` describes its backbone.
Modules: ``model`` (the network, restore, backbone save/load), ``adapter_sets`` (its adapter-set
methods, a mixin), ``backbone_io`` and ``inputs`` (the checks around loading and around forward's
inputs), ``steps`` (step and task parameters), ``tiling`` (tiled restore). See docs/unfolding.md.
"""

from transformers import AutoConfig, AutoModel

from .config import LoRunConfig
from .model import LoRunModel, LoRunOutput
from .steps import StageSteps, TaskParameters

AutoConfig.register(LoRunConfig.model_type, LoRunConfig, exist_ok=True)
AutoModel.register(LoRunConfig, LoRunModel, exist_ok=True)

__all__ = ["LoRunConfig", "LoRunModel", "LoRunOutput", "StageSteps", "TaskParameters"]
