"""Training recipes: the shared options and the reusable steps the example scripts call in order.

``examples/train_<task>.py`` read top to bottom as the recipe; this package holds what they share
(:mod:`.arguments`: data/model options and ``--smoke``; :mod:`.steps`: run folder, data, model, save).
"""

from .arguments import (
    ADAPTER_INITS,
    MODES,
    SCRIPT_TRAINING_DEFAULTS,
    SMOKE,
    DataArguments,
    ModelArguments,
    apply_smoke,
    parse_training_args,
)
from .steps import (
    RUN_TARGET_FILE,
    TrainingSummary,
    build_model,
    claim_output_dir,
    evaluation_during_training,
    freeze_adapters,
    is_main_process,
    report_split,
    save_run,
    start_run,
    training_data,
)

__all__ = [
    "ADAPTER_INITS",
    "MODES",
    "RUN_TARGET_FILE",
    "SCRIPT_TRAINING_DEFAULTS",
    "SMOKE",
    "DataArguments",
    "ModelArguments",
    "TrainingSummary",
    "apply_smoke",
    "build_model",
    "claim_output_dir",
    "evaluation_during_training",
    "freeze_adapters",
    "is_main_process",
    "parse_training_args",
    "report_split",
    "save_run",
    "start_run",
    "training_data",
]
