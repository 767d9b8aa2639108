"""Tasks as data: a new task is one TaskSpec, and the whole library serves it.

A toy fifth task ("dimming": ``y = g * x`` with a gain per task mode) is defined in this file alone and
runs train -> save -> load -> evaluate -> model card through the public API. The registered specs are
checked for what the rest of the library relies on, and evaluation is checked to leave the model as it
found it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lorun_peft import LoRunModel, metrics
from lorun_peft.evaluation import evaluate_items
from lorun_peft.hub import write_model_card
from lorun_peft.physics import as_operator, register_operator_factory
from lorun_peft.recipes import DataArguments, ModelArguments, build_model, save_run, start_run, training_data
from lorun_peft.tasks import ImageTask, get_task, register_task, task_for_physics, task_names
from lorun_peft.training import UnfoldingTrainingConfig, train

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- the toy task
class Dimmer(nn.Module):
    """``A x = g x``: a ten-line operator of the user's own."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain

    def A(self, x: Tensor) -> Tensor:
        return self.gain * x

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self.gain * y


register_operator_factory("toy_dimmer", Dimmer)


@dataclass
class DimmingArguments:
    gain: float = field(default=0.5, metadata={"help": "Dimming: the gain g of y = g x."})


class DimmingTask(ImageTask):
    name = "dimming"
    label = "dimming"
    title = "toy task: y = g x (sets gain-XX)"
    arguments = DimmingArguments
    algorithm = "pgd"
    hub_tag = "image-dimming"
    protocol = "toy: PSNR on [0, 1]"
    protocol_label = "toy PSNR"
    set_key = "gain"
    smoke_patch_size = 16

    def owns(self, config: dict[str, Any]) -> bool:
        return config.get("type") == "wrapped" and config.get("factory") == "toy_dimmer"

    def build_physics(self, args, patch_size, *, smoke=False, seed=0, data_dir=None):
        physics = as_operator(Dimmer(args.gain), factory="toy_dimmer", args={"gain": args.gain})
        return physics, f"dimming by {args.gain}"

    def set_name(self, args) -> str:
        return f"gain-{round(args.gain * 100)}"

    def score(self, restored, clean, physics):
        restored = restored.clamp(0, 1)
        return float(metrics.psnr(restored, clean, data_range=1.0)), float(metrics.ssim(restored, clean))

    def stage_metric(self, physics):
        return lambda pred, target: metrics.psnr(pred, target, data_range=1.0)


@pytest.fixture
def dimming():
    from lorun_peft.tasks import base

    spec = register_task(DimmingTask())
    yield spec
    base._TASKS.pop("dimming", None)


def _run(spec, task_args, model_args, output_dir) -> Any:
    data = DataArguments(patch_size=16, max_train_images=2)
    training = UnfoldingTrainingConfig(
        output_dir=str(output_dir), max_steps=3, batch_size=2, show_progress=False, learning_rate=1e-3
    )
    set_name = start_run(spec, task_args, model_args, training)
    torch.manual_seed(0)  # as the example recipes do
    physics, physics_text = spec.build_physics(task_args, data.patch_size)
    dataset, data_text = training_data(spec, task_args, data, smoke=True)
    model = build_model(spec, task_args, model_args, physics, set_name=set_name, seed=0)
    result = train(model, dataset, training, physics_sampler=spec.physics_sampler(task_args, 16))
    return save_run(
        result, spec, model_args, training, set_name=set_name, physics_text=physics_text,
        data_text=data_text, started=0.0,
    )  # fmt: skip


def test_a_new_task_trains_saves_loads_evaluates_and_gets_a_card(dimming, tmp_path, monkeypatch):
    monkeypatch.setenv("LORUN_DATA_DIR", str(tmp_path / "no-data"))  # smoke: the shipped sample images
    assert "dimming" in task_names()
    small = {"width": 4, "depth": 2, "num_stages": 2}
    backbone = _run(dimming, DimmingArguments(0.5), ModelArguments(mode="shared", **small), tmp_path / "b")
    assert backbone.task == "dimming" and backbone.steps == 3
    phase2 = ModelArguments(mode="lorun", backbone=str(tmp_path / "b"), **small)
    summary = _run(dimming, DimmingArguments(0.25), phase2, tmp_path / "s")
    assert summary.adapter_set_name == "gain-25"

    model = LoRunModel.from_pretrained(tmp_path / "b")
    model.load_adapter(tmp_path / "s" / "gain-25")
    assert task_for_physics(model) is dimming and model.physics.operator.gain == 0.25
    items = dimming.smoke_items(None, size=24, count=2)
    report = evaluate_items(model, None, items)
    assert report.task == "dimming" and report.protocol == "toy: PSNR on [0, 1]"
    name, image = items[0]  # scored with the spec's protocol on the spec's measurement
    expected, _ = dimming.score(model.restore(model.physics.measure(image[None])), image[None], model.physics)
    assert report.items[0].name == name and report.items[0].psnr == pytest.approx(expected, abs=1e-3)

    card = write_model_card(tmp_path / "s", "me/dimming-adapters", base_model="me/dimming-backbone")
    assert "image-dimming" in card.read_text()
    assert dimming.set_name_for(gain=0.75) == "gain-75"


