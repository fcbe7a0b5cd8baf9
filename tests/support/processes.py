"""Processes seen through /proc: the tree below a process, those whose command line mentions a marker, and waiting
for processes to be gone (exited or zombies). Linux only, as the engines' supervision is."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, List


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: Iterable[int], timeout: float = 30.0) -> List[int]:
    """Waits up to ``timeout`` seconds for every process to be gone; returns those still alive."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def _pids() -> List[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def descendants(pid: int) -> List[int]:
    """Every process below ``pid`` (children first, then theirs)."""
    kids = []
    for child in _pids():
        try:
            ppid = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            kids += [child, *descendants(child)]
    return kids


def pids_mentioning(marker: str) -> List[int]:
    """The processes whose command line (arguments joined by spaces) contains ``marker``."""
    found = []
    for pid in _pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(pid)
    return found
