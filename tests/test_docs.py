"""Docs that run: every ```python block of README.md and docs/*.md is executed, so a snippet that rots fails.

How it works
------------
* Collection: every fence whose info string is ``python`` (or ``py``/``python3``) in README.md and
  docs/*.md is one test, ``test_doc_block_runs[<page>:<n>]`` (``n`` counts the page's Python blocks from
  1, e.g. ``docs/hub.md:1``). Run one with
  ``pytest "tests/test_docs.py::test_doc_block_runs[docs/hub.md:1]"``.
* Where: one worker process (``python tests/test_docs.py --worker``) runs the blocks for the whole
  module, so torch and transformers are imported once. It is started with ``HF_HUB_OFFLINE=1``,
  ``HF_DATASETS_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` (read when huggingface_hub is imported), an
  empty Hub cache and ``HF_HOME`` in a temporary folder, no ``HF_TOKEN``, ``OMP_NUM_THREADS=1`` and
  ``torch.set_num_threads(1)``, and the matplotlib Agg backend. Its sockets refuse every connection
  that is not a Unix socket, and any attempt fails the block even if a library swallowed the error.
  A block that runs longer than ``TIMEOUT_S`` (env ``LORUN_DOCS_TIMEOUT``) kills the worker and fails;
  the next block starts a fresh worker.
* Each block runs in a fresh namespace (``__name__ == "__main__"``) with the working directory a new
  empty ``<tmp>/work`` folder, seeded (``torch.manual_seed(0)``, ``random``, ``numpy``). Tracebacks name
  the page and its line number (``File ".../docs/hub.md", line 31``).
* ``RUNS_AFTER``: the blocks that continue an earlier block of their page (a reader pastes them in
  order) first run those blocks, in the same namespace and folder. All other blocks stand alone.
* ``LAYOUTS``: what a block reads from disk that it does not make itself is laid out in its temporary
  folder from files the project ships (``STAND_INS`` says what stands in for what): ``../shared/data``
  paths get small stand-ins made from the shipped sample images, ``runs/...`` paths written by an
  earlier training get copies of the shipped models. The project's ``../shared`` is never read.
* ``FAKE_HUB``: blocks that push to the Hub run against an in-memory Hub (``HfApi.create_repo``,
  ``create_branch``, ``list_repo_files``, ``hf_hub_download`` and ``create_commit`` replaced, and
  ``huggingface_hub.constants.HF_HUB_OFFLINE`` off for that block only, since a push refuses to start
  offline); the sockets stay closed.
* ``FAST``: the long blocks (training runs of minutes) run with the text substitutions listed there
  (fewer steps). Each substitution must still match its block, and each such block's page carries a
  note next to it with the block's real run time on 2 CPU cores; ``LORUN_DOCS_FULL=1`` runs them
  unshortened (and without the time limit).
* ``CANNOT_RUN`` (skipped, with the reason) and ``KNOWN_BROKEN`` (run as strict ``xfail``: a fix makes
  the test fail until the entry is removed) list the exceptions. Every id in every table must name an
  existing block, so no table can outlive the docs.

Per page: README.md (3 blocks: 1 alone, fast; 2 alone; 3 after 2, fake Hub), docs/quickstart.md (4
blocks: 1 alone; 2 alone, fast; 3 alone; 4 after 3, fake Hub), docs/hub.md (2 blocks: 1 alone; 2 after 1,
fake Hub), docs/stage_lora.md (2 blocks: 2 after 1, it loads the files 1 saved), and every other page:
each block alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
PAGES = ["README.md", *sorted(f"docs/{path.name}" for path in (REPO / "docs").glob("*.md"))]
PYTHON_FENCES = ("python", "py", "python3")
FULL = os.environ.get("LORUN_DOCS_FULL", "") not in ("", "0")
TIMEOUT_S = None if FULL else float(os.environ.get("LORUN_DOCS_TIMEOUT", "180"))

#: Blocks that continue earlier blocks of their page: those run first, in the same namespace and folder.
RUNS_AFTER: dict[str, tuple[str, ...]] = {
    "README.md:3": ("README.md:1",),  # pushes the `model` that block 1 loaded
    "docs/quickstart.md:4": ("docs/quickstart.md:3",),  # the same two blocks as in the README
    "docs/hub.md:2": ("docs/hub.md:1",),  # adds a set to block 1's `model` and publishes it
    "docs/stage_lora.md:2": ("docs/stage_lora.md:1",),  # loads the folders block 1 saved
}

#: Fast variants of the long blocks: text substitutions applied before the block runs. The real run time
#: of each is in a note beside the block in its page (see test_long_blocks_note_their_run_time).
FAST: dict[str, dict[str, str]] = {
    "README.md:2": {"max_steps=1000": "max_steps=2", "max_steps=500": "max_steps=2"},
    "docs/quickstart.md:2": {"max_steps=1000": "max_steps=2", "max_steps=500": "max_steps=2"},
    "docs/training.md:1": {"max_steps=1000": "max_steps=2", "max_steps=500": "max_steps=2"},
}

#: Blocks that push to the Hub: run against an in-memory Hub (the sockets stay closed).
FAKE_HUB = frozenset({"README.md:3", "docs/quickstart.md:4", "docs/hub.md:2"})

#: What stands in for the files a block reads but does not make (built by the worker, see _MAKERS).
STAND_INS: dict[str, str] = {
    "../shared/data/Set11": "3 gray 128x128 PNG crops of the shipped sample images",
    "../shared/data/Train400": "4 gray 180x180 PNG crops of the shipped sample images",
    "../shared/data/CASSI/cubes": "cloth.npz (256x256) and stuffed_toys.npz (512x512): 31-band uint16 "
    "CAVE-layout cubes made from shipped RGB images (lorun_peft.tasks.synthetic_cube)",
    "../shared/data/CASSI/simulation/mask.mat": "a random 256x256 float mask (tasks.synthetic_mask)",
    "runs/cs/backbone": "a copy of the shipped CS backbone (lorun_peft/assets/pretrained/cs/backbone)",
    "runs/cs/sets/r10": "the output folder of a ratio-10 phase-2 run: a copy of the shipped set ratio-10",
    "runs/cs/sets/r25": "the output folder of a ratio-25 phase-2 run: a copy of the shipped set ratio-25",
    "runs/cs/sets/r50": "the output folder of a ratio-50 phase-2 run: a copy of the shipped set ratio-50",
}

#: Block -> the STAND_INS paths laid out around its working folder.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "docs/data.md:1": ("../shared/data/Train400", "../shared/data/Set11"),
    "docs/data.md:2": ("../shared/data/CASSI/cubes",),
    "docs/evaluation.md:1": ("runs/cs/backbone", "runs/cs/sets/r25", "../shared/data/Set11"),
    "docs/physics.md:2": ("../shared/data/CASSI/simulation/mask.mat",),
    "docs/pretrained.md:4": ("runs/cs/backbone", "runs/cs/sets/r10", "runs/cs/sets/r25", "runs/cs/sets/r50"),
    "docs/training.md:1": ("../shared/data/Set11",),
}

#: Blocks that cannot run at all: skipped, with the reason.
CANNOT_RUN: dict[str, str] = {}

#: Blocks that fail on pages maintained elsewhere (docs/pretrained.md, results.md, reliability.md): they run
#: and are expected to fail (strict xfail), so once the page is fixed this test fails until the entry goes.
KNOWN_BROKEN: dict[str, str] = {}


# ---------------------------------------------------------------------------------------- collection
@dataclass(frozen=True)
class Block:
    id: str  # "<page>:<n>"
    page: str
    line: int  # 1-based line of the first code line in the page
    code: str


def collect_blocks(pages: list[str] = PAGES) -> list[Block]:
    """Every Python block of ``pages``, in page order."""
    blocks = []
    for page in pages:
        lines = (REPO / page).read_text(encoding="utf-8").splitlines()
        count, i = 0, 0
        while i < len(lines):
            opening = re.match(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)", lines[i])
            if opening is None:
                i += 1
                continue
            indent, fence, info = opening.groups()
            body, i = [], i + 1
            while i < len(lines) and not re.match(rf"^\s*{re.escape(fence)}\s*$", lines[i]):
                body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
                i += 1
            if info.lower() in PYTHON_FENCES:
                count += 1
                start = i - len(body) + 1
                blocks.append(Block(f"{page}:{count}", page, start, "\n".join(body) + "\n"))
            i += 1
    return blocks


BLOCKS = collect_blocks()
BLOCKS_BY_ID = {block.id: block for block in BLOCKS}


def runnable_code(block: Block) -> str:
    """The block's code with its FAST substitutions (none with LORUN_DOCS_FULL=1)."""
    code = block.code
    if not FULL:
        for old, new in FAST.get(block.id, {}).items():
            code = code.replace(old, new)
    return code


