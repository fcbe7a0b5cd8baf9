"""A Hugging Face hub cache made by hand, in huggingface_hub's documented layout, so hf:// models load offline."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict


def fill_hf_cache(cache: Path, repo_id: str, files: Dict[str, bytes], commit: str,
                  refs: tuple = ("main",)) -> Path:
    """One snapshot of a model repo in huggingface_hub's documented cache layout, as a download leaves it:

    ``models--org--name/blobs/<hash>`` holds the bytes, ``snapshots/<commit>/<file>`` links to the blob,
    and ``refs/<branch or tag>`` holds the commit sha. Returns the snapshot folder.
    """
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snap
