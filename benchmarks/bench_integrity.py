"""Load time of the shipped models with and without the sha256 check of their weight files.

For each shipped task, loads the backbone and every adapter set (``LoRunModel.from_pretrained`` +
``load_adapter``) with ``verify_integrity=True`` and ``False``, interleaved in one process so that both
see the same machine state, and reports the median of each and their ratio (target: the check costs
< 5 % of the load time). Also times the hashing alone (``file_sha256`` of every weight file).

    OMP_NUM_THREADS=1 python benchmarks/bench_integrity.py --repeats 7 \
        --out benchmarks/results/integrity_load.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from lorun_peft import LoRunModel
from lorun_peft.evaluation.report import write_atomic
from lorun_peft.integrity import file_sha256
from lorun_peft.pretrained import list_pretrained, pretrained_dir


def _load_seconds(folder: Path, sets: list[str], verify: bool) -> float:
    start = time.perf_counter()
    model = LoRunModel.from_pretrained(folder / "backbone", verify_integrity=verify)
    for name in sets:
        model.load_adapter(folder / "adapters" / name, verify_integrity=verify)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="loads per setting and task (after a warm-up)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = {}
    for task, sets in list_pretrained().items():
        folder = pretrained_dir(task)
        files = sorted(folder.rglob("*.safetensors"))
        _load_seconds(folder, sets, True), _load_seconds(folder, sets, False)  # warm-up: file cache, imports
        timings = {True: [], False: []}
        for _ in range(args.repeats):
            for verify in (True, False):
                timings[verify].append(_load_seconds(folder, sets, verify))
        start = time.perf_counter()
        for path in files:
            file_sha256(path)
        hashing = time.perf_counter() - start
        checked, unchecked = statistics.median(timings[True]), statistics.median(timings[False])
        results[task] = {
            "sets": len(sets),
            "weight_files": len(files),
            "megabytes": round(sum(path.stat().st_size for path in files) / 1e6, 2),
            "load_s_verified": round(checked, 4),
            "load_s_unverified": round(unchecked, 4),
            "ratio": round(checked / unchecked, 3),
            "hashing_s": round(hashing, 4),
            "hashing_share_of_load": round(hashing / unchecked, 4),
        }
        print(
            f"{task:6s} {len(sets)} sets {results[task]['megabytes']:6.2f} MB  "
            f"load verified {checked:.3f} s  unverified {unchecked:.3f} s  ratio {checked / unchecked:.3f}  "
            f"hashing alone {hashing:.4f} s "
            f"({100 * hashing / unchecked:.1f} % of the load)"
        )
    if args.out:
        write_atomic(args.out, json.dumps({"repeats": args.repeats, "tasks": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
