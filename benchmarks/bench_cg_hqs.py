"""Accuracy and time of the conjugate-gradient HQS step of wrapped operators against the closed forms.

A wrapped operator without ``prox_l2`` solves ``(A^T A + mu I) x = A^T y + mu z`` by conjugate gradients
(:func:`lorun_peft.physics.conjugate_gradient`). Here the built-in operators are wrapped as bare objects
(only ``A`` and ``A_adjoint``) and the CG step is compared with their closed-form ``hqs_step``: relative
error ``||x_cg - x|| / ||x||`` and time per step (median of 5), for two ``mu`` and two tolerances.

    OMP_NUM_THREADS=1 python benchmarks/bench_cg_hqs.py --out benchmarks/results/cg_hqs.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lorun_peft.evaluation.report import write_atomic
from lorun_peft.physics import CASSI, BlockCS, BlurDownsample, WrappedOperator, gaussian_kernel


class _Bare:
    """Only ``A`` and ``A_adjoint`` of an operator: what a user's own class offers."""

    def __init__(self, op) -> None:
        self.op = op

    def A(self, x):  # noqa: N802 - the operator interface's name
        return self.op.A(x)

    def A_adjoint(self, y):  # noqa: N802
        return self.op.A_adjoint(y)


def _median_ms(function, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    cases = {
        "SR x2, Gaussian 7x7 sigma 1.6, 3x64x64": (
            BlurDownsample(gaussian_kernel(7, 1.6), 2),
            (1, 3, 64, 64),
        ),
        "SR x4, Gaussian 13x13 sigma 3, 3x64x64": (
            BlurDownsample(gaussian_kernel(13, 3.0), 4),
            (1, 3, 64, 64),
        ),
        "CS 25 %, 32x32 blocks, 1x64x64": (BlockCS(0.25, 32).requires_grad_(False), (1, 1, 64, 64)),
        "CASSI, 28 bands, 64x64 mask": (
            CASSI((torch.rand(64, 64, generator=generator) > 0.5).float(), step=2),
            (1, 28, 64, 64),
        ),
    }
    rows = []
    with torch.no_grad():
        for name, (op, shape) in cases.items():
            x, z = torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)
            y = op.A(x)
            for mu in (0.05, 0.5):
                exact = op.hqs_step(z, y, mu)
                for tol in (1e-4, 1e-6):
                    wrapped = WrappedOperator(_Bare(op), cg_tol=tol, cg_max_iter=500)
                    error = float((wrapped.hqs_step(z, y, mu) - exact).norm() / exact.norm())
                    row = {
                        "operator": name,
                        "mu": mu,
                        "cg_tol": tol,
                        "relative_error": error,
                        "cg_ms": round(_median_ms(lambda w=wrapped, a=(z, y, mu): w.hqs_step(*a)), 2),
                        "closed_form_ms": round(_median_ms(lambda o=op, a=(z, y, mu): o.hqs_step(*a)), 2),
                    }
                    rows.append(row)
                    times = f"{row['cg_ms']:.1f} | {row['closed_form_ms']:.2f}"
                    print(f"| {name} | {mu} | {tol:g} | {error:.1e} | {times} |")
    if args.out:
        write_atomic(args.out, json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
