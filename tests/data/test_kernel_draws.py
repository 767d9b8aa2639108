"""RandomKernels: one SR adapter set trained on a kernel drawn from the 12 for every batch."""

from __future__ import annotations

import pytest
import torch

from lorun_peft.data.kernel_draws import RandomKernels
from lorun_peft.denoisers import build_denoiser
from lorun_peft.physics import BlurDownsample, synthetic_kernels_12
from lorun_peft.tasks import SRArguments, get_task
from lorun_peft.training import UnfoldingTrainingConfig, train
from lorun_peft.training.loop import derive_seed
from lorun_peft.unfolding import LoRunModel

torch.set_num_threads(1)


def test_draws_every_kernel_and_writes_in_place():
    kernels = synthetic_kernels_12()
    sampler = RandomKernels(kernels)
    physics = BlurDownsample(kernels[0], 2)
    buffer = physics.kernel
    drawn = set()
    for seed in range(60):
        sampler(physics, torch.Generator().manual_seed(seed))
        index = sampler.draw(torch.Generator().manual_seed(seed))
        assert torch.equal(physics.kernel, kernels[index])
        drawn.add(index)
    assert physics.kernel is buffer
    assert drawn == set(range(12))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"\(N, kh, kw\)"):
        RandomKernels(torch.ones(5, 5))
    bad = synthetic_kernels_12().clone()
    bad[3, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        RandomKernels(bad)
    with pytest.raises(ValueError, match=r"needs a blur operator with a \(25, 25\) kernel"):
        RandomKernels(synthetic_kernels_12())(BlurDownsample(torch.ones(5, 5) / 25, 2), torch.Generator())


def _write_kernels_mat(path, kernels: torch.Tensor) -> None:
    import numpy as np
    from scipy.io import savemat

    cell = np.empty((1, kernels.shape[0]), dtype=object)
    for index, kernel in enumerate(kernels):
        cell[0, index] = kernel.numpy().astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"kernels": cell})


def test_kernel_all_builds_a_sampler_and_an_all_kernel_set_name(monkeypatch, tmp_path):
    monkeypatch.setenv("LORUN_DATA_DIR", str(tmp_path))  # no kernels_12.mat there: synthetic stand-ins
    sr = get_task("sr")
    task_args = SRArguments(kernel="all", scale=3)
    physics, text = sr.build_physics(task_args, 48, smoke=True)
    assert "drawn per batch" in text and torch.equal(physics.kernel, synthetic_kernels_12()[0])
    assert isinstance(sr.physics_sampler(task_args, 48, smoke=True), RandomKernels)
    assert sr.physics_sampler(SRArguments(kernel="K2"), 48) is None
    assert sr.set_name(task_args) == "x3"
    assert sr.set_name(SRArguments(kernel="K2", scale=3)) == "x3-k2"


def test_training_measures_each_step_with_the_drawn_kernel(tmp_path):
    kernels = synthetic_kernels_12()
    sampler = RandomKernels(kernels)
    seen = []

    def recording(physics, generator):
        sampler(physics, generator)
        seen.append(physics.kernel.clone())

    torch.manual_seed(0)
    model = LoRunModel.from_components(
        BlurDownsample(kernels[0], 2), build_denoiser("unet", 3, 4, 2), num_stages=2, algorithm="pgd"
    )
    config = UnfoldingTrainingConfig(
        output_dir=str(tmp_path / "run"), max_steps=5, batch_size=2, show_progress=False, seed=4
    )
    train(model, torch.rand(6, 3, 32, 32), config, physics_sampler=recording)
    for step, kernel in enumerate(seen):
        index = sampler.draw(torch.Generator().manual_seed(derive_seed(4, step, 0, 0, "physics")))
        assert torch.equal(kernel, kernels[index])


def test_kernels_come_from_data_dir_and_are_never_silently_synthetic(monkeypatch, tmp_path):
    monkeypatch.setenv("LORUN_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="kernels_12.mat not found.*--kernels_file"):
        get_task("sr").build_physics(SRArguments(kernel="all"), 48)
    with pytest.raises(FileNotFoundError, match="kernels_12.mat not found"):
        get_task("sr").build_physics(SRArguments(kernel="K5"), 48)
    kernels = synthetic_kernels_12().flip(0).contiguous()  # not the stand-ins' order: really read from file
    _write_kernels_mat(tmp_path / "data" / "kernels" / "kernels_12.mat", kernels)
    physics, text = get_task("sr").build_physics(SRArguments(kernel="K5"), 48, data_dir=tmp_path / "data")
    assert str(tmp_path / "data") in text
    torch.testing.assert_close(physics.kernel, kernels[4])
    sampler = get_task("sr").physics_sampler(SRArguments(kernel="all"), 48, data_dir=tmp_path / "data")
    torch.testing.assert_close(sampler.kernels, kernels)
