"""Pushes and exports: one commit per push, the model card regenerated in the same commit.

:func:`push_backbone` and :func:`push_adapter_set` upload what ``model.save_pretrained`` /
``model.save_adapter_set`` write (``HfApi.create_commit``: files added, stale files of the same
backbone or set deleted, README.md rewritten); :func:`export_repo` writes, without any network
access, exactly the folder such pushes would leave in a new repo. The model is used duck-typed
(:class:`~lorun_peft.hub.cards.LoRunModel`): the model calls in here, never the other way round.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    CommitOperationDelete,
    EvalResult,
    HfApi,
    ModelCard,
)
from huggingface_hub.errors import OfflineModeIsEnabled
from transformers.utils import CONFIG_NAME

from lorun_peft.io import replace_folder
from lorun_peft.tuners.adapter_set import SET_FILE

from .cards import (
    README,
    LoRunModel,
    Metrics,
    _task_tag,
    backbone_summary,
    build_model_card,
    evaluation_results,
    set_summary,
    write_model_card,
)
from .files import _api, _sets_in_files, check_repo_id, is_hub_id, is_offline

#: Top-level files of a backbone that a new push replaces (weights may be one file or shards).
_BACKBONE_FILES = re.compile(rf"({re.escape(CONFIG_NAME)}|model.*\.safetensors(\.index\.json)?)")


def _check_online(action: str) -> None:
    if is_offline():
        raise OfflineModeIsEnabled(
            f"cannot {action}: Hub access is disabled (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE to push"
        )


def _previous_state(
    api: HfApi, repo_id: str, files: list[str], revision: str | None
) -> tuple[ModelCard | None, dict[str, Any], list[EvalResult]]:
    """The repo's current card, its ``lorun`` summaries and its eval results (empty for a new repo)."""
    if README not in files:
        return None, {}, []
    card = ModelCard.load(
        api.hf_hub_download(repo_id, README, revision=revision), ignore_metadata_errors=True
    )
    lorun = card.data.get("lorun") or {}
    return card, dict(lorun) if isinstance(lorun, Mapping) else {}, list(card.data.eval_results or [])


# ---------------------------------------------------------------- pushing
def _prepare_repo(
    api: HfApi, repo_id: str, private: bool | None, revision: str | None
) -> tuple[str, list[str]]:
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = getattr(url, "repo_id", None) or repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return repo_id, list(api.list_repo_files(repo_id, revision=revision))


