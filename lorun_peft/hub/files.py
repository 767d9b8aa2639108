"""Hub references and downloads: repo ids, the offline switch, shipped copies, adapter-set lookup.

Everything that turns a user's reference (a local folder, ``owner/name``, a bare set name) into a local
folder lives here, so ``LoRunModel.from_pretrained``/``load_adapter`` and :mod:`lorun_peft.pretrained`
resolve references the same way. Downloads go through ``snapshot_download`` and honour
``HF_HUB_OFFLINE``: the cached snapshot is used, and a missing repo, revision or set raises
``FileNotFoundError`` naming what is available. Nothing here writes to the Hub (:mod:`.push` does).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import (
    HfApi,
    constants,
    get_cached_repo_tree,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    HfHubHTTPError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import httpx
from transformers.utils import CONFIG_NAME

from lorun_peft.tuners import validate_set_name
from lorun_peft.tuners.adapter_set import SET_FILE

#: ``library_name`` of every card and of the Hub requests. Not ``peft``: a set repo has no root
#: ``adapter_config.json`` and its stage adapters need LoRun's stage control and task parameters, so
#: PEFT's Hub snippet would not work.
LIBRARY_NAME = "lorun-peft"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w\-.]*/[\w\-.]+")
_REPO_NAME = re.compile(r"[A-Za-z0-9][\w\-.]*")  # a bare name: the pusher's own namespace


def is_hub_id(reference: str | os.PathLike) -> bool:
    """True for ``owner/name`` that is not an existing local path (a local folder always wins)."""
    text = str(reference)
    return (
        bool(_HUB_ID.fullmatch(text))
        and not text.startswith((".", "~"))
        and not Path(text).expanduser().exists()
    )


def is_offline() -> bool:
    """Whether Hub access is off (``HF_HUB_OFFLINE=1``, read by huggingface_hub when it is imported)."""
    return constants.is_offline_mode()


def _rev(revision: str | None) -> str:
    return revision or constants.DEFAULT_REVISION


def _api(token: str | bool | None) -> HfApi:
    return HfApi(token=token, library_name=LIBRARY_NAME)


#: Hub ids of the models shipped inside the package: ``<task>-backbone`` and ``<task>-adapters``.
SHIPPED_HUB_OWNER = "lorun-peft"


def shipped_copy(reference: str | os.PathLike, revision: str | None = None) -> Path | None:
    """The package's own copy of a shipped Hub repo (``lorun-peft/cs-backbone`` ...) when the Hub has none.

    ``None`` for any other reference, or when the repo is in the local Hub cache (the Hub copy is used
    then). Offline, or when the Hub cannot be reached or does not hold the repo, the shipped folder is
    returned: ``lorun_peft/assets/pretrained/<task>/backbone`` or ``.../<task>/adapters``.
    """
    match = re.fullmatch(rf"{SHIPPED_HUB_OWNER}/([a-z0-9_]+)-(backbone|adapters)", str(reference))
    if match is None or Path(str(reference)).expanduser().exists():
        return None
    task, part = match.groups()
    folder = Path(__file__).resolve().parents[1] / "assets" / "pretrained" / task / part
    if not folder.is_dir():
        return None
    probe = CONFIG_NAME if part == "backbone" else ".gitattributes"
    if isinstance(try_to_load_from_cache(str(reference), probe, revision=revision), str):
        return None
    if is_offline():
        return folder
    try:
        _api(None).model_info(str(reference), revision=revision, timeout=10.0)
    except (httpx.ConnectError, httpx.TimeoutException, OSError, HfHubHTTPError):
        return folder  # not found (RepositoryNotFoundError is an HfHubHTTPError) or not reachable
    return None


def check_push_access(repo_id: str, token: str | bool | None = None) -> None:
    """``ValueError`` in one line unless a push to ``repo_id`` can start: a valid id, Hub on, a token.

    Run before a training run that ends in a push, so a run does not train for an hour and then fail.
    It does not contact the Hub (the push itself reports permission errors).
    """
    from huggingface_hub import get_token

    check_repo_id(repo_id)
    if is_offline():
        raise ValueError(
            "--push_to_hub needs Hub access, but HF_HUB_OFFLINE is set; unset it or drop --push_to_hub"
        )
    if token is False or (token is None and not get_token()):
        raise ValueError(
            "--push_to_hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN (none was found)"
        )


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is ``owner/name`` or ``name``, else raise ``ValueError`` in one line."""
    if not isinstance(repo_id, str) or not (_HUB_ID.fullmatch(repo_id) or _REPO_NAME.fullmatch(repo_id)):
        raise ValueError(
            f"Hub repo id {repo_id!r} is not 'owner/name' or 'name' (letters, digits, '-', '_', '.')"
        )
    return repo_id