# ---------------------------------------------------------------------------------------------- the specs
@pytest.mark.parametrize("name", ["cs", "sr", "cassi", "inpainting", "denoising"])
def test_registered_specs_are_complete(name):
    spec = get_task(name)
    args = spec.arguments()
    assert spec.name == name and spec.label and spec.title and spec.protocol and spec.hub_tag
    assert spec.algorithm in ("pgd", "hqs") and spec.set_key in {f for f in vars(args)}
    physics, text = spec.build_physics(args, spec.smoke_patch_size, smoke=True)
    assert text and spec.owns(physics.get_config()) and task_for_physics(physics) is spec
    assert spec.set_name(args) == spec.set_name_for(**{spec.set_key: getattr(args, spec.set_key)})
    assert spec.channels(args) >= 1 and spec.describe_physics(physics.get_config())


def test_unknown_tasks_and_physics_are_clear_errors():
    with pytest.raises(ValueError, match="task must be one of .*'cs'"):
        get_task("mri")
    with pytest.raises(ValueError, match="no task owns physics 'nope'"):
        task_for_physics({"type": "nope"})


# ---------------------------------------------------------------------------------------------- no mutation
def _tiny(physics, channels=1):
    from lorun_peft.denoisers import build_denoiser

    torch.manual_seed(0)
    return LoRunModel.from_components(physics, build_denoiser("unet", channels, 4, 2), num_stages=2).eval()


def test_evaluation_leaves_the_model_as_it_found_it():
    """A CASSI model evaluated with a larger mask and an inpainting one with per-image masks come back
    with the same physics object, mask and mode."""
    from lorun_peft.physics import CASSI, pixel_inpainting
    from lorun_peft.tasks import synthetic_cube

    torch.manual_seed(0)
    cassi = _tiny(CASSI(torch.rand(16, 16)), channels=4)
    physics, mask = cassi.physics, cassi.physics.mask.clone()
    cube = synthetic_cube(torch.rand(3, 24, 24), 4)
    evaluate_items(cassi, "cassi", [("c", cube)], mask=torch.rand(32, 32))
    assert cassi.physics is physics and torch.equal(cassi.physics.mask, mask) and not cassi.training

    inpainting = _tiny(pixel_inpainting(0.5))
    operator = inpainting.physics.operator
    operator.set_mask(torch.ones(8, 8))
    before = operator.mask.clone()
    inpainting.train()
    report = evaluate_items(inpainting, None, [("a", torch.rand(1, 20, 20)), ("b", torch.rand(1, 12, 16))])
    assert report.task == "inpainting" and inpainting.training
    assert inpainting.physics.operator is operator and torch.equal(operator.mask, before)


@pytest.mark.parametrize("band_gain", [0.0, 0.2])
def test_cassi_batches_from_one_cube_are_distinct_crops(tmp_path, band_gain: float) -> None:
    """One training cube used to give batches of ``batch_size`` copies of one crop (one crop per step)."""
    import numpy as np

    from lorun_peft.tasks.cassi import CASSIArguments
    from lorun_peft.training.batches import StepBatches

    np.savez(tmp_path / "cube.npz", cube=np.random.default_rng(0).random((48, 48, 4)).astype("float32"))
    spec = get_task("cassi")
    data = DataArguments(patch_size=16)
    dataset, _ = spec.train_dataset(tmp_path / "cube.npz", CASSIArguments(bands=4, band_gain=band_gain), data)
    for step in (0, 7):
        batch = StepBatches(dataset, 8, seed=0, rank=0, accumulation=1)[step]
        assert batch.shape == (8, 4, 16, 16)
        distinct = {tuple(patch.flatten().tolist()) for patch in batch}
        assert len(distinct) == 8, f"repeated crops at step {step}"


def test_an_all_kernel_sr_run_is_scored_with_k1_not_the_last_kernel_drawn(tmp_path, monkeypatch) -> None:
    """During training the sampler leaves a random kernel in the physics; evaluation must use K1."""
    from lorun_peft.denoisers import build_denoiser
    from lorun_peft.physics import BlurDownsample
    from lorun_peft.tasks import SRArguments

    monkeypatch.setenv("LORUN_DATA_DIR", str(tmp_path))  # no kernels_12.mat: the smoke stand-ins
    spec = get_task("sr")
    assert spec.evaluation_options(SRArguments(kernel="K1"), smoke=True) == {}
    options = spec.evaluation_options(SRArguments(kernel="all"), smoke=True)
    kernels = spec.physics_sampler(SRArguments(kernel="all"), 36, smoke=True).kernels
    assert torch.equal(options["kernel"], kernels[0])
    torch.manual_seed(0)
    model = LoRunModel.from_components(
        BlurDownsample(kernels[8].clone(), 2),
        build_denoiser("unet", 3, 4, 2, identity_init=True),
        num_stages=2,
    )  # K9 (a motion kernel) is left in the physics, as after a training step that drew it
    from lorun_peft.data.samples import load_sample_image

    items = [("camera", load_sample_image("astronaut", mode="RGB")[:, 100:160, 100:160].contiguous())]
    scored = evaluate_items(model, "sr", items, **options)
    assert torch.equal(model.physics.kernel, kernels[8])  # put back
    reference = LoRunModel.from_components(
        BlurDownsample(kernels[0].clone(), 2),
        build_denoiser("unet", 3, 4, 2, identity_init=True),
        num_stages=2,
    )
    reference.load_state_dict(
        {k: v for k, v in model.state_dict().items() if "kernel" not in k}, strict=False
    )
    expected = evaluate_items(reference, "sr", items)
    assert scored.mean_psnr == pytest.approx(expected.mean_psnr, abs=1e-4)
    assert abs(evaluate_items(model, "sr", items).mean_psnr - expected.mean_psnr) > 0.1  # K9 scores otherwise
    with pytest.raises(ValueError, match="evaluation kernel has shape"):
        evaluate_items(model, "sr", items, kernel=torch.ones(5, 5) / 25)
