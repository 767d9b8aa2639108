"""Backbones and adapter sets to and from the Hugging Face Hub, with generated model cards.

One backbone repo (``config.json`` + ``model.safetensors``, loaded by transformers' own
``from_pretrained``) and many small adapter sets beside it, each a ``<set_name>/`` folder in the
tuners' layout (``adapter_set.json``, ``stage_XX/``, ``task.safetensors``), in the backbone's repo or
in a repo of their own. Every push is one commit (``HfApi.create_commit``) that also rewrites the
repo's ``README.md``: YAML metadata (library, tags, task, ``base_model``, a ``model-index`` with the
metrics you pass) plus a generated section between two HTML markers, so text written by hand outside
the markers survives. Downloads go through ``snapshot_download`` and honour ``HF_HUB_OFFLINE``: the
cached snapshot is used, and a missing repo, revision or set raises ``FileNotFoundError`` naming what
is available. :class:`~lorun_peft.unfolding.LoRunModel` exposes this as ``push_to_hub``,
``push_adapter_set``, ``load_adapter`` and ``list_adapter_sets``; see docs/hub.md.

Three modules, by what they touch: :mod:`.files` (references, the offline switch, downloads and
lookups: read-only), :mod:`.cards` (model cards and the task tags registered by ``lorun_peft.tasks``)
and :mod:`.push` (commits and offline exports). This package re-exports their public names; patch a
name (e.g. ``is_offline``) in the module that calls it, not here.
"""

from lorun_peft.tuners.adapter_set import SET_FILE

from .cards import (
    ADAPTER_TAGS,
    BASE_TAGS,
    CARD_END,
    CARD_START,
    PIPELINE_TAG,
    README,
    LoRunModel,
    Metrics,
    backbone_summary,
    build_model_card,
    evaluation_results,
    register_task_tag,
    set_summary,
    write_model_card,
)
from .files import (
    LIBRARY_NAME,
    SHIPPED_ADAPTERS_DIR,
    SHIPPED_HUB_OWNER,
    check_backbone_reachable,
    check_push_access,
    check_repo_id,
    download_adapter_set,
    is_hub_id,
    is_offline,
    list_adapter_sets,
    resolve_adapter_dir,
    shipped_copy,
)
from .push import check_replaceable, export_repo, push_adapter_set, push_backbone

__all__ = [
    "ADAPTER_TAGS",
    "BASE_TAGS",
    "CARD_END",
    "CARD_START",
    "LIBRARY_NAME",
    "PIPELINE_TAG",
    "README",
    "SET_FILE",
    "SHIPPED_ADAPTERS_DIR",
    "SHIPPED_HUB_OWNER",
    "LoRunModel",
    "Metrics",
    "backbone_summary",
    "build_model_card",
    "check_backbone_reachable",
    "check_push_access",
    "check_replaceable",
    "check_repo_id",
    "download_adapter_set",
    "evaluation_results",
    "export_repo",
    "is_hub_id",
    "is_offline",
    "list_adapter_sets",
    "push_adapter_set",
    "push_backbone",
    "register_task_tag",
    "resolve_adapter_dir",
    "set_summary",
    "shipped_copy",
    "write_model_card",
]
