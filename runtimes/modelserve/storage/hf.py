"""hf://org/name[@revision]: a snapshot through huggingface_hub, in its own cache (offline when HF_HUB_OFFLINE)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import ModelLoadError, first_line
from . import _on, split_uri

logger = logging.getLogger("mlserver.modelserve.storage")

_HF_INSTALL = "install modelserve's huggingface extra: pip install -e '.[huggingface]'"


def parse_hf(model: str, uri: str) -> Tuple[str, Optional[str]]:
    """``(repo_id, revision)`` of ``hf://org/name[@revision]``; revision None means the hub's default (main).

    The revision is a branch, a tag or a full commit sha, and may hold slashes (``@refs/pr/1``). KServe's
    spelling ``hf://org/name:revision`` is accepted too (neither a repository id nor a git ref holds ':').
    """
    scheme, rest = split_uri(uri)
    if scheme != "hf":
        raise ModelLoadError(model, f"'{uri}' is not an hf:// URI")
    cut = min((i for i in (rest.find("@"), rest.find(":")) if i >= 0), default=-1)
    repo_id, at, revision = (rest, "", "") if cut < 0 else (rest[:cut], rest[cut], rest[cut + 1:])
    repo_id = repo_id.strip("/")
    expected = "expected hf://org/name or hf://org/name@revision"
    if not repo_id:
        raise ModelLoadError(model, f"no repository in '{uri}' ({expected})")
    if repo_id.count("/") > 1:
        raise ModelLoadError(model, f"'{repo_id}' in '{uri}' is not a repository id ({expected}; "
                                    "a path inside the repository is not supported)")
    if at and not revision.strip():
        raise ModelLoadError(model, f"empty revision after '{at}' in '{uri}' ({expected})")
    if at:
        revision = revision.strip()
        parts = revision.split("/")
        if revision.startswith("/") or ".." in parts or any(c.isspace() for c in revision):
            raise ModelLoadError(model, f"invalid revision '{revision}' in '{uri}' "
                                        "(a branch, a tag or a commit sha)")
    return repo_id, (revision if at else None)


def hf_cache_dir() -> Path:
    """huggingface_hub's cache, read from the environment now (huggingface_hub reads it once, at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hf_offline() -> bool:
    if "HF_HUB_OFFLINE" in os.environ:
        return _on(os.environ["HF_HUB_OFFLINE"])
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - checked by hf_snapshot first
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _cached_refs(folder: Path) -> List[str]:
    refs = folder / "refs"
    names = sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file()) if refs.is_dir() else []
    return names[:10]


def hf_snapshot(model: str, repo_id: str, revision: Optional[str] = None,
                allow_patterns: Optional[List[str]] = None) -> Path:
    """The local snapshot folder of ``repo_id`` at ``revision`` (default: main), in huggingface_hub's cache.

    Online, ``snapshot_download`` fetches what the cache lacks (``allow_patterns`` limits the files, e.g.
    to a tokenizer's) and falls back on the cached snapshot when the hub cannot be reached. With
    ``HF_HUB_OFFLINE=1`` only the cache is read: a branch or tag through ``refs/<revision>``, a full
    commit sha directly. The cache is ``HF_HUB_CACHE`` (default ``$HF_HOME/hub``), shared with every
    other Hugging Face tool.
    """
    shown = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    rev = revision or "main"

    def fail(msg: str) -> ModelLoadError:
        return ModelLoadError(model, f"{shown}: {msg}")

    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        raise fail(f"hf:// URIs need huggingface_hub: {_HF_INSTALL}") from None
    try:
        validate_repo_id(repo_id)
    except hf_errors.HFValidationError as exc:
        raise fail(f"invalid repository id '{repo_id}': {first_line(exc)}") from None

    cache = hf_cache_dir()
    offline = hf_offline()
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    logger.info("model '%s': resolving %s (revision %s) in the Hugging Face cache %s%s", model, shown, rev,
                cache, " (offline)" if offline else "")
    try:
        path = huggingface_hub.snapshot_download(
            repo_id, revision=rev, cache_dir=str(cache), local_files_only=offline, allow_patterns=allow_patterns,
            endpoint=(os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None)
    except hf_errors.LocalEntryNotFoundError as exc:
        if not folder.is_dir():
            where = f"{repo_id} is not in the Hugging Face cache at {cache}"
        elif (folder / "refs" / rev).is_file():
            where = (f"revision '{rev}' of {repo_id} points at snapshot "
                     f"{(folder / 'refs' / rev).read_text().strip()[:40]}, which is missing from the Hugging Face "
                     f"cache at {cache}")
        else:
            refs = _cached_refs(folder)
            where = (f"revision '{rev}' of {repo_id} is not in the Hugging Face cache at {cache} "
                     f"(cached revisions: {', '.join(refs) or 'none'}; a commit sha must be the full 40 characters)")
        if offline:
            why = "and the hub is offline (HF_HUB_OFFLINE is set)"
        else:
            cause = exc.__cause__ or exc.__context__
            why = "and the hub is unreachable" + (f" ({first_line(cause)})" if cause else "")
        raise fail(f"{where} {why}; download it first (huggingface-cli download {repo_id}"
                   f"{' --revision ' + rev if revision else ''}) or set HF_HUB_CACHE/HF_HOME to the cache") from None
    except hf_errors.GatedRepoError:
        raise fail(f"{repo_id} is gated: accept its conditions on the hub and set HF_TOKEN") from None
    except hf_errors.RepositoryNotFoundError:
        raise fail(f"repository {repo_id} not found on the hub (or private: set HF_TOKEN)") from None
    except hf_errors.RevisionNotFoundError:
        raise fail(f"revision '{rev}' not found in {repo_id}") from None
    except hf_errors.HfHubHTTPError as exc:
        raise fail(f"the hub refused: {first_line(exc)}") from None
    except PermissionError as exc:
        raise fail(f"cannot write the Hugging Face cache at {cache}: {exc.strerror or exc} "
                   "(set HF_HUB_CACHE or HF_HOME)") from None
    except Exception as exc:
        raise fail(f"download failed: {type(exc).__name__}: {first_line(exc)}") from None
    logger.info("model '%s': %s is %s", model, shown, path)
    return Path(path)
