"""Hub round trips without any network: an offline Hub cache for downloads, HfApi intercepted for pushes.

The cache is laid out as huggingface_hub writes it (``models--org--name/refs/main`` holding a commit sha,
``snapshots/<sha>/...`` holding the files; blobs are not needed to resolve offline). Pushes go to a fake
Hub that replaces ``HfApi.create_repo/create_branch/list_repo_files/hf_hub_download/create_commit``;
``constants.ENDPOINT`` points at a closed local port so that a call that slips through fails at once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from fake_hub import FakeHub
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, constants
from huggingface_hub.errors import OfflineModeIsEnabled

from lorun_peft import hub
from lorun_peft.denoisers import UNetConfig, UNetDenoiser
from lorun_peft.physics import BlockCS
from lorun_peft.tuners import StageLoRAConfig
from lorun_peft.unfolding import LoRunModel

SHA_1 = "1" * 40
SHA_2 = "2" * 40
SET_FILES = [
    "adapter_set.json",
    "stage_00/adapter_config.json",
    "stage_00/adapter_model.safetensors",
    "stage_01/adapter_config.json",
    "stage_01/adapter_model.safetensors",
    "task.safetensors",
]


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model() -> LoRunModel:
    """A K=2 CS backbone (8x8 blocks, tiny U-Net) with sets ratio-25 and ratio-10 (non-zero adapters)."""
    torch.manual_seed(0)
    denoiser = UNetDenoiser(UNetConfig(in_channels=1, out_channels=1, base_channels=4, depth=2))
    model = LoRunModel.from_components(BlockCS(0.25, block_size=8), denoiser, num_stages=2)
    for name, ratio in (("ratio-25", 0.25), ("ratio-10", 0.10)):
        model.add_stage_adapters(
            name, StageLoRAConfig(num_stages=2, gamma=50), physics=BlockCS(ratio, block_size=8)
        )
        with torch.no_grad():
            for key, param in model.named_parameters():
                if "lora_B" in key and name in key:
                    param.normal_(0.0, 0.1)
    return model.eval()


def assert_same_restore(restored: torch.Tensor, expected: torch.Tensor, label: str = "") -> None:
    """A loaded model's restore against the original's: same weights, but two instances may get other
    oneDNN kernels, so outputs agree only to rounding (a wrong set or weight is off by far more)."""
    torch.testing.assert_close(restored, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{label} {m}".strip())


def outputs(model: LoRunModel, set_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(measurement, restored) for one set, from a fixed image."""
    model.set_adapter_set(set_name)
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        measurement = model.physics.measure(images)
    return measurement, model.restore(measurement)


def save_repo(model: LoRunModel, folder: Path, backbone: bool = True, sets=("ratio-25", "ratio-10")) -> Path:
    if backbone:
        model.save_pretrained(folder)
    for name in sets:
        model.save_adapter_set(folder, name)
    return folder


def place_in_cache(cache: Path, repo_id: str, source: Path, sha: str, ref: str = "main") -> Path:
    """Put ``source``'s files into the Hub cache as ``repo_id`` at commit ``sha`` (``refs/<ref>`` -> sha)."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, storage / "snapshots" / sha, dirs_exist_ok=True)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(sha)
    return storage / "snapshots" / sha


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache, offline (``HF_HUB_OFFLINE`` is read at import, so the constant is patched)."""
    folder = tmp_path / "hub-cache"
    folder.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    return folder


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> FakeHub:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    fake = FakeHub(tmp_path / "downloads")
    fake.install(monkeypatch)
    return fake


def added(operations: list) -> list[str]:
    return sorted(op.path_in_repo for op in operations if isinstance(op, CommitOperationAdd))


