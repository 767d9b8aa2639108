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
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    CommitOperationDelete,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    get_cached_repo_tree,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    HfHubHTTPError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import httpx

from lorun_peft.io import replace_folder
from lorun_peft.tuners import validate_set_name


class LoRunModel(Protocol):
    """What this module needs of a model (it never imports the model class: the model calls in here)."""

    config: Any
    name_or_path: str
    model_tags: Any
    adapter_tasks: Any

    def backbone_state_dict(self) -> dict[str, Any]: ...
    def list_adapter_sets(self) -> list[str]: ...
    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> None: ...
    def save_adapter_set(self, directory: Any, name: str | None = None) -> Path: ...


#: ``(owns(physics config) -> bool, tag)`` pairs, filled by :func:`lorun_peft.tasks.register_task`.
_TASK_TAGS: list[tuple[Callable[[dict[str, Any]], bool], str]] = []


def register_task_tag(owns: Callable[[dict[str, Any]], bool], tag: str) -> None:
    """Tag the cards of models whose physics ``owns`` accepts with ``tag`` (latest registration first)."""
    _TASK_TAGS.insert(0, (owns, tag))


#: ``library_name`` of every card. Not ``peft``: a set repo has no root ``adapter_config.json`` and its
#: stage adapters need LoRun's stage control and task parameters, so PEFT's Hub snippet would not work.
LIBRARY_NAME = "lorun-peft"
#: Tags of every card; adapter repos add :data:`ADAPTER_TAGS`, and the task tag comes from the physics.
BASE_TAGS = ("lorun", "deep-unfolding", "image-restoration")
ADAPTER_TAGS = ("peft", "lora")
#: ``task.type`` of the model-index results (the Hub's pipeline task for restoration models).
PIPELINE_TAG = "image-to-image"
SET_FILE = "adapter_set.json"
README = "README.md"
#: The generated part of README.md sits between these markers; the rest of the body is kept on push.
CARD_START = "<!-- lorun-peft:card:start -->"
CARD_END = "<!-- lorun-peft:card:end -->"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w\-.]*/[\w\-.]+")
_REPO_NAME = re.compile(r"[A-Za-z0-9][\w\-.]*")  # a bare name: the pusher's own namespace
_BACKBONE_FILES = re.compile(r"(config\.json|model.*\.safetensors(\.index\.json)?)")

#: ``{dataset: {metric: value}}``, e.g. ``{"Set11": {"psnr": 31.2, "ssim": 0.91}}``.
Metrics = Mapping[str, Mapping[str, float]]


# ---------------------------------------------------------------- references
def is_hub_id(reference: str | os.PathLike) -> bool:
    """True for ``owner/name`` that is not an existing local path (a local folder always wins)."""
    text = str(reference)
    return (
        bool(_HUB_ID.fullmatch(text))
        and not text.startswith((".", "~"))
        and not Path(text).expanduser().exists()
    )


def is_offline() -> bool:
    """Whether Hub access is off (``HF_HUB_OFFLINE=1``, read by huggingface_hub when it is imported)."""
    return constants.is_offline_mode()


def _rev(revision: str | None) -> str:
    return revision or constants.DEFAULT_REVISION


def _api(token: str | bool | None) -> HfApi:
    return HfApi(token=token, library_name=LIBRARY_NAME)


#: Hub ids of the models shipped inside the package: ``<task>-backbone`` and ``<task>-adapters``.
SHIPPED_HUB_OWNER = "lorun-peft"


