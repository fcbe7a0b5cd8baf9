"""A generic HTTP load driver for MLServer runtimes: real `mlserver start` processes, `wrk` as the load.

The wrk benchmarks (sklearn_bench.py, huggingface_bench.py, generation_bench.py) use it::

    from lib.wrk import Variant, Target, InProcess, MODES, run, summarise, markdown_table, plot

    variants = [Variant("ours", prepare=lambda root: ..., description="...")]
    result = run(variants, modes=[MODES["inprocess"], MODES["workers"]], concurrencies=[1, 16],
                 duration=10, repeats=3, workdir=Path("/tmp/bench"))

A Variant writes its model folder into a server root and returns the Target to load (model name and
V2 request body). Each (variant, mode) gets its own mlserver process on this machine, all started up
front; the measurements are interleaved: every repeat walks all (mode, variant) pairs for each
concurrency, in an order rotated by the repeat index, so slow drifts on the machine (other jobs,
thermal, page cache) spread evenly over the variants instead of landing on one of them.

Each measurement: a warm-up wrk run (discarded), then a wrk run of fixed duration with --latency.
The driver parses wrk's text output (Requests/sec, the latency distribution), fails loudly on any
non-2xx/3xx response or socket error, and records the CPU time of wrk, of the server's process
group and of everything else on the machine, so a saturated load generator or a noisy neighbour
shows up in the results instead of silently skewing them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from lib.cpu import CLK_TCK, cpu_jiffies, group_cpu_s, wait_quiet
from lib.loadgen import rotate
from lib.report import log as _log
from lib.report import bars, machine_info, md_table, pyplot, save
import tests.support.harness as harness
from tests.support.harness import Server  # a real `mlserver start` on free ports

WRK_INSTALL = "apt-get install -y wrk"


# -- what is measured ------------------------------------------------------------------------------
@dataclass
class Target:
    """One model on a server and the request that drives it."""

    model: str
    body: Any  # a JSON-serialisable request (or bytes/str sent as is)
    path: Optional[str] = None  # defaults to the V2 infer route of ``model``
    content_type: str = "application/json"
    check: Optional[Callable[[dict], None]] = None  # raises if a response JSON is wrong

    @property
    def route(self) -> str:
        return self.path or f"/v2/models/{self.model}/infer"

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body, separators=(",", ":")).encode()


@dataclass
class Variant:
    """A server-side variant: ``prepare(root)`` writes its model folder(s) under ``root``."""

    name: str
    prepare: Callable[[Path], Target]
    description: str = ""
    env: Dict[str, str] = field(default_factory=dict)  # extra environment for its mlserver process
    settings: Dict[str, Any] = field(default_factory=dict)  # extra server settings.json entries
    mlserver: Optional[str] = None  # another `mlserver` executable (e.g. a separate venv's); default: ours


@dataclass
class InProcess:
    """A call timed in this process (no server): ``setup()`` returns the zero-argument callable."""

    name: str
    setup: Callable[[], Callable[[], Any]]
    description: str = ""
    seconds: float = 2.0  # roughly how long each timing repeat takes


@dataclass(frozen=True)
class Mode:
    name: str
    parallel_workers: Optional[int]  # None: MLServer's default (one worker process)
    description: str = ""


MODES = {
    "workers": Mode("workers", None, "MLServer's default: parallel_workers unset (1 worker process; "
                                     "the main process parses HTTP and forwards to it)"),
    "inprocess": Mode("inprocess", 0, "parallel_workers: 0 (the model runs in the HTTP process)"),
}


# -- wrk -------------------------------------------------------------------------------------------
def require_wrk() -> str:
    path = shutil.which("wrk")
    if not path:
        sys.stderr.write(f"wrk is not installed; install it with:\n    {WRK_INSTALL}\n")
        raise SystemExit(2)
    return path


def lua_script(target: Target) -> str:
    body = target.payload().decode()
    eq = "=" * 4
    while f"]{eq}]" in body:
        eq += "="
    return (
        'wrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = "{target.content_type}"\n'
        f"wrk.body = [{eq}[{body}]{eq}]\n"
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"cannot read a wrk duration: {text!r}")
    return round(float(m.group(1)) * _UNITS[m.group(2)], 6)


class WrkError(RuntimeError):
    pass


def parse_wrk(out: str) -> Dict[str, Any]:
    """Requests/sec, the latency distribution (ms), counts and errors from `wrk --latency` output."""
    res: Dict[str, Any] = {}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not m:
        raise WrkError(f"no 'Requests/sec' in wrk output:\n{out}")
    res["rps"] = float(m.group(1))
    m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+), ", out, re.M)
    if m:
        res["requests"] = int(m.group(1))
        res["elapsed_s"] = _ms(m.group(2)) / 1e3
    m = re.search(r"^[ \t]*Latency[ \t]+(\S+)[ \t]+(\S+)[ \t]+(\S+)", out, re.M)
    if m:
        res["latency_avg_ms"], res["latency_stdev_ms"], res["latency_max_ms"] = (_ms(g) for g in m.groups())
    for pct, val in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+(\S+)\s*$", out, re.M):
        res[f"latency_p{float(pct):g}_ms"] = _ms(val)
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    return res


def wrk(url: str, script: Path, duration: float, connections: int, threads: int = 1,
        timeout_s: str = "5s", server_pgid: Optional[int] = None) -> Dict[str, Any]:
    """One wrk run; returns the parsed figures plus CPU use (in cores) of wrk, the server and the rest."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
           f"--timeout={timeout_s}", "-s", str(script), url]
    with tempfile.TemporaryFile("w+") as out:
        busy0, steal0 = cpu_jiffies()
        srv0 = group_cpu_s(server_pgid) if server_pgid else 0.0
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        srv1 = group_cpu_s(server_pgid) if server_pgid else 0.0
        busy1, steal1 = cpu_jiffies()
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with {proc.returncode}: {' '.join(cmd)}\n{text}")
    res = parse_wrk(text)
    busy_cores = (busy1 - busy0) / CLK_TCK / wall
    res["steal_cpu"] = (steal1 - steal0) / CLK_TCK / wall  # taken by the hypervisor (a VM's neighbours)
    res["wrk_cpu"] = (usage.ru_utime + usage.ru_stime) / wall
    res["server_cpu"] = (srv1 - srv0) / wall if server_pgid else None
    res["other_cpu"] = max(0.0, busy_cores - res["wrk_cpu"] - (res["server_cpu"] or 0.0))
    res["raw"] = text
    return res


