"""Shipped pretrained models: the asset layout, root selection, loading with every set resident, errors.

The real assets are trained by the lead; these tests build tiny ones (block 8, K = 2, U-Net width 4) in a
temporary folder with :func:`build_tiny_assets`, which ``tests/test_cli.py`` and ``tests/test_figures.py``
reuse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorun_peft import BlockCS, BlurDownsample, LoRunModel, StageLoRAConfig, UNetConfig, UNetDenoiser
from lorun_peft.physics import gaussian_kernel
from lorun_peft.pretrained import (
    PRETRAINED_ENV,
    adapter_set_name,
    list_pretrained,
    load_model,
    load_pretrained,
    pretrained_root,
    read_manifest,
    resolve_sr_set,
    save_pretrained_assets,
)

CS_SETS = {"ratio-10": 0.10, "ratio-25": 0.25, "ratio-50": 0.50}
SR_SETS = {"x2-k1": 2, "x4-k1": 4}


def _perturb_adapters(model: LoRunModel, seed: int) -> None:
    """Random ``lora_B`` (it starts at zero), so every stage and every set computes something different."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))


def tiny_cs_model() -> LoRunModel:
    """A shared block-CS backbone (25 %, block 8, K = 2) with sets ratio-10/25/50, each with its own Phi."""
    torch.manual_seed(0)
    denoiser = UNetDenoiser(UNetConfig(in_channels=1, out_channels=1, base_channels=4, depth=2))
    model = LoRunModel.from_components(BlockCS(0.25, block_size=8), denoiser, num_stages=2)
    for name, ratio in CS_SETS.items():
        model.add_stage_adapters(name, StageLoRAConfig(num_stages=2, gamma=50), physics=BlockCS(ratio, 8))
    _perturb_adapters(model, 1)
    return model.eval()


def tiny_sr_model() -> LoRunModel:
    """A shared RGB SR backbone (5x5 Gaussian, x2, K = 2) with sets x2-k1 and x4-k1."""
    torch.manual_seed(0)
    kernel = gaussian_kernel(5, 1.0)
    denoiser = UNetDenoiser(UNetConfig(in_channels=3, out_channels=3, base_channels=4, depth=2))
    model = LoRunModel.from_components(BlurDownsample(kernel, 2), denoiser, num_stages=2)
    for name, scale in SR_SETS.items():
        config = StageLoRAConfig(num_stages=2, gamma=50)
        model.add_stage_adapters(name, config, physics=BlurDownsample(kernel, scale))
    _perturb_adapters(model, 2)
    return model.eval()


def build_tiny_assets(root: Path) -> Path:
    """Write tiny ``cs`` and ``sr`` pretrained assets (with a manifest for cs) under ``root``."""
    save_pretrained_assets(tiny_cs_model(), "cs", root, manifest={"note": "tiny test model", "K": 2})
    save_pretrained_assets(tiny_sr_model(), "sr", root)
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_assets(tmp_path_factory.mktemp("pretrained"))


def test_layout_and_listing(assets: Path) -> None:
    for task, sets in (("cs", CS_SETS), ("sr", SR_SETS)):
        assert (assets / task / "backbone" / "config.json").is_file()
        assert (assets / task / "backbone" / "model.safetensors").is_file()
        for name in sets:
            assert (assets / task / "adapters" / name / "adapter_set.json").is_file()
    assert list_pretrained(assets) == {"cs": sorted(CS_SETS), "sr": sorted(SR_SETS)}
    assert read_manifest("cs", assets) == {"note": "tiny test model", "K": 2}
    assert read_manifest("sr", assets) == {}
    assert not list(assets.glob(".*")), "temporary folders were left behind"


def test_root_from_argument_environment_and_package(
    assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PRETRAINED_ENV, raising=False)
    assert pretrained_root() == Path(__import__("lorun_peft").__file__).parent / "assets" / "pretrained"
    monkeypatch.setenv(PRETRAINED_ENV, str(assets))
    assert pretrained_root() == assets
    assert sorted(list_pretrained()) == ["cs", "sr"]
    assert list_pretrained(tmp_path) == {}  # an explicit root wins over the environment