def _folder_operations(folder: Path, prefix: str = "") -> list[CommitOperationAdd]:
    return [
        CommitOperationAdd(
            path_in_repo=prefix + path.relative_to(folder).as_posix(), path_or_fileobj=str(path)
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]


def _card_operation(card: ModelCard) -> CommitOperationAdd:
    return CommitOperationAdd(path_in_repo=README, path_or_fileobj=str(card).encode("utf-8"))


def push_adapter_set(
    model: LoRunModel,
    repo_id: str,
    set_name: str | None = None,
    *,
    metrics: Metrics | None = None,
    base_model: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Push adapter set ``set_name`` (default: the active one) to ``<repo_id>/<set_name>/`` in one commit.

    Creates the repo if needed (``exist_ok=True``); other sets in the repo are left alone, files of an
    older version of this set that the new one lacks are deleted, and README.md is regenerated in the
    same commit (``metrics``: ``{dataset: {metric: value}}`` for this set's model-index entries; they
    replace the set's earlier ones). ``base_model`` (the backbone repo, for the card) defaults to the
    Hub id the backbone was loaded from, else to the card's current one; it is omitted when the sets go
    into the backbone's own repo.
    """
    _check_online("push an adapter set")
    set_name = set_name or model.active_adapter_set
    if set_name is None:
        raise ValueError(
            "no adapter set to push: this model has none (add_stage_adapters or load_adapter first)"
        )
    if set_name not in model.list_adapter_sets():
        raise ValueError(f"no adapter set {set_name!r}; adapter sets: {model.list_adapter_sets()}")
    results = evaluation_results(
        metrics, set_name=set_name, task=_task_tag(model.adapter_tasks[set_name].physics.get_config())
    )
    if base_model is None and is_hub_id(model.name_or_path):
        base_model = model.name_or_path
    api = _api(token)
    repo_id, files = _prepare_repo(api, repo_id, private, revision)
    card, lorun, old_results = _previous_state(api, repo_id, files, revision)
    if base_model is None and card is not None:
        base_model = card.data.base_model
    with tempfile.TemporaryDirectory(prefix=".lorun-push-") as tmp:
        model.save_adapter_set(tmp, set_name)
        folder = Path(tmp) / set_name
        info = json.loads((folder / SET_FILE).read_text())
        operations: list[CommitOperationAdd | CommitOperationDelete] = _folder_operations(
            folder, f"{set_name}/"
        )
        written = {op.path_in_repo for op in operations}
        operations += [
            CommitOperationDelete(path_in_repo=p)
            for p in files
            if p.startswith(f"{set_name}/") and p not in written
        ]
        sets = {name: (lorun.get("adapter_sets") or {}).get(name, {}) for name in _sets_in_files(files)}
        sets[set_name] = set_summary(info)
        holds_backbone = CONFIG_NAME in files
        card = build_model_card(
            repo_id,
            backbone=(lorun.get("backbone") or backbone_summary(model)) if holds_backbone else None,
            adapter_sets=sets,
            base_model=None if base_model == repo_id else base_model,
            eval_results=[r for r in old_results if r.dataset_config != set_name] + results,
            previous=card,
        )
        operations.append(_card_operation(card))
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload adapter set {set_name}",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


def check_replaceable(target: Path, overwrite: bool, keep: list[Path]) -> None:
    """Refuse to replace ``target`` when it holds files (unless ``overwrite``) or any of ``keep``."""
    if not target.exists():
        return
    resolved = target.resolve()
    for path in keep:
        path = path.resolve()
        if path == resolved or resolved in path.parents:
            raise ValueError(
                f"export folder {target} holds {path}, which replacing it would delete; choose another folder"
            )
    files = [p for p in target.rglob("*") if p.is_file()]
    if files and not overwrite:
        raise ValueError(
            f"export folder {target} is not empty ({len(files)} file(s), e.g. "
            f"{files[0].relative_to(target)}); choose a new folder, or pass overwrite=True "
            "(lorun export --overwrite) to replace it whole"
        )


def export_repo(
    model: LoRunModel,
    folder: str | os.PathLike,
    repo_id: str,
    *,
    sets: list[str] | None = None,
    backbone: bool = True,
    metrics: Metrics | None = None,
    set_metrics: Mapping[str, Metrics] | None = None,
    base_model: str | None = None,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write, without any network access, exactly the folder that pushing to ``repo_id`` would upload.

    The backbone's files (``config.json``, ``model.safetensors``) at the top when ``backbone``, one
    ``<set>/`` folder per adapter set (``sets``: default every resident set), and the ``README.md``
    model card that :func:`push_backbone` followed by :func:`push_adapter_set` for each set would leave
    in a new repo (``metrics``: the backbone's ``{dataset: {metric: value}}``, ``set_metrics``: per set).
    ``LoRunModel.from_pretrained(folder)`` and ``load_adapter(folder, set)`` load it back; upload it
    later with ``hf upload <repo_id> <folder> .``. The folder is built beside ``folder`` and moved into
    place whole. A non-empty ``folder`` is refused unless ``overwrite`` (it is then replaced whole), and
    never replaced when it holds the current working folder or the folder the model was loaded from.
    Returns ``folder``.
    """
    check_repo_id(repo_id)
    names = list(model.list_adapter_sets()) if sets is None else list(sets)
    for name in names:
        if name not in model.list_adapter_sets():
            raise ValueError(f"no adapter set {name!r}; adapter sets: {model.list_adapter_sets()}")
    if not backbone and not names:
        raise ValueError("nothing to export: backbone=False and no adapter sets")
    unknown = sorted(set(set_metrics or {}) - set(names))
    if unknown:
        raise ValueError(f"set_metrics names sets that are not exported: {unknown}; exported: {names}")
    results = evaluation_results(metrics, task=_task_tag(model.config.physics)) if backbone else []
    for name in names:
        task = _task_tag(model.adapter_tasks[name].physics.get_config())
        results += evaluation_results((set_metrics or {}).get(name), set_name=name, task=task)
    if base_model is None and is_hub_id(model.name_or_path) and model.name_or_path != repo_id:
        base_model = model.name_or_path
    target = Path(folder).expanduser()
    if target.is_file():
        raise ValueError(f"export folder {target} is a file; expected a folder path")
    source = Path(str(model.name_or_path)).expanduser() if model.name_or_path else None
    check_replaceable(target, overwrite, keep=[Path.cwd(), *([source] if source and source.exists() else [])])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-", dir=target.parent))
    try:
        if backbone:
            model.save_pretrained(tmp, max_shard_size=max_shard_size)
        for name in names:
            model.save_adapter_set(tmp, name)
        write_model_card(
            tmp,
            repo_id,
            backbone=backbone_summary(model) if backbone else None,
            base_model=base_model,
            eval_results=results,
            extra_tags=(list(model.model_tags or []) + list(tags or [])) if backbone else list(tags or []),
        )
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def push_backbone(
    model: LoRunModel,
    repo_id: str,
    *,
    metrics: Metrics | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
) -> CommitInfo:
    """Push the clean phase-1 backbone (``model.save_pretrained``) and its README.md in one commit.

    The files are those transformers writes (``config.json``, ``model.safetensors`` or shards); stale
    weight files of an earlier push are deleted, adapter sets already in the repo are kept and listed in
    the card. ``metrics`` (``{dataset: {metric: value}}``) replace the backbone's model-index entries;
    ``tags`` are added to the card's.
    """
    _check_online("push a backbone")
    results = evaluation_results(metrics, task=_task_tag(model.config.physics))
    api = _api(token)
    repo_id, files = _prepare_repo(api, repo_id, private, revision)
    card, lorun, old_results = _previous_state(api, repo_id, files, revision)
    with tempfile.TemporaryDirectory(prefix=".lorun-push-") as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        operations: list[CommitOperationAdd | CommitOperationDelete] = _folder_operations(Path(tmp))
        written = {op.path_in_repo for op in operations}
        operations += [
            CommitOperationDelete(path_in_repo=p)
            for p in files
            if "/" not in p and _BACKBONE_FILES.fullmatch(p) and p not in written
        ]
        sets = {name: (lorun.get("adapter_sets") or {}).get(name, {}) for name in _sets_in_files(files)}
        card = build_model_card(
            repo_id,
            backbone=backbone_summary(model),
            adapter_sets=sets,
            eval_results=[r for r in old_results if r.dataset_config is not None] + results,
            previous=card,
            extra_tags=list(model.model_tags or []) + list(tags or []),
        )
        operations.append(_card_operation(card))
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or "Upload LoRun backbone",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )
