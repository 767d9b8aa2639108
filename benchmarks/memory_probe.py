"""Process-memory measurement shared by the benchmarks (Linux: /proc/self/status and clear_refs).

Each measured configuration runs in a fresh child process with a fixed glibc mmap threshold
(``MALLOC_MMAP_THRESHOLD_``), so freed tensor memory goes back to the OS and the resident set size
(RSS) follows live tensor memory. A child resets the peak counter ``VmHWM`` at its baseline (after
imports, warm-up and data) and reports ``peak - baseline``: what the measured work itself needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable

import torch
from torch import nn

#: Allocations above this many bytes are mmapped (and unmapped when freed) in the children.
MMAP_THRESHOLD = 65536
RESULT_PREFIX = "MEMORY-PROBE-RESULT "


def status_kb(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); ``False`` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakWindow:
    """``with PeakWindow() as w: ...`` then ``w.peak_bytes``: peak RSS in the block minus RSS at entry."""

    def __enter__(self) -> PeakWindow:
        self.start_kb = status_kb("VmRSS")
        self.reset = reset_peak()
        self.earlier_kb = None if self.reset else status_kb("VmHWM")
        self.peak_bytes: int | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        peak = status_kb("VmHWM")
        if self.reset or peak > self.earlier_kb:
            self.peak_bytes = (peak - self.start_kb) * 1024


def tensor_bytes(tensors: Iterable[object]) -> int:
    """Bytes of the distinct tensors in ``tensors`` (others ignored)."""
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def persistent_state_bytes(model: nn.Module | list[nn.Module], opt: torch.optim.Optimizer) -> dict[str, int]:
    """Exact bytes of parameters, gradients and optimizer state (shared tensors counted once)."""
    modules = model if isinstance(model, list) else [model]
    params = [p for m in modules for p in m.parameters()]
    return {
        "parameters": tensor_bytes(params),
        "gradients": tensor_bytes(p.grad for p in params if p.grad is not None),
        "optimizer": tensor_bytes(v for state in opt.state.values() for v in state.values()),
    }


def emit(result: dict) -> None:
    """Child side: hand ``result`` (JSON-serialisable) back to :func:`run_child`."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(argv: list[str], threads: int = 1, timeout: float | None = None) -> dict:
    """Run ``python argv...`` in a fresh process and return what it :func:`emit`-ted.

    ``RuntimeError`` with the child's stderr tail when it fails or emits nothing.
    """
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "OMP_NUM_THREADS": str(threads),
    }
    proc = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(
        f"measuring process {' '.join(argv)} exited with code {proc.returncode} and no result:\n"
        f"{proc.stderr[-2000:]}"
    )
