"""CPU accounting on a shared machine, read from /proc (Linux).

- the machine's busy jiffies (user, nice, system, irq, softirq) and steal (``cpu_jiffies``, ``machine_busy``);
- the user+system time of processes: a process group (``group_cpu_s``, the wrk driver's servers) or the pids
  of each role of a server (``roles``, ``CPU``: the mlserver process, its engine, this process, the rest);
- the time a thread spent runnable but waiting for a CPU (``runqueue_wait_s``, /proc schedstat);
- ``wait_quiet``: before each measurement, wait for the other processes on the machine to go quiet;
- ``deprioritise``: lower the CPU priority of an engine the runtime started (see its docstring).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_jiffies() -> tuple:
    """(busy, steal) jiffies of the whole machine: busy = user nice system irq softirq."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]] + [0] * 8
    return vals[0] + vals[1] + vals[2] + vals[5] + vals[6], vals[7]


def machine_busy(seconds: float = 1.0) -> float:
    """Cores busy on the whole machine over ``seconds`` (user, system, irq; not steal)."""
    b0, _ = cpu_jiffies()
    t0 = time.monotonic()
    time.sleep(seconds)
    b1, _ = cpu_jiffies()
    return (b1 - b0) / CLK_TCK / (time.monotonic() - t0)


def _stat(pid) -> Optional[List[str]]:
    """The fields of /proc/<pid>/stat after the command name: state ppid pgrp ... utime(11) stime(12).
    None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def group_cpu_s(pgid: int) -> float:
    """User+system CPU seconds of the live processes in a process group (a server and its workers)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fields = _stat(pid)
        if fields and int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def cpu_s(pids: Iterable[int]) -> float:
    """User+system CPU seconds of the given processes (one that is gone counts nothing)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def runqueue_wait_s(pid: int) -> float:
    """Seconds the main thread of ``pid`` has spent runnable but waiting for a CPU (schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def roles(pid: int, classify: Callable[[str], str], kinds: Sequence[str],
          descendants: bool = True) -> Dict[str, List[int]]:
    """pids per role: ``{"mlserver": [pid], kind: [...] for kind in kinds}``.

    Every descendant of ``pid`` (``descendants=False``: every child) goes to the role ``classify(comm)``
    names, comm being its command name (/proc/<pid>/comm); one gone before its name is read is left out."""
    children: Dict[int, List[int]] = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        fields = _stat(p)
        if fields:
            children.setdefault(int(fields[1]), []).append(int(p))
    out = {"mlserver": [pid], **{k: [] for k in kinds}}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if descendants:
            todo += children.get(child, [])
        try:
            comm = Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            continue
        out[classify(comm)].append(child)
    return out


class CPU:
    """Cores used between ``start()`` and ``stop()`` by each role and by everything else (plus steal), and
    the share of that time the mlserver process's and this process's main threads waited for a CPU.

    ``pids``: as ``roles`` returns them; this process is the role ``loadgen``."""

    def __init__(self, pids: Dict[str, List[int]]):
        self.pids = pids
        self.mains = {"mlserver": pids["mlserver"][0], "loadgen": os.getpid()}

    def _snap(self):
        busy, steal = cpu_jiffies()
        return (time.monotonic(), time.process_time(), {r: cpu_s(p) for r, p in self.pids.items()}, busy, steal,
                {k: runqueue_wait_s(p) for k, p in self.mains.items()})

    def start(self) -> None:
        self.t0 = self._snap()

    def stop(self) -> dict:
        (w0, own0, r0, b0, s0, q0), (w1, own1, r1, b1, s1, q1) = self.t0, self._snap()
        wall = w1 - w0
        out = {"loadgen": (own1 - own0) / wall, **{r: (r1[r] - r0[r]) / wall for r in r0}}
        out["other"] = max(0.0, (b1 - b0) / CLK_TCK / wall - sum(out.values()))
        out["steal"] = (s1 - s0) / CLK_TCK / wall
        out.update({f"{k}_runqueue_wait": (q1[k] - q0[k]) / wall for k in q0})
        return {k: round(v, 3) for k, v in out.items()}


def wait_quiet(max_other: float, timeout: float, log: Callable[[str], None], cpu: Optional[CPU] = None,
               pause: float = 0.0) -> float:
    """Waits (up to ``timeout`` s) until processes other than ours use less than ``max_other`` cores; returns
    the last figure, a 1-s sample taken every ``pause`` s.

    With ``cpu``, ours are its roles and this process (the sample is its ``other``); without, ours are idle
    (the wrk driver between runs) and the whole machine's busy cores count."""
    deadline, said = time.monotonic() + timeout, False
    while True:
        if cpu is None:
            other = machine_busy(1.0)
        else:
            cpu.start()
            time.sleep(1.0)
            other = cpu.stop()["other"]
        if other < max_other or time.monotonic() > deadline:
            return other
        if not said:
            log(f"  machine busy ({other:.2f} cores used by other processes); waiting up to {timeout:.0f} s")
            said = True
        time.sleep(pause)


def autogroup(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/autogroup").read_text().split()[0]
    except OSError:
        return "?"


def deprioritise(mlserver: int, engine: Sequence[int], nice: int) -> dict:
    """Gives the engine's processes ``engine`` (started by the runtime in the mlserver process ``mlserver``)
    the nice value ``nice``; returns what was done, for the results.

    Why: under load a CPU engine keeps every core busy (vLLM's EngineCore even spin-waits with sched_yield for
    its worker). With autogroup scheduling (one group per session; the runtime starts the engine in a session
    of its own) every process outside the engine's group then waits tens of ms for a CPU at each wake-up. At
    nice 10 the engine still gets every idle cycle, but the load generator (a client on another machine, in
    real life) and MLServer run as soon as they wake. The nice value goes on the engine's autogroup when it
    has its own, else on each of its threads; ``nice`` 0 leaves it as shipped."""
    enabled = Path("/proc/sys/kernel/sched_autogroup_enabled")
    on = enabled.exists() and enabled.read_text().strip() == "1"
    info = {"engine_nice": nice, "autogroup_enabled": on, "mlserver_autogroup": autogroup(mlserver),
            "engine_autogroup": autogroup(engine[0]), "kernel": os.uname().release}
    if nice == 0:
        info["applied"] = "none (as shipped)"
    elif on and info["engine_autogroup"] != info["mlserver_autogroup"]:
        Path(f"/proc/{engine[0]}/autogroup").write_text(str(nice))  # the engine's session: its own autogroup
        info["applied"] = f"autogroup nice {nice} on the engine's session ({info['engine_autogroup']})"
    else:
        for pid in engine:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        info["applied"] = f"nice {nice} on every thread of the engine's processes"
    return info