def check_errors(res: Dict[str, Any], what: str) -> None:
    errs = {k: v for k, v in res.get("socket_errors", {}).items() if v}
    if res["non_2xx"] or errs or not res.get("requests"):
        raise WrkError(
            f"{what}: {res['non_2xx']} non-2xx/3xx responses, socket errors {errs or 'none'}, "
            f"{res.get('requests', 0)} requests\n{res['raw']}"
        )


def curl_check(url: str, target: Target, workdir: Path) -> dict:
    """One request with curl before the load: it must answer 200 with JSON the target accepts."""
    body = workdir / f"{target.model}.body"
    body.write_bytes(target.payload())
    out = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-H", f"Content-Type: {target.content_type}",
         "--data-binary", f"@{body}", url + target.route],
        capture_output=True, text=True, timeout=60,
    )
    text, _, code = out.stdout.rpartition("\n")
    if out.returncode != 0 or code != "200":
        raise WrkError(f"{url + target.route} answered {code or out.stderr.strip()}: {text[:2000]}")
    doc = json.loads(text)
    if target.check:
        target.check(doc)
    return doc


# -- the run ---------------------------------------------------------------------------------------
def start_server(server: Server, mlserver: Optional[str] = None, timeout: float = 300) -> Server:
    """``server.start()``, with another ``mlserver`` executable when given (a separate venv's)."""
    if not mlserver:
        return server.start(timeout)
    if not os.access(mlserver, os.X_OK):
        raise RuntimeError(f"{mlserver} is not an executable")
    saved, harness.MLSERVER = harness.MLSERVER, mlserver
    try:
        return server.start(timeout)
    finally:
        harness.MLSERVER = saved


def time_inprocess(fn: Callable[[], Any], seconds: float = 2.0, repeat: int = 5) -> Dict[str, float]:
    """Best-of-``repeat`` µs per call of ``fn`` (timeit), and the implied calls per second."""
    timer = timeit.Timer(fn)
    number, took = timer.autorange()
    number = max(1, int(number * (seconds / repeat) / max(took, 1e-9)))
    times = [t / number for t in timer.repeat(repeat=repeat, number=number)]
    best = min(times)
    return {"us_per_call": best * 1e6, "us_per_call_median": statistics.median(times) * 1e6,
            "calls_per_s": 1.0 / best, "number": number}


