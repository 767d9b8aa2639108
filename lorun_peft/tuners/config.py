"""``StageLoRAConfig``: the PEFT config of LoRun's per-stage LoRA adapters.

A :class:`peft.LoraConfig` subclass that adds the three things LoRun needs: the number of unfolding
stages ``num_stages`` (K), the paper's rank rule (eq. 12, ``r = ceil(min(in_dim, out_dim) * gamma / 100)``
per target layer, resolved into exact per-module ``rank_pattern``/``alpha_pattern`` entries by
:meth:`StageLoRAConfig.resolve_ranks`) and the conv LoRA layout (``"paper"``: eq. 4, the loralib
``reshape(B @ A)`` form; ``"peft"``: PEFT's native two-conv form). ``__post_init__`` registers the
StageLoRA layers of :mod:`lorun_peft.tuners.layers` with PEFT's custom-module hook, so PEFT's own
injection (``inject_adapter_in_model``, ``PeftModel.from_pretrained``) builds our layers; and
``from_pretrained`` returns a ``StageLoRAConfig``, not a plain ``LoraConfig``. Loading a stage folder
with plain PEFT therefore takes one "registration step": pass
``config=StageLoRAConfig.from_pretrained(stage_dir)``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import PeftType
from torch import nn

from .layers import STAGE_LORA_LAYERS

CONV_LAYOUTS = ("paper", "peft")
SUPPORTED_INITS = (True, False, "gaussian")

_LORA_FIELDS = {f.name: f for f in dataclasses.fields(LoraConfig)}


def stage_rank(in_dim: int, out_dim: int, gamma: float) -> int:
    """The paper's rank rule (eq. 12): ``ceil(min(in_dim, out_dim) * gamma / 100)``.

    Computed with exact rational arithmetic, so e.g. ``gamma=10`` on 70 channels gives 7, never 8 from
    a float rounding error.
    """
    if not 0 < gamma <= 100:
        raise ValueError(f"gamma must be in (0, 100] (a percentage of min(in_dim, out_dim)), got {gamma}")
    if in_dim < 1 or out_dim < 1:
        raise ValueError(f"layer dimensions must be >= 1, got in_dim={in_dim}, out_dim={out_dim}")
    return math.ceil(Fraction(min(in_dim, out_dim)) * Fraction(str(gamma)) / 100)


def layer_dims(module: nn.Module) -> tuple[int, int]:
    """``(in_dim, out_dim)`` of eq. 12: in/out channels of a conv, in/out features of a Linear."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return module.in_channels, module.out_channels
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    raise TypeError(
        f"StageLoRA supports nn.Conv2d, nn.ConvTranspose2d and nn.Linear, got {type(module).__name__}"
    )


def unsupported_reason(module: nn.Module) -> str | None:
    """Why StageLoRA cannot adapt ``module`` (``None`` when it can)."""
    if not isinstance(module, tuple(STAGE_LORA_LAYERS)):
        return f"type {type(module).__name__} is not one of Conv2d, ConvTranspose2d, Linear"
    groups = getattr(module, "groups", 1)
    if groups != 1:
        return f"grouped/depthwise convolution (groups={groups}); only groups=1 is supported"
    return None


def iter_base_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Module | None]]:
    """Yield ``(name, base_module, parent)`` for every module, seeing through PEFT tuner layers.

    A tuner layer (e.g. an injected StageLoRA layer) is reported under its own name with its wrapped
    base layer, and its adapter sub-modules are skipped, so the names equal those of the clean model.
    Children of ``nn.MultiheadAttention`` are skipped: MHA reads their weights directly and never calls
    their ``forward``, so an adapter there would silently do nothing.
    """
    seen: set[int] = set()

    def walk(prefix: str, module: nn.Module, parent: nn.Module | None):
        if id(module) in seen:
            return
        seen.add(id(module))
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        yield prefix, base, parent
        if isinstance(module, BaseTunerLayer) or isinstance(base, nn.MultiheadAttention):
            return
        for child_name, child in module.named_children():
            yield from walk(f"{prefix}.{child_name}" if prefix else child_name, child, module)

    yield from walk("", model, None)


def _exact_pattern_keys(names: list[str]) -> dict[str, str]:
    """PEFT pattern key per module name that matches that module and no other target.

    PEFT looks rank_pattern keys up with ``re.match(rf"(.*\\.)?({key})$", name)``, so a plain name
    "conv" would also match "block.conv". Plain names are kept where they are unambiguous (readable
    JSON); otherwise the key is anchored and escaped (``^block\\.conv``).
    """
    keys = {}
    for name in names:
        try:
            pattern = re.compile(rf"(.*\.)?({name})$")
            matches = [other for other in names if pattern.match(other)]
        except re.error:
            matches = []
        keys[name] = name if matches == [name] else "^" + re.escape(name)
    return keys