def shipped_copy(reference: str | os.PathLike, revision: str | None = None) -> Path | None:
    """The package's own copy of a shipped Hub repo (``lorun-peft/cs-backbone`` ...) when the Hub has none.

    ``None`` for any other reference, or when the repo is in the local Hub cache (the Hub copy is used
    then). Offline, or when the Hub cannot be reached or does not hold the repo, the shipped folder is
    returned: ``lorun_peft/assets/pretrained/<task>/backbone`` or ``.../<task>/adapters``.
    """
    match = re.fullmatch(rf"{SHIPPED_HUB_OWNER}/(cs|sr|cassi)-(backbone|adapters)", str(reference))
    if match is None or Path(str(reference)).expanduser().exists():
        return None
    task, part = match.groups()
    folder = Path(__file__).resolve().parent / "assets" / "pretrained" / task / part
    if not folder.is_dir():
        return None
    probe = "config.json" if part == "backbone" else ".gitattributes"
    if isinstance(try_to_load_from_cache(str(reference), probe, revision=revision), str):
        return None
    if is_offline():
        return folder
    try:
        _api(None).model_info(str(reference), revision=revision, timeout=10.0)
    except (httpx.ConnectError, httpx.TimeoutException, OSError, HfHubHTTPError):
        return folder  # not found (RepositoryNotFoundError is an HfHubHTTPError) or not reachable
    return None


def check_push_access(repo_id: str, token: str | bool | None = None) -> None:
    """``ValueError`` in one line unless a push to ``repo_id`` can start: a valid id, Hub on, a token.

    Run before a training run that ends in a push, so a run does not train for an hour and then fail.
    It does not contact the Hub (the push itself reports permission errors).
    """
    from huggingface_hub import get_token

    check_repo_id(repo_id)
    if is_offline():
        raise ValueError(
            "--push_to_hub needs Hub access, but HF_HUB_OFFLINE is set; unset it or drop --push_to_hub"
        )
    if token is False or (token is None and not get_token()):
        raise ValueError(
            "--push_to_hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN (none was found)"
        )


def _check_online(action: str) -> None:
    if is_offline():
        raise OfflineModeIsEnabled(
            f"cannot {action}: Hub access is disabled (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE to push"
        )


def _sets_in_files(paths: list[str]) -> list[str]:
    """Set names of a repo's file list: top-level folders that hold ``adapter_set.json``."""
    return sorted({p.split("/")[0] for p in paths if p.count("/") == 1 and p.endswith("/" + SET_FILE)})


def _sets_in_folder(folder: Path) -> list[str]:
    return sorted(p.parent.name for p in folder.glob(f"*/{SET_FILE}"))


def _not_cached(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None) -> str:
    where = cache_dir or constants.HF_HUB_CACHE
    reason = "Hub access is disabled (HF_HUB_OFFLINE is set)" if is_offline() else "the Hub cannot be reached"
    return (
        f"{repo_id!r} (revision {_rev(revision)!r}) is not in the local Hub cache ({where}) and {reason}; "
        "download it once with network access, or pass a local folder"
    )


def list_adapter_sets(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[str]:
    """Names of the adapter sets in a local folder or a Hub repo (sorted).

    A local folder: its subfolders that hold ``adapter_set.json``. A Hub repo: from its file list
    (``list_repo_files``); offline, from the cached tree listing of that revision if one was cached by
    an earlier download, else from the folders of the cached snapshot.
    """
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        return _sets_in_folder(path)
    if not is_hub_id(repo_id_or_path):
        raise FileNotFoundError(
            f"{str(repo_id_or_path)!r} is neither a local folder nor a Hub id 'owner/name'"
        )
    repo_id = str(repo_id_or_path)
    if not is_offline():
        try:
            return _sets_in_files(_api(token).list_repo_files(repo_id, revision=revision))
        except RepositoryNotFoundError as error:
            raise FileNotFoundError(_repo_missing(repo_id)) from error
        except RevisionNotFoundError as error:
            raise FileNotFoundError(f"revision {revision!r} not found in Hub repository {repo_id}") from error
        except (httpx.ConnectError, httpx.TimeoutException, OfflineModeIsEnabled, HfHubHTTPError):
            pass  # Hub unreachable: fall back to the cache, as snapshot_download does
    try:
        files = get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache_dir)
        return _sets_in_files([f.path for f in files])
    except CachedRepoTreeNotFoundError:
        pass
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=True,
            allow_patterns=[f"*/{SET_FILE}"],
        )
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(_not_cached(repo_id, revision, cache_dir)) from error
    return _sets_in_folder(Path(folder))