def run(
    variants: Sequence[Variant],
    modes: Sequence[Mode],
    concurrencies: Sequence[int],
    duration: float = 10.0,
    repeats: int = 3,
    warmup: float = 2.0,
    workdir: Optional[Path] = None,
    threads: int = 1,
    inprocess: Sequence[InProcess] = (),
    log: Callable[[str], None] = _log,
    max_other_cpu: float = 0.25,
    retries: int = 3,
    quiet_wait: float = 180.0,
) -> Dict[str, Any]:
    """Measure every variant in every mode at every concurrency, ``repeats`` times, interleaved.

    Shared machines: before each measurement it waits (up to ``quiet_wait`` s) for other processes to
    use less than ``max_other_cpu`` cores, and it repeats a measurement (up to ``retries`` times) when
    other processes took more than that during it; a run still disturbed is kept, marked
    ``"disturbed": true``.

    Returns {"runs": [...], "inprocess": [...], "config": {...}, "machine": {...}, "date": ...};
    every run holds variant, mode, concurrency, repeat, rps, latency percentiles (ms), the CPU use of
    wrk / the server / everything else (in cores), and the order it ran in.
    """
    require_wrk()
    own_tmp = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="modelserve-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    servers: Dict[tuple, Server] = {}
    targets: Dict[tuple, Target] = {}
    scripts: Dict[tuple, Path] = {}
    runs: List[Dict[str, Any]] = []
    timed: List[Dict[str, Any]] = []

    def _terminate(signum, frame):  # SIGTERM/SIGHUP: stop the servers (they run in their own sessions)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for mode in modes:
            for v in variants:
                key = (v.name, mode.name)
                root = workdir / f"{v.name}-{mode.name}"
                target = v.prepare(root)
                server = Server(root, parallel_workers=mode.parallel_workers, debug=False, env=v.env,
                                extra=v.settings or None)
                t0 = time.monotonic()
                servers[key] = start_server(server, v.mlserver)
                log(f"started {v.name} [{mode.name}] on {server.url} in {time.monotonic() - t0:.1f}s")
                resp = curl_check(server.url, target, workdir)
                log(f"  curl check 200: outputs {[o.get('name') for o in resp.get('outputs', [])]}")
                script = workdir / f"{v.name}-{mode.name}.lua"
                script.write_text(lua_script(target))
                targets[key], scripts[key] = target, script

        pairs = [(m, v) for m in modes for v in variants]
        order = 0
        for rep in range(repeats):
            for conc in concurrencies:
                for mode, v in rotate(pairs, rep):
                    key = (v.name, mode.name)
                    server, target = servers[key], targets[key]
                    url = server.url + target.route
                    what = f"{v.name} [{mode.name}] c={conc} repeat {rep + 1}/{repeats}"
                    if server.proc.poll() is not None:
                        raise RuntimeError(f"{what}: the server died:\n{server.log()[-4000:]}")
                    for attempt in range(retries + 1):
                        idle_busy = wait_quiet(max_other_cpu, quiet_wait, log, pause=2.0)
                        if warmup > 0:
                            check_errors(wrk(url, scripts[key], warmup, conc, threads), what + " (warm-up)")
                        res = wrk(url, scripts[key], duration, conc, threads, server_pgid=server.proc.pid)
                        check_errors(res, what)
                        if res["other_cpu"] < max_other_cpu:
                            break
                        log(f"{what}: disturbed ({res['rps']:.0f} req/s while other processes used "
                            f"{res['other_cpu']:.2f} cores)" + ("; measuring again" if attempt < retries else ""))
                    raw = res.pop("raw")
                    order += 1
                    runs.append({"variant": v.name, "mode": mode.name, "concurrency": conc, "repeat": rep,
                                 "order": order, **res, "attempts": attempt + 1,
                                 "disturbed": res["other_cpu"] >= max_other_cpu,
                                 "idle_busy_before": round(idle_busy, 3), "wrk_output": raw})
                    log(f"{what}: {res['rps']:.0f} req/s  p50 {res.get('latency_p50_ms', 0):.2f} ms  "
                        f"p99 {res.get('latency_p99_ms', 0):.2f} ms  cpu wrk {res['wrk_cpu']:.2f} "
                        f"server {res['server_cpu']:.2f} other {res['other_cpu']:.2f} steal {res['steal_cpu']:.2f}")
            for ip in inprocess:
                fn = ip.setup()
                for attempt in range(retries + 1):  # like the wrk runs: wait for quiet, repeat if disturbed
                    wait_quiet(max_other_cpu, quiet_wait, log, pause=2.0)
                    busy0, _ = cpu_jiffies()
                    own0, t0 = time.process_time(), time.monotonic()
                    r = time_inprocess(fn, ip.seconds)
                    wall = time.monotonic() - t0
                    busy1, _ = cpu_jiffies()
                    r["own_cpu"] = (time.process_time() - own0) / wall
                    r["other_cpu"] = max(0.0, (busy1 - busy0) / CLK_TCK / wall - r["own_cpu"])
                    if r["other_cpu"] < max_other_cpu:
                        break
                    log(f"{ip.name}: disturbed (other processes used {r['other_cpu']:.2f} cores)"
                        + ("; timing again" if attempt < retries else ""))
                timed.append({"variant": ip.name, "repeat": rep, **r, "attempts": attempt + 1,
                              "disturbed": r["other_cpu"] >= max_other_cpu})
                log(f"{ip.name} repeat {rep + 1}/{repeats}: {r['us_per_call']:.1f} µs/call "
                    f"({r['calls_per_s']:.0f} calls/s)")
    finally:
        for server in servers.values():
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {"duration_s": duration, "repeats": repeats, "warmup_s": warmup, "wrk_threads": threads,
                   "max_other_cpu": max_other_cpu, "retries": retries,
                   "concurrencies": list(concurrencies),
                   "modes": {m.name: {"parallel_workers": m.parallel_workers, "description": m.description}
                             for m in modes},
                   "variants": {v.name: v.description for v in variants},
                   "inprocess": {i.name: i.description for i in inprocess}},
        "runs": runs,
        "inprocess": timed,
    }