# ---------------------------------------------------------------- offline loading from the cache
def test_backbone_and_sets_load_offline_by_repo_id(tmp_path, cache):
    original = make_model()
    place_in_cache(cache, "org/cs-backbone", save_repo(original, tmp_path / "repo"), SHA_1)

    model = LoRunModel.from_pretrained("org/cs-backbone")
    assert model.name_or_path == "org/cs-backbone"
    assert model.load_adapter("ratio-25") == "ratio-25"
    assert model.load_adapter("ratio-10") == "ratio-10"
    assert model.list_adapter_sets() == ["ratio-25", "ratio-10"]
    for name in ("ratio-25", "ratio-10"):
        measurement, expected = outputs(original, name)
        model.set_adapter_set(name)
        assert_same_restore(model.restore(measurement), expected, name)
    with original.disable_adapters(), model.disable_adapters():
        measurement = original.physics.measure(torch.rand(1, 1, 16, 16))
        assert_same_restore(model.restore(measurement), original.restore(measurement))


def test_sets_in_their_own_repo_and_revisions(tmp_path, cache):
    original = make_model()
    place_in_cache(cache, "org/cs-backbone", save_repo(original, tmp_path / "bb", sets=()), SHA_1)
    place_in_cache(cache, "org/cs-adapters", save_repo(original, tmp_path / "sets", backbone=False), SHA_2)
    (tmp_path / "v1").mkdir()
    original.save_adapter_set(tmp_path / "v1", "ratio-10")
    place_in_cache(cache, "org/cs-adapters", tmp_path / "v1", SHA_1, ref="v1")

    model = LoRunModel.from_pretrained("org/cs-backbone")
    assert hub.list_adapter_sets("org/cs-adapters") == ["ratio-10", "ratio-25"]
    assert model.list_adapter_sets("org/cs-adapters", revision="v1") == ["ratio-10"]
    model.load_adapter("org/cs-adapters", "ratio-25", revision=SHA_2)
    model.load_adapter("org/cs-adapters", "ratio-10", revision="v1")
    for name in ("ratio-25", "ratio-10"):
        measurement, expected = outputs(original, name)
        model.set_adapter_set(name)
        assert_same_restore(model.restore(measurement), expected, name)
    with pytest.raises(
        FileNotFoundError, match=r"set 'ratio-25' not found in org/cs-adapters \(revision 'v1'\)"
    ):
        hub.resolve_adapter_dir("org/cs-adapters", "ratio-25", revision="v1")


def test_missing_set_names_the_available_ones(tmp_path, cache):
    place_in_cache(cache, "org/cs-backbone", save_repo(make_model(), tmp_path / "repo"), SHA_1)
    model = LoRunModel.from_pretrained("org/cs-backbone")
    with pytest.raises(
        FileNotFoundError,
        match=r"set 'ratio-30' not found in org/cs-backbone .*available: ratio-10, ratio-25",
    ):
        model.load_adapter("ratio-30")
    with pytest.raises(FileNotFoundError, match=r"name the set.*available: ratio-10, ratio-25"):
        model.load_adapter("org/cs-backbone")
    assert model.list_adapter_sets() == []


def test_offline_with_nothing_cached_is_clear(cache):
    model = make_model()
    with pytest.raises(
        FileNotFoundError,
        match=r"'org/missing' \(revision 'main'\) is not in the local Hub cache.*HF_HUB_OFFLINE",
    ):
        model.load_adapter("org/missing", "ratio-25")
    with pytest.raises(FileNotFoundError, match="not in the local Hub cache"):
        hub.list_adapter_sets("org/missing")
    with pytest.raises(FileNotFoundError, match=r"revision 'v9'"):
        hub.download_adapter_set("org/missing", "ratio-25", revision="v9")


def test_bare_set_name_needs_a_source(tmp_path):
    model = make_model()
    with pytest.raises(FileNotFoundError, match="not loaded with from_pretrained"):
        model.load_adapter("ratio-99")
    folder = save_repo(model, tmp_path / "local")
    assert model.list_adapter_sets(folder) == ["ratio-10", "ratio-25"]
    loaded = LoRunModel.from_pretrained(folder)
    assert loaded.load_adapter("ratio-10") == "ratio-10"  # a local backbone's sets beside it
    assert loaded.load_adapter(folder / "ratio-25") == "ratio-25"  # a set folder itself
    with pytest.raises(ValueError, match="invalid adapter set name"):
        hub.download_adapter_set("org/x", "ratio-*")