def _sets_in_files(paths: list[str]) -> list[str]:
    """Set names of a repo's file list: top-level folders that hold ``adapter_set.json``."""
    return sorted({p.split("/")[0] for p in paths if p.count("/") == 1 and p.endswith("/" + SET_FILE)})


def _sets_in_folder(folder: Path) -> list[str]:
    return sorted(p.parent.name for p in folder.glob(f"*/{SET_FILE}"))


def _not_cached(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None) -> str:
    where = cache_dir or constants.HF_HUB_CACHE
    reason = "Hub access is disabled (HF_HUB_OFFLINE is set)" if is_offline() else "the Hub cannot be reached"
    return (
        f"{repo_id!r} (revision {_rev(revision)!r}) is not in the local Hub cache ({where}) and {reason}; "
        "download it once with network access, or pass a local folder"
    )


def list_adapter_sets(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[str]:
    """Names of the adapter sets in a local folder or a Hub repo (sorted).

    A local folder: its subfolders that hold ``adapter_set.json``. A Hub repo: from its file list
    (``list_repo_files``); offline, from the cached tree listing of that revision if one was cached by
    an earlier download, else from the folders of the cached snapshot.
    """
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        return _sets_in_folder(path)
    if not is_hub_id(repo_id_or_path):
        raise FileNotFoundError(
            f"{str(repo_id_or_path)!r} is neither a local folder nor a Hub id 'owner/name'"
        )
    repo_id = str(repo_id_or_path)
    if not is_offline():
        try:
            return _sets_in_files(_api(token).list_repo_files(repo_id, revision=revision))
        except RepositoryNotFoundError as error:
            raise FileNotFoundError(_repo_missing(repo_id)) from error
        except RevisionNotFoundError as error:
            raise FileNotFoundError(f"revision {revision!r} not found in Hub repository {repo_id}") from error
        except (httpx.ConnectError, httpx.TimeoutException, OfflineModeIsEnabled, HfHubHTTPError):
            pass  # Hub unreachable: fall back to the cache, as snapshot_download does
    try:
        files = get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache_dir)
        return _sets_in_files([f.path for f in files])
    except CachedRepoTreeNotFoundError:
        pass
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=True,
            allow_patterns=[f"*/{SET_FILE}"],
        )
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(_not_cached(repo_id, revision, cache_dir)) from error
    return _sets_in_folder(Path(folder))


def check_backbone_reachable(
    repo_id: str,
    revision: str | None = None,
    *,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = 10.0,
) -> None:
    """``FileNotFoundError`` in one line unless Hub repo ``repo_id`` can be loaded: cached, or reachable.

    Called before ``from_pretrained`` of a Hub id that is not a local path, so a mistyped local folder
    or an unreachable Hub gives one clear line at once instead of transformers' retries and their log.
    """
    cached = try_to_load_from_cache(repo_id, CONFIG_NAME, cache_dir=cache_dir, revision=revision)
    if isinstance(cached, str):
        return
    where = (
        f"{repo_id!r} is not a local folder (no such path) and {_not_cached(repo_id, revision, cache_dir)}"
    )
    if is_offline():
        raise FileNotFoundError(where)
    try:
        _api(token).model_info(repo_id, revision=revision, timeout=timeout)
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder (no such path); {_repo_missing(repo_id)}"
        ) from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"revision {revision!r} not found in Hub repository {repo_id}") from error
    except (httpx.ConnectError, httpx.TimeoutException, OSError, HfHubHTTPError) as error:
        raise FileNotFoundError(where) from error


def _repo_missing(repo_id: str) -> str:
    return (
        f"Hub repository {repo_id!r} not found (or it is private/gated: log in with `hf auth login` or "
        "pass token=)"
    )