# -------------------------------------------------------------------------------- the worker (parent)
class DocWorker:
    """The parent's handle on the worker process: one request (a chain of blocks) at a time."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log_path = home / "worker.log"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LORUN_", "HUGGING"))}
        hf_home = self.home / "hf"
        env.update(
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HOME=str(hf_home),
            HF_HUB_CACHE=str(hf_home / "hub"),
            HF_DATASETS_CACHE=str(hf_home / "datasets"),
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            MPLBACKEND="Agg",
            PYTHONDONTWRITEBYTECODE="1",
        )
        return env

    def start(self) -> None:
        (self.home / "hf" / "hub").mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (the worker owns it)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=self.home,
            env=self._env(),
            text=True,
        )
        log.close()
        self.lines = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self.lines), daemon=True).start()

    @staticmethod
    def _read(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log_tail(self, chars: int = 3000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-chars:]

    def run(self, request: dict, timeout: float | None) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            error = f"timed out after {timeout:.0f} s (LORUN_DOCS_TIMEOUT)"
            return {"ok": False, "error": error, "output": ""}
        if line is None:
            self.stop()
            return {"ok": False, "error": "the worker process died:\n" + self.log_tail(), "output": ""}
        return json.loads(line)


@pytest.fixture(scope="module")
def doc_worker(tmp_path_factory):
    worker = DocWorker(tmp_path_factory.mktemp("doc-worker"))
    yield worker
    worker.stop()


# ------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_doc_block_runs(block: Block, doc_worker: DocWorker, tmp_path: Path) -> None:
    if block.id in CANNOT_RUN:
        pytest.skip(f"cannot run: {CANNOT_RUN[block.id]}")
    chain = [BLOCKS_BY_ID[name] for name in RUNS_AFTER.get(block.id, ())] + [block]
    work = tmp_path / "work"
    work.mkdir()
    request = {
        "cwd": str(work),
        "layout": sorted({path for part in chain for path in LAYOUTS.get(part.id, ())}),
        "blocks": [
            {
                "id": part.id,
                "path": str(REPO / part.page),
                "line": part.line,
                "code": runnable_code(part),
                "fake_hub": part.id in FAKE_HUB,
            }
            for part in chain
        ],
    }
    result = doc_worker.run(request, TIMEOUT_S)
    ok = result["ok"] and not result.get("network")
    if block.id in KNOWN_BROKEN:
        if ok:
            pytest.fail(f"{block.id} runs now: remove it from KNOWN_BROKEN ({KNOWN_BROKEN[block.id]})")
        pytest.xfail(KNOWN_BROKEN[block.id])
    failed = result.get("failed_block") or block.id
    where = "" if failed == block.id else f" (in {failed}, which runs before it)"
    assert result["ok"], (
        f"{block.id} (line {block.line}) failed{where}:\n{result['error']}\n"
        f"--- its output ---\n{result['output']}"
    )
    assert not result.get("network"), f"{block.id} tried to reach the network: {result['network']}"


def test_worker_is_offline_single_threaded_and_guarded(doc_worker: DocWorker, tmp_path: Path) -> None:
    """The worker's set-up itself: offline Hub, one thread, and a refused, reported connection attempt."""
    code = (
        "import socket, torch\n"
        "from huggingface_hub import constants\n"
        "assert constants.HF_HUB_OFFLINE and torch.get_num_threads() == 1\n"
        "try:\n"
        "    socket.create_connection(('huggingface.co', 443), timeout=5)\n"
        "except OSError:\n"
        "    pass  # a library that swallows the error is still caught below\n"
    )
    block = {"id": "guard", "path": str(tmp_path / "guard.py"), "line": 1, "code": code, "fake_hub": False}
    result = doc_worker.run({"cwd": str(tmp_path), "layout": [], "blocks": [block]}, TIMEOUT_S)
    assert result["ok"], result["error"]
    assert result["network"] == ["resolve 'huggingface.co'"]