# ---------------------------------------------------------------- pushing (HfApi intercepted)
def test_push_adapter_set_is_one_commit_that_loads_back(tmp_path, fake_hub):
    original = make_model()
    metrics = {"Set11": {"psnr": 28.5, "ssim": 0.85}, "BSD68": {"psnr": 27.25}}
    info = original.push_adapter_set(
        "org/cs-adapters", "ratio-25", metrics=metrics, base_model="org/cs-backbone"
    )
    assert info.oid == "1".zfill(40)
    assert [repo for repo, _ in fake_hub.created] == ["org/cs-adapters"]
    assert fake_hub.created[0][1]["exist_ok"] is True
    assert len(fake_hub.commits) == 1
    repo_id, operations, kwargs = fake_hub.commits[0]
    assert repo_id == "org/cs-adapters"
    assert added(operations) == sorted(["README.md"] + [f"ratio-25/{f}" for f in SET_FILES])
    assert not [op for op in operations if isinstance(op, CommitOperationDelete)]
    assert "ratio-25" in kwargs["commit_message"]

    checkout = fake_hub.checkout("org/cs-adapters", tmp_path / "checkout")
    original.save_pretrained(tmp_path / "bb")
    model = LoRunModel.from_pretrained(tmp_path / "bb")
    model.load_adapter(checkout, "ratio-25")
    measurement, expected = outputs(original, "ratio-25")
    assert_same_restore(model.restore(measurement), expected)

    meta, body = fake_hub.card("org/cs-adapters")
    assert meta["library_name"] == "lorun-peft"
    assert {"peft", "lora", "lorun", "image-restoration", "compressive-sensing"} <= set(meta["tags"])
    assert meta["base_model"] == "org/cs-backbone"
    assert meta["pipeline_tag"] == "image-to-image"
    assert meta["lorun"]["adapter_sets"]["ratio-25"]["physics"]["ratio"] == 0.25
    (index,) = meta["model-index"]
    found = {
        (r["dataset"]["name"], r["dataset"]["config"], m["type"]): m["value"]
        for r in index["results"]
        for m in r["metrics"]
    }
    assert found == {
        ("Set11", "ratio-25", "psnr"): 28.5,
        ("Set11", "ratio-25", "ssim"): 0.85,
        ("BSD68", "ratio-25", "psnr"): 27.25,
    }
    assert hub.CARD_START in body and hub.CARD_END in body
    assert 'model.load_adapter("org/cs-adapters", "ratio-25")' in body
    assert "| ratio-25 | Set11 | 28.50 | 0.8500 |" in body


def test_second_set_lands_beside_the_first_and_card_is_updated(tmp_path, fake_hub):
    original = make_model()
    original.push_adapter_set(
        "org/cs-adapters", "ratio-25", metrics={"Set11": {"psnr": 28.5}}, base_model="org/cs-backbone"
    )
    readme = fake_hub.repos["org/cs-adapters"]["README.md"].decode()
    fake_hub.repos["org/cs-adapters"]["README.md"] = (readme + "\nHand-written notes.\n").encode()
    fake_hub.repos["org/cs-adapters"]["ratio-10/stage_07/adapter_model.safetensors"] = b"stale"

    original.push_adapter_set("org/cs-adapters", "ratio-10", metrics={"Set11": {"psnr": 26.0}})
    _, operations, _ = fake_hub.commits[1]
    assert added(operations) == sorted(["README.md"] + [f"ratio-10/{f}" for f in SET_FILES])
    deleted = [op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete)]
    assert deleted == ["ratio-10/stage_07/adapter_model.safetensors"]
    assert hub.list_adapter_sets(fake_hub.checkout("org/cs-adapters", tmp_path / "c")) == [
        "ratio-10",
        "ratio-25",
    ]

    meta, body = fake_hub.card("org/cs-adapters")
    assert sorted(meta["lorun"]["adapter_sets"]) == ["ratio-10", "ratio-25"]
    assert meta["base_model"] == "org/cs-backbone"
    configs = {(r["dataset"]["config"], r["metrics"][0]["value"]) for r in meta["model-index"][0]["results"]}
    assert configs == {("ratio-25", 28.5), ("ratio-10", 26.0)}
    assert body.count(hub.CARD_START) == 1 and "Hand-written notes." in body
    (row,) = [line for line in body.splitlines() if line.startswith("| ratio-10 | block_cs (")]
    assert "ratio=0.1" in row and "| 2 | 50 | paper |" in row


