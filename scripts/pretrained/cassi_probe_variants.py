"""A diagnostic, not a library feature: ``examples/train_cassi.py`` with one change to the unfolding.

Three changes that the learned CASSI model was probed with (docs/pretrained.md, "What limits the CASSI
model"), each by patching the model for this process only:

* ``mask-channel``: the denoiser gets the coded aperture as one extra input channel (the channel that
  ``--noise_level_map`` would add carries the mask of the batch's physics instead of a noise level), so it
  can tell the pixels the data step updated from those it left alone.
* ``spectral-subspace``: every denoiser output is projected onto the span of the first ``--rank``
  principal spectra of the training cube (``--train_data``, one file), a low-rank spectral prior:
  cloth projected onto stuffed_toys' first 6 spectra keeps 50.5 dB.
* ``gap-tv-init``: the stages start from ``--gap-tv-iterations`` of GAP-TV kept in that rank-``--rank``
  span (``gap_tv(..., spectral_basis=...)``) instead of the shifted-back measurement, so the learned
  stages only have to refine a classical estimate.

    python scripts/pretrained/cassi_probe_variants.py mask-channel <train_cassi.py arguments>
    python scripts/pretrained/cassi_probe_variants.py spectral-subspace --rank 6 <train_cassi.py arguments>
    python scripts/pretrained/cassi_probe_variants.py gap-tv-init --rank 6 --gap-tv-iterations 20 <...>
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lorun_peft.data.spectral import principal_spectra
from lorun_peft.denoisers import base
from lorun_peft.tasks import get_task
from lorun_peft.tasks.cassi_gap_tv import gap_tv
from lorun_peft.unfolding import model as unfolding_model
from lorun_peft.unfolding import steps

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_cassi.py"


def _patch_mask_channel() -> list[str]:
    current: dict[str, Tensor] = {}
    forward = unfolding_model.LoRunModel.forward

    def forward_with_mask(self: Any, measurement: Tensor, *args: Any, **kwargs: Any) -> Any:
        current["mask"] = self.active_task.physics.mask
        return forward(self, measurement, *args, **kwargs)

    def mask_map(sigma: Any, x: Tensor) -> Tensor:
        mask = current["mask"].to(dtype=x.dtype, device=x.device)
        return mask.expand(x.shape[0], 1, *mask.shape[-2:])

    unfolding_model.LoRunModel.forward = forward_with_mask
    base.DenoiserPreTrainedModel.noise_map = staticmethod(mask_map)
    return ["--noise_level_map"]


def _basis(train_data: str, rank: int) -> Tensor:
    ((_, cube),) = get_task("cassi").load_test_items(train_data)
    return principal_spectra([cube], rank)


def _patch_gap_tv_init(basis: Tensor, iterations: int) -> None:
    def initial_estimate(self: Any, y: Tensor) -> Tensor:
        with steps.physics_in_fp32(y), torch.no_grad():
            decay = 0.95 ** (80 / iterations)  # the default schedule's overall decay, in fewer iterations
            return gap_tv(self.physics, y.float(), iterations=iterations, decay=decay, spectral_basis=basis)

    steps.TaskParameters.initial_estimate = initial_estimate


def _patch_spectral_subspace(basis: Tensor) -> None:
    projector = basis @ basis.T
    denoise = unfolding_model.LoRunModel._denoise

    def projected(self: Any, k: int, z: Tensor, sigma: Any, adapter_set: Any) -> Tensor:
        out = denoise(self, k, z, sigma, adapter_set)
        return torch.einsum("bc,nchw->nbhw", projector.to(out.dtype), out)

    unfolding_model.LoRunModel._denoise = projected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=["mask-channel", "spectral-subspace", "gap-tv-init"])
    parser.add_argument("--rank", type=int, default=6, help="principal spectra of the training cube kept")
    parser.add_argument("--gap-tv-iterations", type=int, default=20, help="gap-tv-init: GAP-TV iterations")
    args, rest = parser.parse_known_args()
    extra: list[str] = []
    if args.variant == "mask-channel":
        extra = _patch_mask_channel()
    else:
        if "--train_data" not in rest:
            parser.error(f"{args.variant} needs --train_data <one cube file>")
        basis = _basis(rest[rest.index("--train_data") + 1], args.rank)
        if args.variant == "spectral-subspace":
            _patch_spectral_subspace(basis)
        else:
            _patch_gap_tv_init(basis, args.gap_tv_iterations)
    sys.argv = [str(EXAMPLE), *rest, *extra]
    runpy.run_path(str(EXAMPLE), run_name="__main__")


if __name__ == "__main__":
    main()
