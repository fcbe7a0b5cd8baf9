"""What the download caches share (s3.py, mlflow_uris.py): one loader at a time per cache entry."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

logger = logging.getLogger("mlserver.modelserve.storage")


@contextlib.contextmanager
def entry_lock(root: Path, entry: str, model: str, shown: str, fail: Callable[[str], Exception]) -> Iterator[None]:
    """Loaders of one cache entry (parallel workers, replicas on a shared volume) take turns through a lock file
    beside it: the second finds the first one's copy. ``fail`` makes the error when the cache cannot be used."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / f".{entry}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise fail(f"cannot use the cache folder {root}: {exc.strerror or exc} "
                   "(set the option cache_dir or MODELSERVE_CACHE_DIR)") from None
    try:
        try:
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("model '%s': waiting for another loader downloading %s", model, shown)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except (ImportError, OSError) as exc:  # no flock here (Windows, some network file systems)
            logger.debug("model '%s': no lock on the cache (%s)", model, exc)
        yield
    finally:
        os.close(fd)  # releases the lock