def test_push_to_hub_commits_the_clean_backbone(tmp_path, fake_hub):
    original = make_model()
    original.push_to_hub("org/cs-backbone", metrics={"Set11": {"psnr": 27.0, "ssim": 0.8}})
    (repo_id, operations, _) = fake_hub.commits[0]
    assert repo_id == "org/cs-backbone"
    assert added(operations) == ["README.md", "config.json", "model.safetensors"]
    checkout = fake_hub.checkout("org/cs-backbone", tmp_path / "checkout")
    model = LoRunModel.from_pretrained(checkout)
    assert model.mode == "shared" and not model.list_adapter_sets()
    with original.disable_adapters():
        measurement = original.physics.measure(torch.rand(1, 1, 16, 16))
        assert_same_restore(model.restore(measurement), original.restore(measurement))

    meta, body = fake_hub.card("org/cs-backbone")
    assert meta["library_name"] == "lorun-peft" and "base_model" not in meta
    assert {"lorun", "image-restoration", "compressive-sensing"} <= set(meta["tags"])
    assert meta["lorun"]["backbone"]["num_stages"] == 2
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == "Set11"
    assert 'LoRunModel.from_pretrained("org/cs-backbone")' in body

    # save_pretrained(push_to_hub=True) saves locally, then pushes the same way
    original.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="org/cs-backbone-2")
    assert (tmp_path / "local" / "model.safetensors").is_file()
    assert added(fake_hub.commits[-1][1]) == ["README.md", "config.json", "model.safetensors"]
    assert fake_hub.card("org/cs-backbone-2")[0]["library_name"] == "lorun-peft"

    # sets pushed into the backbone's repo: the card stays a backbone card and lists them
    original.push_adapter_set("org/cs-backbone", "ratio-25", metrics={"Set11": {"psnr": 28.0}})
    meta, body = fake_hub.card("org/cs-backbone")
    assert "base_model" not in meta and meta["lorun"]["backbone"]["num_stages"] == 2
    assert {"peft", "lora"} <= set(meta["tags"])
    configs = {r["dataset"].get("config") for r in meta["model-index"][0]["results"]}
    assert configs == {None, "ratio-25"}
    assert 'model.load_adapter("ratio-25")' in body