# -- reporting -------------------------------------------------------------------------------------
def summarise(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Median (and min/max) over repeats for each (variant, mode, concurrency)."""
    by_point: Dict[tuple, List[dict]] = {}
    for r in result["runs"]:
        by_point.setdefault((r["variant"], r["mode"], r["concurrency"]), []).append(r)
    out = []
    for (variant, mode, conc), rs in by_point.items():
        rps = [r["rps"] for r in rs]
        out.append({
            "variant": variant, "mode": mode, "concurrency": conc, "n": len(rs),
            "rps_median": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "p50_ms": statistics.median(r.get("latency_p50_ms", float("nan")) for r in rs),
            "p99_ms": statistics.median(r.get("latency_p99_ms", float("nan")) for r in rs),
            "wrk_cpu": max(r["wrk_cpu"] for r in rs),
            "server_cpu": statistics.median(r["server_cpu"] for r in rs),
            "other_cpu": max(r["other_cpu"] for r in rs),
            "steal_cpu": max(r.get("steal_cpu", 0.0) for r in rs),
            "disturbed": sum(bool(r.get("disturbed")) for r in rs),
        })
    return out


def lookup(summary: Iterable[Dict[str, Any]], variant: str, mode: str, conc: int) -> Optional[Dict[str, Any]]:
    for s in summary:
        if (s["variant"], s["mode"], s["concurrency"]) == (variant, mode, conc):
            return s
    return None


def bottleneck(result: Dict[str, Any]) -> Dict[str, float]:
    """The most CPU (cores) wrk and the other processes used during any run: ``result["wrk_bottleneck"]``."""
    return {"max_wrk_cpu_cores": round(max(r["wrk_cpu"] for r in result["runs"]), 3),
            "max_other_cpu_cores": round(max(r["other_cpu"] for r in result["runs"]), 3)}


def targets(ratios: Dict[str, Optional[float]], minima: Dict[str, float]) -> Dict[str, dict]:
    """``result["targets"]``: each ratio's minimum and whether it is met."""
    return {k: {"min": v, "met": (ratios[k] or 0) >= v} for k, v in minima.items()}


def verdict(result: Dict[str, Any]) -> str:
    """The ratios against their targets, for the text."""
    r = result["ratios"]
    return ", ".join(f"{k} = {r[k]} (target ≥ {t['min']}: {'met' if t['met'] else 'MISSED'})"
                     for k, t in result["targets"].items())


def load_note(result: Dict[str, Any]) -> str:
    """What wrk and the other processes used at most, for the text (without the full stop)."""
    wb = result["wrk_bottleneck"]
    return (f"wrk used at most {wb['max_wrk_cpu_cores']:.2f} of a core; other processes at most "
            f"{wb['max_other_cpu_cores']:.2f} cores during a run")


def section_head(result: Dict[str, Any]) -> str:
    """The start of a README section: when and where it ran, and how long each run was."""
    m, cfg = result["machine"], result["config"]
    return (f"Last run {result['date']} on {m['cores']} cores ({m['cpu']}), wrk -t{cfg['wrk_threads']}, "
            f"{cfg['duration_s']:g} s per run after a {cfg['warmup_s']:g} s warm-up, {cfg['repeats']} interleaved "
            "repeats")


def groups(result: Dict[str, Any]) -> List[tuple]:
    """The (mode, concurrency) columns of a result's table (the groups of its plot), in order."""
    cfg = result["config"]
    return [(m, c) for m in cfg["modes"] for c in cfg["concurrencies"]]


def inprocess_medians(result: Dict[str, Any]) -> Dict[str, float]:
    """Median µs per call of each in-process timing, by name."""
    by_name: Dict[str, List[dict]] = {}
    for t in result.get("inprocess", []):
        by_name.setdefault(t["variant"], []).append(t)
    return {name: statistics.median(t["us_per_call"] for t in ts) for name, ts in by_name.items()}


def grid_table(result: Dict[str, Any], summary: List[Dict[str, Any]], cell: Callable[[Dict[str, Any]], str],
               extra: Optional[tuple] = None, others: Sequence[Sequence[str]] = ()) -> str:
    """Rows: variant (then ``extra`` = (title, value of a variant) as a second column, if given); columns:
    mode × concurrency; cells: ``cell(summary row)``, "–" where none. Then the rows ``others``, padded."""
    head = ["variant"] + ([extra[0]] if extra else []) + [f"{m} c={c}" for m, c in groups(result)]
    rows = [[f"`{v}`"] + ([extra[1](v)] if extra else [])
            + ["–" if s is None else cell(s) for s in (lookup(summary, v, m, c) for m, c in groups(result))]
            for v in result["config"]["variants"]]
    return md_table(head, rows + [list(r) + [""] * (len(head) - len(r)) for r in others])


def markdown_table(result: Dict[str, Any], summary: Optional[List[Dict[str, Any]]] = None) -> str:
    """Rows: variant; columns: mode × concurrency; cells: median req/s (p50 / p99 ms)."""
    others = [[f"`{name}`", f"{us:.1f} µs/call = {1e6 / us:,.0f} calls/s (in-process, no server)"]
              for name, us in inprocess_medians(result).items()]
    return grid_table(result, summary or summarise(result),
                      lambda s: f"**{s['rps_median']:,.0f}** req/s<br>p50 {s['p50_ms']:.2f} / p99 {s['p99_ms']:.2f} ms",
                      others=others)


def grid_bars(result: Dict[str, Any], summary: List[Dict[str, Any]], prefix: str, label: Callable[[str], str],
              group_width: float):
    """A figure of grouped bars: the median PREFIX (whiskers min–max) of each variant, labelled ``label(variant)``,
    in one group per (mode, concurrency). Returns (fig, ax)."""
    variants, gs = list(result["config"]["variants"]), groups(result)
    fig, ax = pyplot().subplots(figsize=(max(7, group_width * len(gs)), 4.8))
    for i, v in enumerate(variants):
        bars(ax, i, len(variants), [lookup(summary, v, m, c) for m, c in gs], prefix, label(v))
    ax.set_xticks(range(len(gs)))
    ax.set_xticklabels([f"{m}\nc={c}" for m, c in gs])
    return fig, ax


def plot(result: Dict[str, Any], path: Path, title: str = "", summary: Optional[List[Dict[str, Any]]] = None) -> None:
    """Grouped bars: median req/s per variant, one group per (mode, concurrency); whiskers min–max."""
    cfg = result["config"]
    fig, ax = grid_bars(result, summary or summarise(result), "rps", str, 2.2)
    ax.set_ylabel("requests / s (median of repeats; whiskers: min–max)")
    notes = [f"{name}: {us:.0f} µs/call ≈ {1e6 / us:,.0f} calls/s" for name, us in inprocess_medians(result).items()]
    m = result["machine"]
    sub = (f"{m['cores']} cores {m['cpu']}, wrk -t{cfg['wrk_threads']} -d{cfg['duration_s']:g}s, "
           f"{cfg['repeats']} interleaved repeats, {result['date'][:10]}")
    ax.set_title((title + "\n" if title else "") + sub + ("\n" + "; ".join(notes) if notes else ""), fontsize=9)
    ax.legend(fontsize=8)
    ax.margins(y=0.12)
    save(fig, path)