def test_load_pretrained_has_every_set_and_reproduces_the_saved_model(assets: Path) -> None:
    original = tiny_cs_model()
    model = load_pretrained("cs", root=assets)
    assert model.mode == "lorun" and model.active_adapter_set == "ratio-25"
    assert model.list_adapter_sets() == sorted(CS_SETS)
    image = torch.rand(1, 1, 16, 24, generator=torch.Generator().manual_seed(3))
    for name, ratio in CS_SETS.items():
        model.set_adapter_set(name)
        original.set_adapter_set(name)
        assert model.physics.ratio == ratio
        torch.testing.assert_close(model.physics.Phi, original.physics.Phi, rtol=0, atol=0)
        y = original.physics.measure(image)
        torch.testing.assert_close(
            model.restore(y, image_size=(16, 24)), original.restore(y, image_size=(16, 24))
        )
    with model.disable_adapters(), original.disable_adapters():
        torch.testing.assert_close(model.physics.Phi, original.task.physics.Phi, rtol=0, atol=0)
        y = original.physics.measure(image)
        torch.testing.assert_close(
            model.restore(y, image_size=(16, 24)), original.restore(y, image_size=(16, 24))
        )


def test_load_pretrained_named_set_and_sr(assets: Path) -> None:
    assert load_pretrained("cs", "ratio-10", assets).active_adapter_set == "ratio-10"
    sr = load_pretrained("sr", root=assets)
    assert sr.active_adapter_set == "x2-k1" and sr.physics.scale == 2
    sr.set_adapter_set("x4-k1")
    assert sr.physics.scale == 4


def test_missing_assets_and_unknown_names(assets: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"pretrained 'cs' is not installed at .*cs"):
        load_pretrained("cs", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="pretrained 'cassi' is not installed"):
        load_pretrained("cassi", root=assets)
    with pytest.raises(ValueError, match=r"no adapter set 'ratio-30'.*ratio-10, ratio-25, ratio-50"):
        load_pretrained("cs", "ratio-30", assets)
    with pytest.raises(ValueError, match="task must be one of .*got 'denoise'"):
        load_pretrained("denoise", root=assets)


def test_backbone_without_sets_loads_as_shared(tmp_path: Path) -> None:
    model = tiny_cs_model()
    for name in list(CS_SETS):
        model.delete_adapter_set(name)
    save_pretrained_assets(model, "cs", tmp_path)
    assert list_pretrained(tmp_path) == {"cs": []}
    assert load_pretrained("cs", root=tmp_path).mode == "shared"


