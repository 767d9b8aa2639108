"""Script the training tests launch in a subprocess (plain python or ``accelerate launch``).

Trains the stand-in unfolding model on synthetic patches: phase 1 (shared nets), then, with
``--phase2``, phase 2 (nets frozen, per-stage adapters trainable), and writes
``rank<r>.json`` (world size, sha256 of the trainable weights, sha256 of the rank's first batch,
global step, resumed-from step, the values drawn by ``--physics-sampler``) into ``--report-dir``.
``--sleep`` slows every batch so that a test can kill the process in the middle of training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from standin import TinyUnfolding, smooth_patches, weights_sha256  # noqa: E402

from lorun_peft.training import UnfoldingTrainingConfig, train  # noqa: E402
from lorun_peft.training.loop import StepBatches  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--report-dir", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--phase2", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--physics-sampler", action="store_true", help="redraw Phi's scale every batch")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    patches = smooth_patches(64, 16, seed=1)

    def source(batch_size: int, generator: torch.Generator) -> torch.Tensor:
        time.sleep(args.sleep)
        return patches[torch.randint(len(patches), (batch_size,), generator=generator)]

    model = TinyUnfolding(stages=3, width=8, dropout=args.dropout)
    config = UnfoldingTrainingConfig(
        output_dir=args.output_dir,
        max_steps=args.steps,
        learning_rate=3e-3,
        batch_size=4,
        gradient_accumulation_steps=2,
        checkpoint_every=args.checkpoint_every,
        save_total_limit=2,
        resume_from_checkpoint=args.resume,
        noise_sigma=0.01,
        log_every=1,
        show_progress=False,
        seed=3,
    )
    if args.phase2:
        phase1_config = replace(
            config, checkpoint_every=0, resume_from_checkpoint=None, output_dir=args.output_dir + "-phase1"
        )
        phase1 = train(model, patches, phase1_config, finalize=False)
        model = phase1.model
        model.add_stage_adapters()
    draws: list[float] = []
    base_phi = model.physics.phi.clone()

    def redraw_phi(physics: torch.nn.Module, generator: torch.Generator) -> None:
        factor = 0.5 + float(torch.rand((), generator=generator))
        draws.append(factor)
        physics.phi.copy_(base_phi * factor)

    result = train(model, source, config, physics_sampler=redraw_phi if args.physics_sampler else None)

    import accelerate

    state = accelerate.PartialState()
    rank = state.process_index
    first = StepBatches(patches, config.batch_size, config.seed, rank, config.gradient_accumulation_steps)[0]
    report = {
        "rank": rank,
        "world_size": state.num_processes,
        "weights_sha256": weights_sha256(result.model),
        "weights": {
            name: param.detach().flatten().tolist()
            for name, param in result.model.named_parameters()
            if param.requires_grad
        },
        "first_batch_sha256": hashlib.sha256(first.numpy().tobytes()).hexdigest(),
        "global_step": result.global_step,
        "resumed_from": None if result.resumed_from is None else result.resumed_from.name,
        "losses": result.losses,
        "physics_draws": draws,
    }
    Path(args.report_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.report_dir) / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
