"""Model cards: the README.md of a backbone repo, an adapter repo, or a backbone repo with sets beside it.

The card is YAML metadata (library, tags, task, ``base_model``, a ``model-index`` with the metrics
passed) plus a generated section between two HTML markers, so text written by hand outside the
markers survives a push. The task tag of a card comes from the physics: each task registers how to
recognise its physics with :func:`register_task_tag` (``lorun_peft.tasks`` does), so this floor
never imports the tasks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from lorun_peft.io import write_atomic
from lorun_peft.tuners.adapter_set import SET_FILE

from .files import LIBRARY_NAME, _sets_in_folder


class LoRunModel(Protocol):
    """What the hub needs of a model (it never imports the model class: the model calls in here)."""

    config: Any
    name_or_path: str
    model_tags: Any
    adapter_tasks: Any
    active_adapter_set: str | None

    def backbone_state_dict(self) -> dict[str, Any]: ...
    def list_adapter_sets(self) -> list[str]: ...
    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> None: ...
    def save_adapter_set(self, directory: Any, name: str | None = None) -> Path: ...


#: ``(owns(physics config) -> bool, tag)`` pairs, filled by :func:`lorun_peft.tasks.register_task`.
_TASK_TAGS: list[tuple[Callable[[dict[str, Any]], bool], str]] = []


def register_task_tag(owns: Callable[[dict[str, Any]], bool], tag: str) -> None:
    """Tag the cards of models whose physics ``owns`` accepts with ``tag`` (latest registration first)."""
    _TASK_TAGS.insert(0, (owns, tag))


#: Tags of every card; adapter repos add :data:`ADAPTER_TAGS`, and the task tag comes from the physics.
BASE_TAGS = ("lorun", "deep-unfolding", "image-restoration")
ADAPTER_TAGS = ("peft", "lora")
#: ``task.type`` of the model-index results (the Hub's pipeline task for restoration models).
PIPELINE_TAG = "image-to-image"
README = "README.md"
#: The generated part of README.md sits between these markers; the rest of the body is kept on push.
CARD_START = "<!-- lorun-peft:card:start -->"
CARD_END = "<!-- lorun-peft:card:end -->"

#: ``{dataset: {metric: value}}``, e.g. ``{"Set11": {"psnr": 31.2, "ssim": 0.91}}``.
Metrics = Mapping[str, Mapping[str, float]]


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
    return write_atomic(folder / README, str(card))