def test_save_replaces_the_task_folder_as_a_whole(tmp_path: Path) -> None:
    model = tiny_cs_model()
    save_pretrained_assets(model, "cs", tmp_path, manifest={"run": 1})
    stale = tmp_path / "cs" / "adapters" / "stale-set"
    stale.mkdir()
    model.delete_adapter_set("ratio-50")
    save_pretrained_assets(model, "cs", tmp_path, manifest={"run": 2})
    assert list_pretrained(tmp_path) == {"cs": ["ratio-10", "ratio-25"]}
    assert not stale.exists()
    assert json.loads((tmp_path / "cs" / "manifest.json").read_text()) == {"run": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cs"]


def test_load_model_from_a_set_folder_or_a_folder_of_sets(assets: Path) -> None:
    backbone = assets / "cs" / "backbone"
    one = load_model(backbone, assets / "cs" / "adapters" / "ratio-50")
    assert one.list_adapter_sets() == ["ratio-50"] and one.active_adapter_set == "ratio-50"
    every = load_model(backbone, assets / "cs" / "adapters", "ratio-10")
    assert every.list_adapter_sets() == sorted(CS_SETS) and every.active_adapter_set == "ratio-10"
    with pytest.raises(ValueError, match="not 'ratio-25'"):
        load_model(backbone, assets / "cs" / "adapters" / "ratio-50", "ratio-25")
    with pytest.raises(ValueError, match="'ratio-99' is not in"):
        load_model(backbone, assets / "cs" / "adapters", "ratio-99")
    with pytest.raises(ValueError, match="fingerprint"):  # SR sets do not fit the CS backbone
        load_model(backbone, assets / "sr" / "adapters" / "x2-k1")


@pytest.mark.parametrize(
    ("task", "kwargs", "expected"),
    [
        ("cs", {"ratio": 0.25}, "ratio-25"),
        ("cs", {"ratio": 25}, "ratio-25"),
        ("cs", {"ratio": 0.1}, "ratio-10"),
        ("sr", {"scale": 4}, "x4-k1"),
        ("sr", {"scale": 2, "kernel": "K12"}, "x2-k12"),
        ("sr", {"scale": 3, "kernel": 5}, "x3-k5"),
        ("sr", {"scale": 3, "kernel": "all"}, "x3"),
        ("cassi", {"bands": 28}, "mask-28"),
        ("inpainting", {"missing": 0.7}, "missing-70"),
    ],
)
def test_adapter_set_names(task: str, kwargs: dict, expected: str) -> None:
    assert adapter_set_name(task, **kwargs) == expected


@pytest.mark.parametrize(
    ("task", "kwargs", "message"),
    [
        ("cs", {}, "pass ratio"),
        ("cs", {"ratio": 0.333}, "not a whole percentage"),
        ("cs", {"ratio": 0}, r"\(0, 1\]"),
        ("sr", {"scale": 2, "kernel": "K13"}, "K1..K12"),
        ("sr", {}, "pass scale"),
        ("cassi", {}, "pass bands"),
        ("cs", {"ratio": 0.25, "scale": 2}, "not named by"),
        ("inpainting", {"missing": 0.705}, "whole percentage"),
        ("mri", {"ratio": 0.25}, "task must be one of"),
    ],
)
def test_adapter_set_name_errors(task: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        adapter_set_name(task, **kwargs)


def test_half_precision_storage_halves_the_files_and_loads_back_as_float32(tmp_path: Path) -> None:
    model = tiny_cs_model()
    save_pretrained_assets(model, "cs", tmp_path / "f32")
    save_pretrained_assets(model, "cs", tmp_path / "f16", storage_dtype=torch.float16)
    files32 = sorted((tmp_path / "f32" / "cs").rglob("*.safetensors"))
    files16 = sorted((tmp_path / "f16" / "cs").rglob("*.safetensors"))
    assert [p.relative_to(tmp_path / "f32") for p in files32] == [
        p.relative_to(tmp_path / "f16") for p in files16
    ]
    assert sum(p.stat().st_size for p in files16) < 0.6 * sum(p.stat().st_size for p in files32)
    full = load_pretrained("cs", "ratio-25", tmp_path / "f32")
    half = load_pretrained("cs", "ratio-25", tmp_path / "f16")
    assert {p.dtype for p in half.parameters()} == {torch.float32}
    for (name, a), (_, b) in zip(full.state_dict().items(), half.state_dict().items()):
        assert torch.equal(b, a.to(torch.float16).to(a.dtype)), name  # exactly the fp16 rounding
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = full.physics.measure(x)
        torch.testing.assert_close(half(y).images, full(y).images, atol=5e-3, rtol=0)
    with pytest.raises(ValueError, match="storage_dtype"):
        save_pretrained_assets(model, "cs", tmp_path / "bad", storage_dtype=torch.int8)


def test_extra_tensors_ship_beside_the_backbone(tmp_path: Path) -> None:
    from lorun_peft.pretrained import pretrained_kernels

    kernels = torch.rand(12, 25, 25)
    save_pretrained_assets(
        tiny_sr_model(), "sr", tmp_path, extra_tensors={"kernels_12.safetensors": {"kernels": kernels}}
    )
    assert torch.equal(pretrained_kernels(tmp_path), kernels)
    save_pretrained_assets(tiny_sr_model(), "sr", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="kernels_12"):
        pretrained_kernels(tmp_path / "none")


@pytest.mark.parametrize(
    "names, scale, kernel, expected",
    [
        (["x2", "x2-k1", "x3"], 2, None, ("x2-k1", None)),  # a single-kernel set for K1 wins
        (["x2", "x2-k1", "x3"], 2, "K5", ("x2", 4)),  # else the all-kernel set with K5 written in
        (["x2", "x3"], 3, None, ("x3", 0)),
        (["x4-k1"], 4, 1, ("x4-k1", None)),
    ],
)
def test_sr_set_resolution(names, scale, kernel, expected) -> None:
    assert resolve_sr_set(names, scale, kernel) == expected


def test_sr_set_resolution_names_what_is_installed() -> None:
    with pytest.raises(ValueError, match="expected 'x3-k2' or the all-kernel set 'x3'; installed: x2"):
        resolve_sr_set(["x2"], 3, "K2")


def test_shipped_models_are_complete_and_fit_the_wheel_budget() -> None:
    """The package's own assets: every task installed with its sets, all of it within 40 MB."""
    import lorun_peft
    from lorun_peft.pretrained import pretrained_kernels, read_manifest

    assets = Path(lorun_peft.__file__).parent / "assets"
    shipped = list_pretrained(assets / "pretrained")
    assert shipped["cs"] == sorted(f"ratio-{r}" for r in (1, 4, 10, 25, 30, 40, 50))
    assert set(shipped["sr"]) == {"x2", "x3", "x4", "x2-k1"}
    assert set(shipped["cassi"]) == {"mask-28", "mask-real"}
    assert shipped["inpainting"] == ["missing-50", "missing-70", "missing-90"]
    import io
    import zipfile

    buffer = io.BytesIO()  # what the assets take in the wheel: a zip of deflated files, as wheels are
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for path in sorted(p for p in assets.rglob("*") if p.is_file()):
            wheel.write(path, str(path.relative_to(assets.parent)))
    size = buffer.getbuffer().nbytes
    assert size <= 40e6, f"the package assets take {size / 1e6:.1f} MB in the wheel, over the 40 MB budget"
    root = assets / "pretrained"
    assert pretrained_kernels(root).shape == (12, 25, 25)
    for task in shipped:
        assert read_manifest(task, root)["storage_dtype"] == "float16"


def test_bare_set_name_loads_beside_a_backbone_in_the_shipped_layout(assets: Path) -> None:
    """``from_pretrained(<task>/backbone)`` then ``load_adapter("ratio-25")``: the design-card use."""
    model = LoRunModel.from_pretrained(assets / "cs" / "backbone")
    assert model.load_adapter("ratio-25") == "ratio-25"
    reference = load_pretrained("cs", "ratio-25", assets)
    for key, value in reference.active_task.state_dict().items():
        assert torch.equal(model.active_task.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match="ratio-30"):
        model.load_adapter("ratio-30")


def test_a_missing_local_path_that_looks_like_a_hub_id_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``files/nope`` (no such folder, not cached, Hub off): one line, no transformers retries."""
    import lorun_peft.hub.files as hub_files

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub_files, "is_offline", lambda: True)  # check_backbone_reachable's
    with pytest.raises(
        FileNotFoundError, match="'files/nope' is not a local folder .* not in the local Hub cache"
    ):
        load_model("files/nope")


def test_pickle_weights_are_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder with only pytorch_model.bin: a clear error, and torch.load never runs."""
    model = tiny_cs_model()
    model.save_pretrained(tmp_path / "good")
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "good" / "config.json").read_text())
    torch.save(model.state_dict(), folder / "pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called: a pickle was unpickled")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ValueError, match=r"has no model.safetensors \(only pytorch_model.bin: pickle files"):
        LoRunModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="safetensors weights only"):
        LoRunModel.from_pretrained(tmp_path / "good", use_safetensors=False)
    assert LoRunModel.from_pretrained(tmp_path / "good").config.num_stages == 2