def test_tables_name_existing_blocks() -> None:
    """Every id in every table names a block that exists, so no entry can outlive its block."""
    tables = {
        "RUNS_AFTER": list(RUNS_AFTER) + [name for names in RUNS_AFTER.values() for name in names],
        "FAST": list(FAST),
        "FAKE_HUB": list(FAKE_HUB),
        "LAYOUTS": list(LAYOUTS),
        "CANNOT_RUN": list(CANNOT_RUN),
        "KNOWN_BROKEN": list(KNOWN_BROKEN),
    }
    missing = {table: [name for name in names if name not in BLOCKS_BY_ID] for table, names in tables.items()}
    assert not any(missing.values()), f"entries naming no Python block of the docs: {missing}"
    for name, earlier in RUNS_AFTER.items():
        block = BLOCKS_BY_ID[name]
        for other in map(BLOCKS_BY_ID.get, earlier):
            assert other.page == block.page and other.line < block.line, (name, other.id)
    for name, paths in LAYOUTS.items():
        assert set(paths) <= set(STAND_INS), (name, set(paths) - set(STAND_INS))
    assert set(STAND_INS) == set(_MAKERS), set(STAND_INS) ^ set(_MAKERS)
    assert not set(CANNOT_RUN) & set(KNOWN_BROKEN)