def test_readme_flow_hub_to_restore_to_push(tmp_path, cache, fake_hub, monkeypatch):
    original = make_model()
    place_in_cache(
        cache, "org/cs-backbone", save_repo(original, tmp_path / "repo", sets=("ratio-25",)), SHA_1
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = LoRunModel.from_pretrained("org/cs-backbone")
    model.load_adapter("ratio-25")
    measurement, expected = outputs(original, "ratio-25")
    assert_same_restore(model.restore(measurement), expected)
    with pytest.raises(OfflineModeIsEnabled, match="HF_HUB_OFFLINE"):
        model.push_adapter_set("org/cs-adapters")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    model.push_adapter_set("org/cs-adapters")  # the active set; base_model from the backbone's Hub id
    meta, _ = fake_hub.card("org/cs-adapters")
    assert meta["base_model"] == "org/cs-backbone" and "model-index" not in meta


def test_bad_metrics_and_sets_are_rejected(fake_hub):
    model = make_model()
    with pytest.raises(ValueError, match="finite number"):
        model.push_adapter_set("org/a", "ratio-25", metrics={"Set11": {"psnr": float("nan")}})
    with pytest.raises(ValueError, match=r"\{dataset: \{metric: value\}\}"):
        model.push_adapter_set("org/a", "ratio-25", metrics={"Set11": 30.0})
    with pytest.raises(ValueError, match="no adapter set 'ratio-50'"):
        model.push_adapter_set("org/a", "ratio-50")
    assert not fake_hub.commits and not fake_hub.created


# ---------------------------------------------------------------- export: a push prepared offline
def test_export_writes_exactly_what_a_push_uploads_and_loads_back(tmp_path, fake_hub, monkeypatch):
    original = make_model()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # exporting needs no network
    folder = hub.export_repo(
        original, tmp_path / "export", "org/cs-model", set_metrics={"ratio-25": {"Set11": {"psnr": 30.5}}}
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    original.push_to_hub("org/cs-model")
    original.push_adapter_set("org/cs-model", "ratio-10")
    original.push_adapter_set("org/cs-model", "ratio-25", metrics={"Set11": {"psnr": 30.5}})
    repo = fake_hub.repos["org/cs-model"]
    uploaded = {path: data for path, data in repo.items() if path != ".gitattributes"}
    exported = {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()
    }
    assert sorted(exported) == sorted(uploaded)  # the same file list ...
    assert exported == uploaded  # ... with the same bytes, the model card included
    model = LoRunModel.from_pretrained(folder)
    assert model.load_adapter("ratio-25") == "ratio-25"
    measurement, expected = outputs(original, "ratio-25")
    assert_same_restore(model.restore(measurement), expected)


def test_export_of_sets_only_and_its_errors(tmp_path, monkeypatch):
    model = make_model()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = hub.export_repo(model, tmp_path / "sets", "org/cs-adapters", sets=["ratio-10"], backbone=False)
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    assert "config.json" not in files and "README.md" in files
    assert {name.split("/")[0] for name in files if "/" in name} == {"ratio-10"}
    with pytest.raises(ValueError, match="is not 'owner/name'"):
        hub.export_repo(model, tmp_path / "x", "org/bad/id")
    with pytest.raises(ValueError, match="no adapter set 'ratio-50'"):
        hub.export_repo(model, tmp_path / "x", "org/ok", sets=["ratio-50"])
    with pytest.raises(ValueError, match="set_metrics names sets that are not exported"):
        hub.export_repo(model, tmp_path / "x", "org/ok", sets=["ratio-10"], set_metrics={"ratio-25": {}})
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.export-*"))


def test_export_never_deletes_what_it_did_not_write(tmp_path, monkeypatch):
    model = make_model()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"is not empty \(1 file\(s\), e.g. notes.txt\)"):
        hub.export_repo(model, folder, "org/x")
    assert (folder / "notes.txt").read_text() == "keep me"
    model.save_pretrained(folder / "bb")
    loaded = LoRunModel.from_pretrained(folder / "bb")
    with pytest.raises(ValueError, match="which replacing it would delete"):
        hub.export_repo(loaded, folder, "org/x", sets=[], overwrite=True)  # the model's own source
    monkeypatch.chdir(folder)
    with pytest.raises(ValueError, match="which replacing it would delete"):
        hub.export_repo(model, ".", "org/x", overwrite=True)  # the working folder
    monkeypatch.chdir(tmp_path)
    hub.export_repo(model, tmp_path / "out", "org/x")
    hub.export_repo(model, tmp_path / "out", "org/x", sets=["ratio-10"], overwrite=True)  # a re-export
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "README.md", "config.json", "model.safetensors", "ratio-10",
    ]  # fmt: skip
