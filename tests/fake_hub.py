"""An in-memory Hugging Face Hub for tests: repos as ``{path: bytes}`` behind the HfApi methods a push calls.

Used by tests/test_hub.py (through ``monkeypatch``) and by the worker of tests/test_docs.py (as a context
manager), so pushes run with every socket closed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import yaml
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, constants
from huggingface_hub.hf_api import RepoUrl


class FakeHub:
    """In-memory Hub repos ``{repo_id: {path: bytes}}``; records every commit's operations."""

    def __init__(self, downloads: Path) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[tuple[str, list, dict]] = []
        self.created: list[tuple[str, dict]] = []
        self.downloads = downloads

    def install(self, monkeypatch) -> None:
        for name, method in self.methods().items():
            monkeypatch.setattr(HfApi, name, method)

    def create_repo(self, repo_id: str, **kwargs) -> RepoUrl:
        self.created.append((repo_id, kwargs))
        self.repos.setdefault(repo_id, {".gitattributes": b"*.safetensors filter=lfs\n"})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def download(self, repo_id: str, filename: str) -> str:
        path = self.downloads / repo_id / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.repos[repo_id][filename])
        return str(path)

    def commit(self, repo_id: str, operations: list, **kwargs) -> CommitInfo:
        self.commits.append((repo_id, list(operations), kwargs))
        files = self.repos[repo_id]
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                with op.as_file() as handle:
                    files[op.path_in_repo] = handle.read()
            else:
                files.pop(op.path_in_repo)
        sha = f"{len(self.commits):040d}"
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{sha}",
            commit_message="",
            commit_description="",
            oid=sha,
        )

    def checkout(self, repo_id: str, folder: Path) -> Path:
        for path, data in self.repos[repo_id].items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(data)
        return folder

    def card(self, repo_id: str) -> tuple[dict, str]:
        """(YAML metadata parsed with yaml.safe_load, body) of the repo's README.md."""
        text = self.repos[repo_id]["README.md"].decode()
        assert text.startswith("---\n")
        front, body = text[4:].split("\n---\n", 1)
        return yaml.safe_load(front), body

    def methods(self) -> dict:
        """HfApi method name -> replacement."""
        return {
            "create_repo": lambda api, repo_id, **kw: self.create_repo(repo_id, **kw),
            "create_branch": lambda api, repo_id, **kw: None,
            "list_repo_files": lambda api, repo_id, **kw: sorted(self.repos[repo_id]),
            "hf_hub_download": lambda api, repo_id, filename, **kw: self.download(repo_id, filename),
            "create_commit": lambda api, repo_id, operations, **kw: self.commit(repo_id, operations, **kw),
        }

    @contextlib.contextmanager
    def installed(self) -> Iterator[FakeHub]:
        """Patch HfApi (and turn offline mode off) for the ``with`` block; everything is put back after."""
        replaced = self.methods()
        saved = {name: getattr(HfApi, name) for name in replaced}
        offline = constants.HF_HUB_OFFLINE
        try:
            for name, method in replaced.items():
                setattr(HfApi, name, method)
            constants.HF_HUB_OFFLINE = False
            yield self
        finally:
            for name, method in saved.items():
                setattr(HfApi, name, method)
            constants.HF_HUB_OFFLINE = offline
