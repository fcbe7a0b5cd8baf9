"""The working folder an engine runs in, and the user's ``files`` written into it without escaping it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Optional, Tuple

from .. import storage
from ..errors import ModelLoadError

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def workdir(model: str, cache_dir: Optional[str]) -> Path:
    """``<cache>/work/<model>``: stable across restarts, so files and engine caches are reused."""
    base = Path(cache_dir) if cache_dir else storage.default_cache_dir()
    folder = base / "work" / (_SAFE_NAME.sub("_", model) or "model")
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def safe_path(model: str, root: Path, relative: str) -> Path:
    """``root/relative``, refusing absolute paths, ``..`` and any symlink on the way that leads out."""
    if not relative or relative.strip() != relative or "\x00" in relative:
        raise ModelLoadError(model, f"files: invalid path {relative!r}")
    if os.path.isabs(relative) or relative.startswith("~"):
        raise ModelLoadError(model, f"files: '{relative}' is absolute; paths are relative to the model's working folder")
    if ".." in Path(relative).parts:
        raise ModelLoadError(model, f"files: '{relative}' contains '..'; it must stay inside the model's working folder")
    root = root.resolve()
    target = root / relative
    # resolve() follows symlinks already there (a link planted earlier, or one of our own folders)
    real = target.resolve()
    if real != root and not str(real).startswith(str(root) + os.sep):
        raise ModelLoadError(model, f"files: '{relative}' leads outside the model's working folder (through a symlink)")
    return target


def write_files(model: str, root: Path, files: Iterable[Tuple[str, str]]) -> list[Path]:
    """Writes each ``(path, content)``; returns the written paths. Existing symlinks are never followed."""
    written = []
    for relative, content in files:
        target = safe_path(model, root, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        written.append(target)
    return written