def test_fast_substitutions_still_match() -> None:
    """Each FAST substitution changes its block: a block whose text moved on must get a new mapping."""
    stale = {
        name: [old for old in substitutions if old not in BLOCKS_BY_ID[name].code]
        for name, substitutions in FAST.items()
        if name in BLOCKS_BY_ID
    }
    assert not any(stale.values()), f"FAST substitutions that no longer match their block: {stale}"


def test_long_blocks_note_their_run_time() -> None:
    """Beside each long block (within 3 lines before or after) its page notes the run time on 2 CPU cores."""
    for name in FAST:
        block = BLOCKS_BY_ID[name]
        lines = (REPO / block.page).read_text(encoding="utf-8").splitlines()
        end = block.line + block.code.count("\n")
        around = "\n".join(lines[max(0, block.line - 5) : block.line - 1] + lines[end : end + 3])
        assert "2 CPU cores" in around and "tests/test_docs.py" in around, (
            f"{name}: no run-time note ('... on 2 CPU cores ... tests/test_docs.py ...') beside the block"
        )


def test_every_page_with_python_is_collected() -> None:
    pages = {block.page for block in BLOCKS}
    for page in PAGES:
        text = (REPO / page).read_text(encoding="utf-8")
        if re.search(r"^\s*```\s*python\s*$", text, re.MULTILINE):
            assert page in pages, page
    assert "README.md" in pages and len(BLOCKS) >= 20


# ------------------------------------------------------------------------------ the worker (subprocess)
def _copy_shipped(relative: str):
    def make(target: Path) -> None:
        import shutil

        from lorun_peft.pretrained import pretrained_root

        shutil.copytree(pretrained_root() / relative, target)

    return make


def _gray_crops(count: int, size: int):
    def make(target: Path) -> None:
        from PIL import Image

        from lorun_peft.data import load_sample_image

        target.mkdir(parents=True)
        for name in ("camera", "brick", "coffee", "astronaut")[:count]:
            image = load_sample_image(name, "L")[0, :size, :size]
            Image.fromarray((image * 255).round().byte().numpy(), mode="L").save(target / f"{name}.png")

    return make


def _cubes(target: Path) -> None:
    import numpy as np

    from lorun_peft.data import CAVE_WAVELENGTHS_31, load_sample_image
    from lorun_peft.tasks import synthetic_cube

    target.mkdir(parents=True)
    for name, image, size in (("cloth", "coffee", 256), ("stuffed_toys", "astronaut", 512)):
        rgb = load_sample_image(image, "RGB")[:, :size, :size]
        cube = synthetic_cube(rgb, 31).permute(1, 2, 0).numpy()  # rows x cols x bands, as the files store
        np.savez(
            target / f"{name}.npz",
            cube=np.round(cube * 65535).astype(np.uint16),
            wavelengths_nm=np.asarray(CAVE_WAVELENGTHS_31, dtype=np.float32),
            scale=np.float32(65535),
        )