def _exact_target_modules(names: list[str], all_names: list[str]) -> list[str] | str:
    """``target_modules`` that PEFT resolves to exactly ``names`` on this model.

    PEFT matches list entries as suffixes (``key == t or key.endswith("." + t)``); a sorted list of
    names is returned when that cannot catch a non-target module, else a full-match regex.
    """
    targets = set(names)
    others = [n for n in all_names if n and n not in targets]
    if any(other.endswith("." + t) for other in others for t in targets):
        return "(?:" + "|".join(re.escape(n) for n in sorted(targets)) + ")"
    return sorted(targets)


@dataclass
class StageLoRAConfig(LoraConfig):
    """LoRA config for K stage adapters sharing one frozen denoiser (LoRun, paper Sec. III).

    Call :meth:`resolve_ranks` with the denoiser (``add_stage_adapters`` does it for you) to fill
    ``target_modules``, ``rank_pattern`` and ``alpha_pattern`` with exact module names. Each layer gets
    ``lora_alpha = r``, so PEFT's scaling ``lora_alpha / r`` is 1 and ``dW = B @ A`` as in the paper.
    """

    num_stages: int = field(
        default=9,
        metadata={"help": "Number of unfolding stages K; one adapter per stage (the paper uses 9)."},
    )
    gamma: float = field(
        default=10.0,
        metadata={
            "help": "Rank factor of eq. 12 in percent: r = ceil(min(in_dim, out_dim) * gamma / 100) for "
            "every target layer (in/out channels of convs, in/out features of Linear). Paper default: 10."
        },
    )
    conv_layout: Literal["paper", "peft"] = field(
        default="paper",
        metadata={
            "help": "Conv LoRA layout. 'paper' (eq. 4, loralib ConvLoRA): lora_A.weight (r*k, Cin*k), "
            "lora_B.weight (Cout*k, r*k), dW = (lora_B @ lora_A).view(Cout, Cin, k, k). 'peft': PEFT's "
            "native layout, lora_A = Conv2d(Cin, r, k, stride, padding, dilation), "
            "lora_B = Conv2d(r, Cout, 1), which PEFT's own Conv2d LoRA layers can load too."
        },
    )
    init_lora_weights: bool | Literal["gaussian"] = field(
        default="gaussian",
        metadata={
            **_LORA_FIELDS["init_lora_weights"].metadata,
            "help": "'gaussian' (paper): the input-side factor lora_A ~ N(0, 1/r^2), lora_B = 0, so dW = 0 "
            "at start. True: lora_A Kaiming-uniform (PEFT's default), lora_B = 0. "
            "False: both random (dW != 0).",
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.num_stages, bool) or not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"num_stages must be an int >= 1, got {self.num_stages!r}")
        if (
            isinstance(self.gamma, bool)
            or not isinstance(self.gamma, (int, float))
            or not 0 < self.gamma <= 100
        ):
            raise ValueError(
                f"gamma must be a number in (0, 100] (percent of min(in, out)), got {self.gamma!r}"
            )
        if self.conv_layout not in CONV_LAYOUTS:
            raise ValueError(f"conv_layout must be one of {CONV_LAYOUTS}, got {self.conv_layout!r}")
        if not any(
            self.init_lora_weights is v or self.init_lora_weights == v == "gaussian" for v in SUPPORTED_INITS
        ):
            raise ValueError(
                f"init_lora_weights must be one of {SUPPORTED_INITS} for StageLoRA, "
                f"got {self.init_lora_weights!r}"
            )
        self._reject_unsupported()
        # PEFT does not save the custom-module registration, so it is redone on every construction,
        # including from_pretrained: that is what makes PEFT's injection build StageLoRA layers.
        self._register_custom_module(dict(STAGE_LORA_LAYERS))

    def _reject_unsupported(self) -> None:
        """Raise for LoRA options StageLoRA does not implement (instead of silently ignoring them)."""
        problems = []
        if self.lora_dropout:
            problems.append(
                f"lora_dropout={self.lora_dropout} (dW is merged into the weight inside forward; use 0)"
            )
        if self.use_rslora:
            problems.append("use_rslora=True (scaling is fixed to 1 via lora_alpha = r)")
        if self.bias != "none":
            problems.append(f"bias={self.bias!r} (the base denoiser stays frozen; use 'none')")
        if self.lora_bias:
            problems.append("lora_bias=True")
        if self.fan_in_fan_out:
            problems.append("fan_in_fan_out=True (only nn.Linear/Conv layers are supported)")
        for name in ("modules_to_save", "trainable_token_indices", "layer_replication", "target_parameters"):
            if getattr(self, name):
                problems.append(f"{name}={getattr(self, name)!r} (pass task parameters to save_adapter_set)")
        for f in dataclasses.fields(LoraConfig):
            if f.metadata.get("is_lora_variant") and getattr(self, f.name):
                problems.append(f"{f.name} (LoRA variants are not supported)")
        if self.use_qalora:
            problems.append("use_qalora=True")
        if problems:
            raise ValueError("StageLoRAConfig does not support: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """PEFT's dict, with ``target_modules`` sorted: PEFT keeps them as a set, whose order (and so the
        saved ``adapter_config.json``) would change with Python's string-hash seed from run to run."""
        output = super().to_dict()
        if isinstance(output.get("target_modules"), (list, set)):
            output["target_modules"] = sorted(output["target_modules"])
        return output

    @classmethod
    def from_peft_type(cls, **kwargs: Any) -> StageLoRAConfig:
        """Build a ``StageLoRAConfig`` from saved kwargs (PEFT would map ``peft_type=LORA`` to LoraConfig).

        Raises ``ValueError`` for another PEFT type or a plain LoRA config (no ``num_stages``/``gamma``/
        ``conv_layout``); unknown keys from newer versions are dropped with a warning, as PEFT does.
        """
        peft_type = kwargs.get("peft_type", PeftType.LORA)
        if peft_type != PeftType.LORA:
            raise ValueError(
                f"expected a LoRA adapter config (peft_type='LORA'), got peft_type={peft_type!r}"
            )
        missing = [k for k in ("num_stages", "gamma", "conv_layout") if k not in kwargs]
        if missing:
            raise ValueError(
                f"not a StageLoRA adapter config: missing {missing}; "
                "load plain LoRA adapters with peft.LoraConfig"
            )
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            warnings.warn(
                f"ignoring unknown StageLoRAConfig keys {unknown} (saved by a newer version?)", stacklevel=2
            )
        return cls(**{k: v for k, v in kwargs.items() if k in known})

    def targeted_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """The modules of ``model`` this config adapts, ``{name: base_module}`` (names as in the clean model).

        With ``target_modules=None``: every Conv2d, ConvTranspose2d and Linear with groups=1 (grouped and
        depthwise convs are skipped), minus ``exclude_modules``. With explicit ``target_modules``, PEFT's
        own matching decides, and a matched module StageLoRA cannot adapt raises ``ValueError``.
        """
        modules = {name: base for name, base, _ in iter_base_modules(model) if name}
        if self.target_modules is None:
            candidates = [n for n, m in modules.items() if unsupported_reason(m) is None]
            probe = dataclasses.replace(self, target_modules=set(candidates))
            names = [n for n in candidates if check_target_module_exists(probe, n)]
        else:
            names = [n for n in modules if check_target_module_exists(self, n)]
            bad = {n: unsupported_reason(modules[n]) for n in names if unsupported_reason(modules[n])}
            if bad:
                raise ValueError(f"target_modules match modules StageLoRA cannot adapt: {bad}")
        if not names:
            raise ValueError(
                f"no module to adapt in {type(model).__name__} (target_modules={self.target_modules!r}); "
                "StageLoRA adapts nn.Conv2d, nn.ConvTranspose2d and nn.Linear with groups=1"
            )
        return {n: modules[n] for n in names}

    def resolve_ranks(self, model: nn.Module) -> dict[str, int]:
        """Apply eq. 12 to ``model``: fill ``target_modules``, ``rank_pattern`` and ``alpha_pattern``.

        Returns ``{module_name: rank}``. ``rank_pattern`` and ``alpha_pattern`` get one entry per target
        (alpha = rank, so scaling = 1); keys are the exact module names, anchored (``^a\\.b``) only where
        PEFT's suffix matching would otherwise be ambiguous. ``r``/``lora_alpha`` are set to the largest rank.
        """
        targets = self.targeted_modules(model)
        ranks = {name: stage_rank(*layer_dims(module), self.gamma) for name, module in targets.items()}
        all_names = [name for name, _, _ in iter_base_modules(model)]
        keys = _exact_pattern_keys(list(ranks))
        self.target_modules = _exact_target_modules(list(ranks), all_names)
        self.rank_pattern = {keys[name]: rank for name, rank in ranks.items()}
        self.alpha_pattern = {keys[name]: rank for name, rank in ranks.items()}
        self.r = self.lora_alpha = max(ranks.values())
        return ranks
