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


def _load_benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(folder: Path, steps: int, seconds: float, evals: dict[int, float]) -> None:
    folder.mkdir(parents=True)
    (folder / "run_summary.json").write_text(json.dumps({"steps": steps, "train_time_s": seconds}))
    lines = [json.dumps({"step": s, "loss": 0.1}) for s in range(10, steps + 1, 10)]
    lines += [json.dumps({"step": s, "eval": {"psnr": p, "ssim": 0.9}}) for s, p in evals.items()]
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n")


def test_convergence_plot_chains_lorun_phases_in_steps_and_time(tmp_path):
    plot = _load_benchmark("plot_convergence")
    _fake_run(tmp_path / "block", 40, 80.0, {20: 30.0, 40: 31.0})
    _fake_run(tmp_path / "p1", 30, 30.0, {30: 29.0})
    _fake_run(tmp_path / "p2", 10, 20.0, {10: 30.5})
    out = tmp_path / "fig.png"
    data = plot.main(
        [
            "--title",
            "t",
            "--out",
            str(out),
            f"Block={tmp_path / 'block'}",
            f"LoRun={tmp_path / 'p1'},{tmp_path / 'p2'}",
        ]
    )
    assert data["Block"] == [(20, 40.0, 30.0), (40, 80.0, 31.0)]
    assert data["LoRun"] == [(30, 30.0, 29.0), (40, 50.0, 30.5)]  # phase 2 after phase 1's 30 steps, 30 s
    assert out.stat().st_size > 1000 and json.loads(out.with_suffix(".json").read_text())["LoRun"][1] == [
        40,
        50.0,
        30.5,
    ]


def test_storage_benchmark_scores_float32_against_float16(tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from test_pretrained import build_tiny_assets

    from lorun_peft.data.samples import load_sample_image

    build_tiny_assets(tmp_path / "assets")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for name in ("camera", "astronaut"):
        array = (load_sample_image(name, "L")[0, :64, :64] * 255).round().byte().numpy()
        Image.fromarray(array).save(images / f"{name}.png")
    bench = _load_benchmark("bench_storage_dtype")
    result = bench.main(
        [
            "cs",
            "--root",
            str(tmp_path / "assets"),
            "--test-data",
            str(images),
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert set(result["psnr_float32"]) == {"ratio-10", "ratio-25", "ratio-50"}
    assert result["bytes_float16"] < 0.6 * result["bytes_float32"]
    assert result["max_abs_change_db"] == max(
        abs(result["psnr_float16"][k] - result["psnr_float32"][k]) for k in result["psnr_float32"]
    )
    assert result["max_abs_change_db"] < 0.05