def download_adapter_set(
    repo_id: str,
    set_name: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Download (or find in the cache) one set of a Hub repo; returns its local folder.

    Only ``<set_name>/*`` is fetched (``snapshot_download(allow_patterns=...)``); offline, the cached
    snapshot is used. Raises ``FileNotFoundError`` for a missing repo or revision, a set the repo does
    not hold (naming the sets it holds), and a set that is not cached while offline.
    """
    validate_set_name(set_name)
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            allow_patterns=[f"{set_name}/*"],
            library_name=LIBRARY_NAME,
        )
    except IncompleteSnapshotError as error:
        raise FileNotFoundError(
            f"adapter set {set_name!r} of {repo_id} (revision {_rev(revision)!r}) is not (fully) in the "
            f"local Hub cache and the Hub cannot be reached; download it once with network access ({error})"
        ) from error
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(_not_cached(repo_id, revision, cache_dir)) from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(_repo_missing(repo_id)) from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"revision {revision!r} not found in Hub repository {repo_id}") from error
    path = Path(folder) / set_name
    if not (path / SET_FILE).is_file():
        available = list_adapter_sets(repo_id, revision=revision, token=token, cache_dir=cache_dir)
        cached = " (cached snapshot, offline)" if is_offline() else ""
        raise FileNotFoundError(
            f"set {set_name!r} not found in {repo_id} (revision {_rev(revision)!r}){cached}; "
            f"available: {', '.join(available) or 'none'}"
        )
    return path


#: Where a backbone saved in the shipped layout (``<task>/backbone/``) finds its sets: ``<task>/adapters/``.
SHIPPED_ADAPTERS_DIR = "adapters"


def resolve_adapter_dir(
    reference: str | os.PathLike,
    set_name: str | None = None,
    *,
    default_source: str | os.PathLike | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The local folder of one adapter set (the folder holding ``adapter_set.json``).

    With ``set_name``: ``reference`` is a local folder holding ``<set_name>/`` or a Hub repo id. Alone,
    ``reference`` is a set folder, or a set name looked up in ``default_source`` (the folder or repo the
    backbone came from). An existing local path always wins over a Hub id or a set name.
    """
    if set_name is not None:  # before any path is built from it: "../other/set" never reaches the disk
        validate_set_name(set_name)
    shipped = shipped_copy(reference, revision) if str(reference).endswith("-adapters") else None
    if shipped is not None:
        reference = shipped
    if set_name is None:
        path = Path(reference).expanduser()
        if path.is_dir() and (path / SET_FILE).is_file():
            return path
        text = str(reference)
        if not path.exists() and "/" not in text and "\\" not in text:
            if not default_source:
                raise FileNotFoundError(
                    f"{text!r} is not a folder; as a set name it needs the backbone's source, but this model "
                    "was not loaded with from_pretrained: pass it, e.g. load_adapter('org/cs-adapters', "
                    f"{text!r}) or load_adapter('path/to/sets', {text!r})"
                )
            source = Path(default_source).expanduser()
            shipped = source.parent / SHIPPED_ADAPTERS_DIR / text
            if source.is_dir() and not (source / text).is_dir() and (shipped / SET_FILE).is_file():
                return shipped  # the shipped layout: <task>/backbone/ beside <task>/adapters/<set>/
            return resolve_adapter_dir(
                default_source, text, revision=revision, token=token, cache_dir=cache_dir
            )
        if is_hub_id(reference):
            available = list_adapter_sets(reference, revision=revision, token=token, cache_dir=cache_dir)
            raise FileNotFoundError(
                f"{text!r} is a Hub repository: name the set, e.g. load_adapter({text!r}, "
                f"{(available or ['<set_name>'])[0]!r}); available: {', '.join(available) or 'none'}"
            )
    path = Path(reference).expanduser()
    if path.is_dir():
        if set_name is not None and (path / set_name / SET_FILE).is_file():
            return path / set_name
        if (path / SET_FILE).is_file():
            return path  # a set folder itself: the loader checks that it holds set_name
        wanted = f"adapter set {set_name!r}" if set_name else "adapter set"
        raise FileNotFoundError(
            f"{path} holds no {wanted}: expected {path}/{set_name or '<set_name>'}/{SET_FILE} or "
            f"{path}/{SET_FILE}; adapter sets found there: {_sets_in_folder(path) or 'none'}"
        )
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; expected a folder holding adapter sets")
    if is_hub_id(reference):
        return download_adapter_set(
            str(reference), set_name, revision=revision, token=token, cache_dir=cache_dir
        )
    raise FileNotFoundError(
        f"adapter folder {str(reference)!r} does not exist (and is not a Hub id 'owner/name')"
    )
