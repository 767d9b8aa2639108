"""Deep unfolding networks: the PGD/HQS loop, the block/shared/lorun modes and adapter sets.

:class:`LoRunModel` (``model_type="lorun"``, registered with ``AutoConfig``/``AutoModel`` on import)
runs K stages of data step + denoiser on a measurement; :class:`LoRunConfig` describes its backbone.
See docs/unfolding.md.
"""

from transformers import AutoConfig, AutoModel

from .config import LoRunConfig
from .model import LoRunModel, LoRunOutput
from .steps import StageSteps, TaskParameters

AutoConfig.register(LoRunConfig.model_type, LoRunConfig, exist_ok=True)
AutoModel.register(LoRunConfig, LoRunModel, exist_ok=True)

__all__ = ["LoRunConfig", "LoRunModel", "LoRunOutput", "StageSteps", "TaskParameters"]
