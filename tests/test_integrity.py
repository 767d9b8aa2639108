"""sha256 records of weight files: written on save, verified on load, refused when a file changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_hub import make_model

from lorun_peft import LoRunModel
from lorun_peft.integrity import BACKBONE_CHECKSUM_KEY, SET_CHECKSUM_KEY, IntegrityError, file_sha256
from lorun_peft.pretrained import list_pretrained, pretrained_dir, save_pretrained_assets

torch.set_num_threads(1)


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[LoRunModel, Path, Path]:
    model = make_model()
    model.save_pretrained(tmp_path / "backbone")
    model.save_adapter_set(tmp_path / "sets", "ratio-25")
    return model, tmp_path / "backbone", tmp_path / "sets" / "ratio-25"


def test_save_records_the_sha256_of_every_weight_file(saved) -> None:
    _, backbone, set_dir = saved
    config = json.loads((backbone / "config.json").read_text())
    assert config[BACKBONE_CHECKSUM_KEY] == {"model.safetensors": file_sha256(backbone / "model.safetensors")}
    info = json.loads((set_dir / "adapter_set.json").read_text())
    files = ["stage_00/adapter_model.safetensors", "stage_01/adapter_model.safetensors", "task.safetensors"]
    assert info[SET_CHECKSUM_KEY] == {name: file_sha256(set_dir / name) for name in files}
    loaded = LoRunModel.from_pretrained(backbone)
    assert BACKBONE_CHECKSUM_KEY not in loaded.config.to_dict(), "the record is not a model setting"


def test_a_flipped_bit_in_the_backbone_weights_is_refused_naming_the_file(saved) -> None:
    _, backbone, _ = saved
    flip_last_byte(backbone / "model.safetensors")
    with pytest.raises(IntegrityError, match=r"model\.safetensors is damaged or was changed after saving"):
        LoRunModel.from_pretrained(backbone)
    # The opt-out loads the edited file (the flipped bit is in the last tensor's data).
    assert LoRunModel.from_pretrained(backbone, verify_integrity=False).num_stages == 2


@pytest.mark.parametrize("file", ["stage_00/adapter_model.safetensors", "task.safetensors"])
def test_a_flipped_bit_in_a_set_is_refused_and_the_model_is_untouched(saved, file: str) -> None:
    model, backbone, set_dir = saved
    flip_last_byte(set_dir / file)
    target = LoRunModel.from_pretrained(backbone)
    before = {key: value.clone() for key, value in target.state_dict().items()}
    with pytest.raises(IntegrityError, match=rf"{file} is damaged or was changed after saving"):
        target.load_adapter(set_dir)
    assert target.list_adapter_sets() == [] and target.state_dict().keys() == before.keys()
    assert all(torch.equal(value, before[key]) for key, value in target.state_dict().items())
    assert target.load_adapter(set_dir, verify_integrity=False) == "ratio-25"


def test_a_record_that_does_not_cover_a_weight_file_is_refused(saved) -> None:
    _, backbone, set_dir = saved
    info_file = set_dir / "adapter_set.json"
    info = json.loads(info_file.read_text())
    del info[SET_CHECKSUM_KEY]["task.safetensors"]
    info_file.write_text(json.dumps(info))
    with pytest.raises(IntegrityError, match=r"task\.safetensors has no recorded sha256"):
        LoRunModel.from_pretrained(backbone).load_adapter(set_dir)
    info[SET_CHECKSUM_KEY] = "not a mapping"
    info_file.write_text(json.dumps(info))
    with pytest.raises(IntegrityError, match="not a \\{file: sha256\\} mapping"):
        LoRunModel.from_pretrained(backbone).load_adapter(set_dir)


@pytest.mark.parametrize("damage", ["truncated", "header", "appended"])
def test_corrupt_backbone_weights_without_a_record_are_one_clear_error(saved, damage: str) -> None:
    """The SafetensorError of a damaged file becomes a ValueError naming the folder (no record to check)."""
    _, backbone, _ = saved
    config_file = backbone / "config.json"
    config = json.loads(config_file.read_text())
    del config[BACKBONE_CHECKSUM_KEY]
    config_file.write_text(json.dumps(config))
    weights = backbone / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "header":
        data[10] ^= 0x40  # inside the JSON header
    else:
        data += b"\x00" * 7
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"cannot be read .* damaged or truncated"):
        LoRunModel.from_pretrained(backbone)


def test_a_truncated_config_is_one_clear_error(saved) -> None:
    _, backbone, _ = saved
    text = (backbone / "config.json").read_text()
    (backbone / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"config\.json is not readable JSON .* damaged or truncated"):
        LoRunModel.from_pretrained(backbone)


def test_float16_assets_record_the_digests_of_the_files_they_ship(tmp_path: Path) -> None:
    """The float16 cast rewrites the files after saving: the records must follow, or nothing loads."""
    model = make_model()
    task_dir = save_pretrained_assets(model, "cs", root=tmp_path, storage_dtype=torch.float16)
    loaded = LoRunModel.from_pretrained(task_dir / "backbone")
    assert loaded.load_adapter("ratio-25") == "ratio-25"
    flip_last_byte(task_dir / "adapters" / "ratio-25" / "stage_01" / "adapter_model.safetensors")
    with pytest.raises(IntegrityError, match="stage_01"):
        LoRunModel.from_pretrained(task_dir / "backbone").load_adapter("ratio-25")


def test_every_shipped_weight_file_matches_its_record() -> None:
    shipped = list_pretrained()
    assert set(shipped) == {"cs", "sr", "cassi", "inpainting"}
    for task, sets in shipped.items():
        folder = pretrained_dir(task)
        config = json.loads((folder / "backbone" / "config.json").read_text())
        assert config[BACKBONE_CHECKSUM_KEY] == {
            "model.safetensors": file_sha256(folder / "backbone" / "model.safetensors")
        }, task
        for name in sets:
            set_dir = folder / "adapters" / name
            recorded = json.loads((set_dir / "adapter_set.json").read_text())[SET_CHECKSUM_KEY]
            weight_files = sorted(str(path.relative_to(set_dir)) for path in set_dir.rglob("*.safetensors"))
            assert sorted(recorded) == weight_files, (task, name)
            assert all(file_sha256(set_dir / file) == digest for file, digest in recorded.items())
