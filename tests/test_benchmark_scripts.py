"""The comparison benchmark's --only / collect path, on --smoke runs (no data needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _compare(tmp_path: Path, only: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, str(REPO / "benchmarks" / "run_task_comparisons.py"), "--task", "cs", "--steps", "3",
        "--smoke", "--output-dir", str(tmp_path / "cmp"), "--only", only,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORUN_DATA_DIR": str(tmp_path / "no-data")}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_variants_run_in_separate_processes_and_collect_into_one_table(tmp_path):
    (tmp_path / "no-data").mkdir()
    first = _compare(tmp_path, "block")
    assert first.returncode == 0, first.stderr[-3000:]
    table = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert list(table["rows"]) == ["block"]
    second = _compare(tmp_path, "lorun")
    assert second.returncode == 0, second.stderr[-3000:]
    table = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert list(table["rows"]) == ["block", "lorun"]
    lorun = table["rows"]["lorun"]
    assert lorun["trainable_params"] < lorun["stored_params"] and len(lorun["commands"]) == 3
    markdown = (tmp_path / "cmp" / "results.md").read_text()
    assert "| Block-9 |" in markdown and "| LoRun-9 |" in markdown and "| Block-9-share |" not in markdown


def test_unknown_variant_is_refused(tmp_path):
    done = _compare(tmp_path, "block,nope")
    assert done.returncode == 2 and "unknown variants ['nope']" in done.stderr
    assert not (tmp_path / "cmp").exists()


def test_training_speed_benchmark_measures_every_configuration_in_its_own_process(tmp_path):
    output = tmp_path / "speed.json"
    command = [
        sys.executable, str(REPO / "benchmarks" / "bench_training_speed.py"), "--setups", "tiny",
        "--settings", "fp32,cl+ckpt,bf16+cl+ckpt", "--steps", "3", "--rounds", "1", "--infer-reps", "1",
        "--output", str(output),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(output.read_text())
    grid = results["grid"]
    settings = ("fp32", "bf16+cl+ckpt") if results["cpu_native_bf16"] else ("fp32", "cl+ckpt")
    assert sorted(grid) == sorted(f"tiny/{v}/{s}" for v in ("block", "shared", "lorun") for s in settings)
    assert all(r["step_s"] > 0 and r["forward_s"] > 0 for r in grid.values())
    state = {v: grid[f"tiny/{v}/fp32"]["state_bytes"] for v in ("block", "shared", "lorun")}
    assert state["block"] > state["shared"] and state["lorun"] > state["shared"]  # K copies; + adapters
    cs = results["physics_precision"]["CS 25 % (b=32) Phi x"]
    assert cs["fp32"]["A_rel_error"] < 1e-5 < cs["bf16 autocast"]["A_rel_error"]
    assert f"| lorun | {settings[1]} |" in done.stdout