def test_shipped_hub_ids_resolve_to_the_package_copy_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's first lines: lorun-peft/<task>-backbone, then a set name or lorun-peft/<task>-adapters."""
    import lorun_peft
    import lorun_peft.hub as hub
    import lorun_peft.hub.files as hub_files

    monkeypatch.setattr(hub_files, "is_offline", lambda: True)  # shipped_copy's
    shipped = Path(lorun_peft.__file__).parent / "assets" / "pretrained"
    assert hub.shipped_copy("lorun-peft/cs-backbone") == shipped / "cs" / "backbone"
    assert hub.shipped_copy("lorun-peft/sr-adapters") == shipped / "sr" / "adapters"
    assert hub.shipped_copy("lorun-peft/inpainting-backbone") == shipped / "inpainting" / "backbone"
    assert hub.shipped_copy("lorun-peft/denoising-backbone") is None  # no such shipped folder
    assert hub.shipped_copy("lorun-peft/cs-decoder") is None and hub.shipped_copy("org/cs-backbone") is None
    model = LoRunModel.from_pretrained("lorun-peft/cs-backbone")
    assert model.load_adapter("ratio-25") == "ratio-25"
    assert model.load_adapter("lorun-peft/cs-adapters", "ratio-10") == "ratio-10"
    reference = load_pretrained("cs", "ratio-10", shipped)
    for key, value in reference.active_task.state_dict().items():
        assert torch.equal(model.active_task.state_dict()[key], value), key
    assert load_model(
        "lorun-peft/cassi-backbone", "lorun-peft/cassi-adapters", "mask-real"
    ).physics.mask.shape == (
        660,
        660,
    )


@pytest.mark.parametrize("task", ["cs", "sr", "cassi", "inpainting"])
def test_shipped_folders_carry_the_cards_a_push_would_write(tmp_path: Path, task: str) -> None:
    """lorun-peft/<task>-backbone and -adapters hold exactly these folders: same files, same model card."""
    from lorun_peft import hub
    from lorun_peft.pretrained import list_pretrained, load_pretrained, pretrained_dir

    shipped = pretrained_dir(task)
    model = load_pretrained(task)  # the backbone with its default set
    for name in list_pretrained()[task]:
        if name not in model.list_adapter_sets():
            model.load_adapter(shipped / "adapters" / name)
    backbone = hub.export_repo(model, tmp_path / "backbone", f"lorun-peft/{task}-backbone", sets=[])
    adapters = hub.export_repo(
        model, tmp_path / "adapters", f"lorun-peft/{task}-adapters", backbone=False,
        base_model=f"lorun-peft/{task}-backbone",
    )  # fmt: skip
    for exported, folder in ((backbone, shipped / "backbone"), (adapters, shipped / "adapters")):
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file())
        assert (folder / "README.md").read_text() == (exported / "README.md").read_text(), folder
