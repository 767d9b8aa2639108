"""RandomMaskCrops and the training loop's per-batch physics sampler (CASSI mask crops)."""

from __future__ import annotations

import pytest
import torch

from lorun_peft.data import RandomMaskCrops
from lorun_peft.denoisers import build_denoiser
from lorun_peft.physics import CASSI
from lorun_peft.training import UnfoldingTrainingConfig, train
from lorun_peft.training.loop import derive_seed
from lorun_peft.unfolding import LoRunModel

torch.set_num_threads(1)


def _mask(height: int = 40, width: int = 50) -> torch.Tensor:
    return torch.rand(height, width, generator=torch.Generator().manual_seed(3))


def _position(mask: torch.Tensor, crop: torch.Tensor) -> tuple[int, int]:
    """Where ``crop`` sits in ``mask`` (the values are continuous, so the match is unique)."""
    size = crop.shape[0]
    hits = [
        (top, left)
        for top in range(mask.shape[0] - size + 1)
        for left in range(mask.shape[1] - size + 1)
        if torch.equal(mask[top : top + size, left : left + size], crop)
    ]
    assert len(hits) == 1
    return hits[0]


def test_crops_are_pieces_of_the_mask_at_many_positions():
    mask = _mask()
    sampler = RandomMaskCrops(mask, 16)
    assert sampler.positions == (40 - 16 + 1) * (50 - 16 + 1)
    positions = {_position(mask, sampler.crop(torch.Generator().manual_seed(s))) for s in range(30)}
    assert len(positions) > 20  # 30 draws over 875 positions: nearly all distinct
    first = sampler.crop(torch.Generator().manual_seed(7))
    assert torch.equal(first, sampler.crop(torch.Generator().manual_seed(7)))


def test_writes_into_the_operator_in_place_and_refreshes_the_hqs_cache():
    mask = _mask()
    physics = CASSI(torch.ones(16, 16))
    buffer = physics.mask
    z = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    y = physics.A(z)
    before = physics.hqs_step(z, y, 0.5)
    RandomMaskCrops(mask, 16)(physics, torch.Generator().manual_seed(1))
    assert physics.mask is buffer and not torch.equal(physics.mask, torch.ones(16, 16))
    fresh = CASSI(physics.mask.clone())
    assert torch.allclose(physics.hqs_step(z, y, 0.5), fresh.hqs_step(z, y, 0.5))
    assert not torch.allclose(before, fresh.hqs_step(z, y, 0.5))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        RandomMaskCrops(torch.ones(2, 8, 8), 4)
    with pytest.raises(ValueError, match=r"crop size must be an integer in \[1, 40\]"):
        RandomMaskCrops(_mask(), 41)
    with pytest.raises(ValueError, match="needs a CASSI operator with a 16x16 mask"):
        RandomMaskCrops(_mask(), 16)(CASSI(torch.ones(8, 8)), torch.Generator())


def _cassi_model() -> LoRunModel:
    torch.manual_seed(0)
    return LoRunModel.from_components(
        CASSI(torch.ones(16, 16)), build_denoiser("unet", 3, 4, 2), num_stages=2, algorithm="hqs"
    )


def test_train_draws_a_new_rank_independent_crop_every_step(tmp_path):
    mask = _mask()
    sampler = RandomMaskCrops(mask, 16)
    seen = []

    def recording(physics, generator):
        sampler(physics, generator)
        seen.append(physics.mask.clone())

    config = UnfoldingTrainingConfig(
        output_dir=str(tmp_path / "run"), max_steps=4, batch_size=2, show_progress=False, seed=11
    )
    patches = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    train(_cassi_model(), patches, config, physics_sampler=recording)
    assert len(seen) == 4
    for step, crop in enumerate(seen):
        expected = sampler.crop(torch.Generator().manual_seed(derive_seed(11, step, 0, 0, "physics")))
        assert torch.equal(crop, expected)
    assert len({_position(mask, crop) for crop in seen}) == 4

    again = _cassi_model()
    result = train(
        again, patches, config.__class__(**{**config.__dict__, "output_dir": str(tmp_path / "b")}),
        physics_sampler=sampler,
    )  # fmt: skip
    assert torch.equal(result.model.physics.mask, seen[-1])


def test_cassi_training_runs_use_per_batch_crops_when_the_mask_is_larger(tmp_path, monkeypatch):
    from lorun_peft.tasks import CASSIArguments, SRArguments, get_task

    monkeypatch.setenv("LORUN_DATA_DIR", str(tmp_path))
    task_args, cassi = CASSIArguments(bands=4), get_task("cassi")
    sampler = cassi.physics_sampler(task_args, 32, smoke=True)
    assert isinstance(sampler, RandomMaskCrops) and sampler.mask.shape == (64, 64) and sampler.size == 32
    assert cassi.physics_sampler(task_args, 64, smoke=True) is None  # patch = mask: nothing to draw
    assert get_task("sr").physics_sampler(SRArguments(), 32, smoke=True) is None
    _, text = cassi.build_physics(task_args, 32, smoke=True)
    assert "a new random 32x32 crop per batch" in text