def _mask(target: Path) -> None:
    import scipy.io

    from lorun_peft.tasks import synthetic_mask

    target.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(target, {"mask": synthetic_mask(256).numpy()})


def _set_run_folder(name: str):
    def make(target: Path) -> None:
        target.mkdir(parents=True)
        _copy_shipped(f"cs/adapters/{name}")(target / name)

    return make


_MAKERS = {
    "../shared/data/Set11": _gray_crops(3, 128),
    "../shared/data/Train400": _gray_crops(4, 180),
    "../shared/data/CASSI/cubes": _cubes,
    "../shared/data/CASSI/simulation/mask.mat": _mask,
    "runs/cs/backbone": _copy_shipped("cs/backbone"),
    "runs/cs/sets/r10": _set_run_folder("ratio-10"),
    "runs/cs/sets/r25": _set_run_folder("ratio-25"),
    "runs/cs/sets/r50": _set_run_folder("ratio-50"),
}


class _NetworkGuard:
    """Refuses every socket connection but Unix sockets, and remembers each attempt."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def install(self) -> None:
        import socket

        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
        guard = self

        def refuse(what: str) -> OSError:
            guard.attempts.append(what)
            return ConnectionRefusedError(f"tests/test_docs.py blocks network access ({what})")

        def connect(sock, address):
            if sock.family == getattr(socket, "AF_UNIX", None):
                return real_connect(sock, address)
            raise refuse(f"connect {address!r}")

        def connect_ex(sock, address):
            if sock.family == getattr(socket, "AF_UNIX", None):
                return real_connect_ex(sock, address)
            raise refuse(f"connect {address!r}")

        def getaddrinfo(host, *args, **kwargs):
            raise socket.gaierror(f"tests/test_docs.py blocks name lookups ({refuse(f'resolve {host!r}')})")

        socket.socket.connect = connect
        socket.socket.connect_ex = connect_ex
        socket.getaddrinfo = getaddrinfo


def _fake_hub(downloads: Path):
    """tests/fake_hub.py's in-memory Hub, loaded by path (the worker keeps tests/ off sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lorun_docs_fake_hub", TESTS_DIR / "fake_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FakeHub(downloads)


def _run_request(request: dict, guard: _NetworkGuard) -> dict:
    import gc
    import random

    import numpy as np
    import torch

    work = Path(request["cwd"])
    os.chdir(work)
    for relative in request["layout"]:
        _MAKERS[relative]((work / relative).resolve())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__main__"}
    output = io.StringIO()
    guard.attempts.clear()
    result: dict = {"ok": True, "error": "", "failed_block": None}
    hub = _fake_hub(work.parent / "fake-hub-downloads")
    start = time.perf_counter()
    for part in request["blocks"]:
        code = compile("\n" * (part["line"] - 1) + part["code"], part["path"], "exec")
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(contextlib.redirect_stdout(output))
                stack.enter_context(contextlib.redirect_stderr(output))
                if part["fake_hub"]:
                    stack.enter_context(hub.installed())
                exec(code, namespace)
        except BaseException as error:  # noqa: BLE001 (everything is reported to the parent)
            frames = error.__traceback__.tb_next if error.__traceback__ else None  # drop this frame
            text = "".join(traceback.format_exception(type(error), error, frames))
            result.update(ok=False, error=text, failed_block=part["id"])
            break
    result["seconds"] = time.perf_counter() - start
    result["output"] = output.getvalue()[-4000:]
    result["network"] = list(guard.attempts)
    try:
        import matplotlib.pyplot as plt

        plt.close("all")
    except ImportError:
        pass
    namespace.clear()
    gc.collect()
    return result


def _worker_main() -> None:
    """Reads one JSON request per line on stdin, answers one JSON line on the original stdout."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (also from C) go to the log, not into the protocol
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0, closefd=False), write_through=True)
    guard = _NetworkGuard()
    guard.install()
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    import lorun_peft  # noqa: F401 (imported once, before the first block's clock starts)

    for line in sys.stdin:
        protocol.write(json.dumps(_run_request(json.loads(line), guard)) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != TESTS_DIR]  # no tests/* shadowing
    _worker_main()
