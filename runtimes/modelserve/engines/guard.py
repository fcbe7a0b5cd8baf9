"""Runs one engine command and takes its whole process tree down with it.

Started by ``EngineProcess`` as the leader of a new process group, with only the standard library
(it runs under MLServer's Python, by path, so it imports nothing of ours). It exists because MLServer
never unloads models on shutdown and a worker can be killed outright: the guard asks the kernel for
SIGTERM when its parent dies (``PR_SET_PDEATHSIG``) and becomes a child subreaper, so on any end of
the parent, or on SIGTERM/SIGINT, it stops every process in its group and every orphaned descendant,
first with SIGTERM, then with SIGKILL after a grace period. When the engine exits on its own the guard
cleans up what the engine left behind and exits with the engine's status.

Usage: python guard.py [--grace SECONDS] [--cleanup FOLDER] -- COMMAND [ARG...]
(--cleanup: a folder removed once the tree is gone, e.g. the engine's TMPDIR, also when MLServer was killed)
"""

import ctypes
import os
import shutil
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _descendants() -> list[int]:
    """Processes in our group or reparented to us (a child that left the group with setsid)."""
    me, group, found = os.getpid(), os.getpgrp(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid, pgrp = int(fields[1]), int(fields[2])
        if pgrp == group or ppid == me:
            found.append(int(entry))
    return found


def _signal_all(sig: int) -> None:
    for pid in _descendants():
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _shutdown(grace: float) -> None:
    """SIGTERM to everything, SIGKILL to what is left after ``grace`` seconds."""
    _signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap()
        if not _descendants():
            return
        time.sleep(0.1)
    _signal_all(signal.SIGKILL)
    time.sleep(0.1)
    _reap()


def _remove(folder) -> None:
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    grace, cleanup = 10.0, None
    while argv[:1] in (["--grace"], ["--cleanup"]):
        if argv[0] == "--grace":
            grace = float(argv[1])
        else:
            cleanup = argv[1]
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("guard: no command given", file=sys.stderr)
        return 2

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent:  # the parent died before the request took effect
        return 1

    stopping = []

    def on_signal(signum, _frame):
        if not stopping:
            stopping.append(signum)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _shutdown(grace)
            _remove(cleanup)
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        child = os.posix_spawnp(argv[0], argv, os.environ)
    except OSError as exc:
        print(f"guard: cannot start {argv[0]!r}: {exc}", file=sys.stderr, flush=True)
        return 127

    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid == child:
            break
    _shutdown(grace)
    _remove(cleanup)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
