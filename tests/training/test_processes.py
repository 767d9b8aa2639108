"""Out-of-process runs: 2 gloo processes under ``accelerate launch``, and SIGKILL + resume.

Both launch ``standin_train_script.py`` with a timeout; a hang or an abort at exit fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lorun_peft.training import list_checkpoints, read_trainer_state
from lorun_peft.training.checkpoint import TMP_PREFIX

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "standin_train_script.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"


def _env(port: int | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    if port is not None:
        env["MASTER_PORT"] = str(port)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_with_output(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run`` that, on a timeout, kills the launcher and fails with what it printed so far."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _kill_workers(command)  # the launcher starts its workers in sessions of their own
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a worker still holds the pipes
            out, err = "", ""
        pytest.fail(f"timed out after {timeout} s; stdout:\n{out[-3000:]}\nstderr:\n{err[-5000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _kill_workers(command: list[str]) -> None:
    """SIGKILL every process whose command line holds this run's unique ``--output-dir``."""
    marker = command[command.index("--output-dir") + 1].encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _report(folder: Path, rank: int = 0) -> dict:
    return json.loads((folder / f"rank{rank}.json").read_text())


@pytest.mark.skipif(not ACCELERATE.exists(), reason="the venv has no accelerate launcher")
def test_two_gloo_processes_train_both_phases_and_exit_cleanly(tmp_path):
    port = _free_port()
    command = [
        str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        str(SCRIPT), "--output-dir", str(tmp_path / "run"), "--report-dir", str(tmp_path / "report"),
        "--steps", "6", "--checkpoint-every", "3", "--phase2", "--dropout", "0.1", "--physics-sampler",
    ]  # fmt: skip
    done = _run_with_output(command, _env(port), timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    rank0, rank1 = _report(tmp_path / "report", 0), _report(tmp_path / "report", 1)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["first_batch_sha256"] != rank1["first_batch_sha256"]  # each rank sees its own data
    assert rank0["weights_sha256"] == rank1["weights_sha256"]  # yet gradients were all-reduced
    assert rank0["global_step"] == rank1["global_step"] == 6
    assert rank0["losses"] == rank1["losses"]  # logged loss is the mean over ranks
    # the physics sampler draws the same operator on every rank (12 = 6 steps x 2 micro-batches)
    assert len(rank0["physics_draws"]) == 12 and len(set(rank0["physics_draws"])) == 12
    assert rank0["physics_draws"] == rank1["physics_draws"]
    checkpoint = tmp_path / "run" / "checkpoint-6"
    assert {"rng_state_0.safetensors", "rng_state_1.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    assert read_trainer_state(checkpoint)["num_processes"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # one writer, scheduler stepped once per step
    assert records[0]["lr"] > records[-1]["lr"] > 0


def _train(tmp_path: Path, name: str, *extra: str) -> subprocess.Popen:
    output_dir = tmp_path / ("full" if name == "full" else "run")
    command = [
        sys.executable, str(SCRIPT), "--output-dir", str(output_dir),
        "--report-dir", str(tmp_path / f"report-{name}"), "--steps", "30", "--checkpoint-every", "3",
        "--dropout", "0.1", *extra,
    ]  # fmt: skip
    return subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    full = _train(tmp_path, "full")
    _, err = full.communicate(timeout=240)
    assert full.returncode == 0, err[-4000:]

    victim = _train(tmp_path, "killed", "--sleep", "0.05")
    run = tmp_path / "run"
    deadline = time.monotonic() + 240
    while not (run / "checkpoint-9").is_dir():
        assert victim.poll() is None, victim.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    time.sleep(0.3)  # land somewhere later in training, possibly in the middle of a checkpoint write
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "report-killed" / "rank0.json").exists()  # it really died before the end

    survivors = list_checkpoints(run)
    assert survivors and survivors[-1].name != "checkpoint-30"
    for checkpoint in survivors:  # every published checkpoint is whole
        assert read_trainer_state(checkpoint)["step"] == int(checkpoint.name.split("-")[1])
    assert not any(p.name.startswith(TMP_PREFIX) for p in survivors)  # temp dirs are never checkpoints

    resumed = _train(tmp_path, "resumed", "--resume", "latest")
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-4000:]
    report = _report(tmp_path / "report-resumed")
    assert report["resumed_from"] == survivors[-1].name
    assert report["global_step"] == 30
    # Two processes may be given different oneDNN kernels: the same weights up to float rounding.
    reference = _report(tmp_path / "report-full")["weights"]
    assert report["weights"].keys() == reference.keys()
    for name, values in report["weights"].items():
        torch.testing.assert_close(torch.tensor(values), torch.tensor(reference[name]), rtol=1e-5, atol=1e-6)