def check_backbone_reachable(
    repo_id: str,
    revision: str | None = None,
    *,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = 10.0,
) -> None:
    """``FileNotFoundError`` in one line unless Hub repo ``repo_id`` can be loaded: cached, or reachable.

    Called before ``from_pretrained`` of a Hub id that is not a local path, so a mistyped local folder
    or an unreachable Hub gives one clear line at once instead of transformers' retries and their log.
    """
    cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    if isinstance(cached, str):
        return
    where = (
        f"{repo_id!r} is not a local folder (no such path) and {_not_cached(repo_id, revision, cache_dir)}"
    )
    if is_offline():
        raise FileNotFoundError(where)
    try:
        _api(token).model_info(repo_id, revision=revision, timeout=timeout)
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder (no such path); {_repo_missing(repo_id)}"
        ) from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"revision {revision!r} not found in Hub repository {repo_id}") from error
    except (httpx.ConnectError, httpx.TimeoutException, OSError, HfHubHTTPError) as error:
        raise FileNotFoundError(where) from error


def _repo_missing(repo_id: str) -> str:
    return (
        f"Hub repository {repo_id!r} not found (or it is private/gated: log in with `hf auth login` or "
        "pass token=)"
    )


def download_adapter_set(
    repo_id: str,
    set_name: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Download (or find in the cache) one set of a Hub repo; returns its local folder.

    Only ``<set_name>/*`` is fetched (``snapshot_download(allow_patterns=...)``); offline, the cached
    snapshot is used. Raises ``FileNotFoundError`` for a missing repo or revision, a set the repo does
    not hold (naming the sets it holds), and a set that is not cached while offline.
    """
    validate_set_name(set_name)
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            allow_patterns=[f"{set_name}/*"],
            library_name=LIBRARY_NAME,
        )
    except IncompleteSnapshotError as error:
        raise FileNotFoundError(
            f"adapter set {set_name!r} of {repo_id} (revision {_rev(revision)!r}) is not (fully) in the "
            f"local Hub cache and the Hub cannot be reached; download it once with network access ({error})"
        ) from error
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(_not_cached(repo_id, revision, cache_dir)) from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(_repo_missing(repo_id)) from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"revision {revision!r} not found in Hub repository {repo_id}") from error
    path = Path(folder) / set_name
    if not (path / SET_FILE).is_file():
        available = list_adapter_sets(repo_id, revision=revision, token=token, cache_dir=cache_dir)
        cached = " (cached snapshot, offline)" if is_offline() else ""
        raise FileNotFoundError(
            f"set {set_name!r} not found in {repo_id} (revision {_rev(revision)!r}){cached}; "
            f"available: {', '.join(available) or 'none'}"
        )
    return path


#: Where a backbone saved in the shipped layout (``<task>/backbone/``) finds its sets: ``<task>/adapters/``.
SHIPPED_ADAPTERS_DIR = "adapters"


def resolve_adapter_dir(
    reference: str | os.PathLike,
    set_name: str | None = None,
    *,
    default_source: str | os.PathLike | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The local folder of one adapter set (the folder holding ``adapter_set.json``).

    With ``set_name``: ``reference`` is a local folder holding ``<set_name>/`` or a Hub repo id. Alone,
    ``reference`` is a set folder, or a set name looked up in ``default_source`` (the folder or repo the
    backbone came from). An existing local path always wins over a Hub id or a set name.
    """
    if set_name is not None:  # before any path is built from it: "../other/set" never reaches the disk
        validate_set_name(set_name)
    shipped = shipped_copy(reference, revision) if str(reference).endswith("-adapters") else None
    if shipped is not None:
        reference = shipped
    if set_name is None:
        path = Path(reference).expanduser()
        if path.is_dir() and (path / SET_FILE).is_file():
            return path
        text = str(reference)
        if not path.exists() and "/" not in text and "\\" not in text:
            if not default_source:
                raise FileNotFoundError(
                    f"{text!r} is not a folder; as a set name it needs the backbone's source, but this model "
                    "was not loaded with from_pretrained: pass it, e.g. load_adapter('org/cs-adapters', "
                    f"{text!r}) or load_adapter('path/to/sets', {text!r})"
                )
            source = Path(default_source).expanduser()
            shipped = source.parent / SHIPPED_ADAPTERS_DIR / text
            if source.is_dir() and not (source / text).is_dir() and (shipped / SET_FILE).is_file():
                return shipped  # the shipped layout: <task>/backbone/ beside <task>/adapters/<set>/
            return resolve_adapter_dir(
                default_source, text, revision=revision, token=token, cache_dir=cache_dir
            )
        if is_hub_id(reference):
            available = list_adapter_sets(reference, revision=revision, token=token, cache_dir=cache_dir)
            raise FileNotFoundError(
                f"{text!r} is a Hub repository: name the set, e.g. load_adapter({text!r}, "
                f"{(available or ['<set_name>'])[0]!r}); available: {', '.join(available) or 'none'}"
            )
    path = Path(reference).expanduser()
    if path.is_dir():
        if set_name is not None and (path / set_name / SET_FILE).is_file():
            return path / set_name
        wanted = f"an adapter set {set_name!r}" if set_name else "an adapter set"
        raise FileNotFoundError(
            f"{path} holds no {wanted}: expected {path}/{set_name or '<set_name>'}/{SET_FILE} or "
            f"{path}/{SET_FILE}; adapter sets found there: {_sets_in_folder(path) or 'none'}"
        )
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; expected a folder holding adapter sets")
    if is_hub_id(reference):
        return download_adapter_set(
            str(reference), set_name, revision=revision, token=token, cache_dir=cache_dir
        )
    raise FileNotFoundError(
        f"adapter folder {str(reference)!r} does not exist (and is not a Hub id 'owner/name')"
    )


# ---------------------------------------------------------------- model cards
def _task_tag(physics: Mapping[str, Any] | None) -> str | None:
    """The Hub tag of the task owning ``physics`` (``TaskSpec.hub_tag``), or ``None`` for an unknown one."""
    config = dict(physics or {})
    return next((tag for owns, tag in _TASK_TAGS if owns(config)), None)


def _describe_physics(physics: Mapping[str, Any] | None) -> str:
    if not physics:
        return "-"
    fields = [
        f"{k}={v}" for k, v in physics.items() if k != "type" and isinstance(v, (int, float, str, bool))
    ]
    return f"{physics.get('type', '?')}" + (f" ({', '.join(fields)})" if fields else "")


def backbone_summary(model: LoRunModel) -> dict[str, Any]:
    """What a card says about a backbone: physics, denoiser type, K, algorithm, mode, parameter count."""
    config = model.config
    stored = sum(v.numel() for v in model.backbone_state_dict().values())
    return {
        "physics": dict(config.physics or {}),
        "denoiser": (config.denoiser or {}).get("model_type"),
        "num_stages": config.num_stages,
        "algorithm": config.algorithm,
        "mode": config.mode,
        "parameters": int(stored),
    }


def set_summary(info: Mapping[str, Any]) -> dict[str, Any]:
    """What a card says about an adapter set, from its ``adapter_set.json``."""
    metadata = info.get("metadata") or {}
    return {
        "physics": dict(metadata.get("physics") or {}),
        "num_stages": info.get("num_stages"),
        "gamma": info.get("gamma"),
        "conv_layout": info.get("conv_layout"),
        "algorithm": metadata.get("algorithm"),
    }


def evaluation_results(
    metrics: Metrics | None, *, set_name: str | None = None, task: str | None = None
) -> list[EvalResult]:
    """``EvalResult`` entries for the model-index from ``{dataset: {metric: value}}``.

    An adapter set's results carry the set name as ``dataset.config`` (the measurement configuration the
    dataset was evaluated at, e.g. Set11 at ratio-25), so the results of several sets stay apart.
    """
    if metrics is None:
        return []
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be {{dataset: {{metric: value}}}}, got {type(metrics).__name__}")
    results = []
    for dataset, values in metrics.items():
        if not isinstance(dataset, str) or not dataset or not isinstance(values, Mapping) or not values:
            raise ValueError(
                f"metrics must be {{dataset: {{metric: value}}}} e.g. {{'Set11': {{'psnr': 31.2}}}}; got "
                f"{dataset!r}: {values!r}"
            )
        for metric, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"metric {dataset}/{metric} must be a finite number, got {value!r}")
            results.append(
                EvalResult(
                    task_type=PIPELINE_TAG,
                    task_name=(task or "image restoration").replace("-", " ").capitalize()
                    + (f" ({set_name})" if set_name else ""),
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_config=set_name,
                    metric_type=str(metric).lower(),
                    metric_name=str(metric).upper()
                    if str(metric).lower() in ("psnr", "ssim")
                    else str(metric),
                    metric_value=float(value),
                )
            )
    return results


def _usage(repo_id: str, backbone: bool, base_model: str | None, sets: list[str]) -> str:
    example = sets[0] if sets else "ratio-25"
    lines = ["```python", "from lorun_peft.unfolding import LoRunModel", ""]
    if backbone:
        lines.append(f'model = LoRunModel.from_pretrained("{repo_id}")')
        if sets:
            lines.append(f'model.load_adapter("{example}")  # an adapter set stored beside the backbone')
    else:
        lines.append(f'model = LoRunModel.from_pretrained("{base_model or "<backbone repo>"}")')
        lines.append(f'model.load_adapter("{repo_id}", "{example}")')
    lines += ["images = model.restore(measurement)", "```"]
    return "\n".join(lines)


def _format_metric(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


def _metrics_table(results: list[EvalResult]) -> list[str]:
    metric_names = list(dict.fromkeys(r.metric_name or r.metric_type for r in results))
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for r in results:
        rows.setdefault((r.dataset_config or "backbone", r.dataset_name), {})[
            r.metric_name or r.metric_type
        ] = r.metric_value
    lines = ["| model | dataset | " + " | ".join(metric_names) + " |", "|---" * (2 + len(metric_names)) + "|"]
    for (entity, dataset), values in rows.items():
        cells = [_format_metric(values[m]) if m in values else "-" for m in metric_names]
        lines.append(f"| {entity} | {dataset} | " + " | ".join(cells) + " |")
    return lines


def _generated_section(
    repo_id: str,
    backbone: Mapping[str, Any] | None,
    sets: Mapping[str, Mapping[str, Any]],
    base_model: str | None,
    results: list[EvalResult],
) -> str:
    lines = [CARD_START, f"# {repo_id.split('/')[-1]}", ""]
    if backbone:
        lines.append(
            "A LoRun deep unfolding network backbone (phase 1: one denoiser shared by all stages), saved "
            "by lorun_peft in transformers' format."
            + (" Adapter sets (K stage LoRA adapters + task parameters each) live beside it." if sets else "")
        )
        lines += [
            "",
            "| physics | denoiser | K | algorithm | mode | parameters |",
            "|---|---|---|---|---|---|",
            f"| {_describe_physics(backbone.get('physics'))} | {backbone.get('denoiser')} | "
            f"{backbone.get('num_stages')} | {backbone.get('algorithm')} | {backbone.get('mode')} | "
            f"{backbone.get('parameters')} |",
        ]
    else:
        lines.append(
            "LoRun adapter sets: each folder holds K stage LoRA adapters and the task parameters of one task "
            f"mode, for the backbone `{base_model or 'unknown'}`."
        )
    if sets:
        lines += [
            "",
            "## Adapter sets",
            "",
            "| set | physics | K | gamma | layout |",
            "|---|---|---|---|---|",
        ]
        for name, info in sets.items():
            lines.append(
                f"| {name} | {_describe_physics(info.get('physics'))} | {info.get('num_stages', '-')} | "
                f"{info.get('gamma', '-')} | {info.get('conv_layout', '-')} |"
            )
    lines += ["", "## Usage", "", _usage(repo_id, bool(backbone), base_model, list(sets))]
    if results:
        lines += ["", "## Evaluation", "", *_metrics_table(results)]
    lines.append(CARD_END)
    return "\n".join(lines)


def build_model_card(
    repo_id: str,
    *,
    backbone: Mapping[str, Any] | None = None,
    adapter_sets: Mapping[str, Mapping[str, Any]] | None = None,
    base_model: str | None = None,
    eval_results: list[EvalResult] | None = None,
    previous: ModelCard | None = None,
    extra_tags: list[str] | None = None,
) -> ModelCard:
    """The README.md of a backbone repo, an adapter repo, or a backbone repo with sets beside it.

    ``backbone``: :func:`backbone_summary` when the repo holds a backbone; ``adapter_sets``: set name ->
    :func:`set_summary`; ``base_model``: the backbone repo of an adapter-only repo. The summaries are
    kept in the card's ``lorun`` metadata so that a later push can regenerate the card. ``previous``
    (the repo's current card) keeps its other metadata (license, datasets, extra tags) and its body
    outside the generated markers; ``extra_tags`` are added to the tags.
    """
    sets = dict(sorted((adapter_sets or {}).items()))
    results = list(eval_results or [])
    physics = [(backbone or {}).get("physics")] + [s.get("physics") for s in sets.values()]
    tags = list(BASE_TAGS) + (list(ADAPTER_TAGS) if sets else [])
    tags += sorted({t for t in map(_task_tag, physics) if t})
    old = previous.data.to_dict() if previous is not None else {}
    for key in ("model-index", "eval_results", "model_name", "library_name", "tags", "lorun", "base_model"):
        old.pop(key, None)
    old_tags = (list(previous.data.tags or []) if previous is not None else []) + list(extra_tags or [])
    lorun: dict[str, Any] = {}
    if backbone:
        lorun["backbone"] = dict(backbone)
    if sets:
        lorun["adapter_sets"] = {name: dict(info) for name, info in sets.items()}
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        tags=tags + old_tags,
        pipeline_tag=PIPELINE_TAG,
        base_model=None if backbone else base_model,
        model_name=repo_id.split("/")[-1] if results else None,
        eval_results=results or None,
        **{k: v for k, v in old.items() if k != "pipeline_tag"},
        lorun=lorun,
    )
    section = _generated_section(repo_id, backbone, sets, base_model, results)
    body = previous.text if previous is not None else ""
    if CARD_START in body and CARD_END in body:
        head, rest = body.split(CARD_START, 1)
        body = head + section + rest.split(CARD_END, 1)[1]
    else:
        body = (body.rstrip() + "\n\n" if body.strip() else "") + section + "\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body.lstrip()}")


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
        holds_backbone = "config.json" in files
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


def write_model_card(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    backbone: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    eval_results: list[EvalResult] | None = None,
    extra_tags: list[str] | None = None,
) -> Path:
    """Write the ``README.md`` a new repo ``repo_id`` holding ``folder``'s files would get; returns its path.

    ``backbone``: :func:`backbone_summary` when the folder holds a backbone; the adapter sets are the
    folder's ``<set>/adapter_set.json``; ``base_model``: the backbone repo of an adapters-only folder.
    The same card the pushes generate, so a folder uploaded as is (``hf upload``) matches a pushed repo.
    """
    folder = Path(folder)
    sets = {
        name: set_summary(json.loads((folder / name / SET_FILE).read_text(encoding="utf-8")))
        for name in _sets_in_folder(folder)
    }
    card = build_model_card(
        repo_id,
        backbone=backbone,
        adapter_sets=sets,
        base_model=None if backbone else base_model,
        eval_results=eval_results,
        extra_tags=extra_tags,
    )
    path = folder / README
    path.write_text(str(card), encoding="utf-8")
    return path


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


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is ``owner/name`` or ``name``, else raise ``ValueError`` in one line."""
    if not isinstance(repo_id, str) or not (_HUB_ID.fullmatch(repo_id) or _REPO_NAME.fullmatch(repo_id)):
        raise ValueError(
            f"Hub repo id {repo_id!r} is not 'owner/name' or 'name' (letters, digits, '-', '_', '.')"
        )
    return repo_id


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
