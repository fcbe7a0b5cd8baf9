"""A closed-loop load generator (aiohttp, one event loop) and an RSS sampler for a server's process tree.

Shared by `tests/server/test_reliability_corpus.py` (a small run) and `benchmarks/reliability.py` (10,000
requests per model and the soak). The client's own CPU time is reported with the figures, so that a run
where the generator, not the server, was the limit shows as such.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import threading
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence

import psutil


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


async def _drive(url: str, body: bytes, requests: Optional[int], seconds: Optional[float], concurrency: int,
                 latencies: List[float], errors: Counter) -> None:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    deadline = time.monotonic() + seconds if seconds else None
    left = [requests if requests is not None else math.inf]
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker() -> None:
            while left[0] > 0 and (deadline is None or time.monotonic() < deadline):
                left[0] -= 1
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        if r.status != 200:
                            errors[f"HTTP {r.status}"] += 1
                except Exception as exc:  # counted, never raised: a load run reports every failure
                    errors[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def load(url: str, body: dict, requests: Optional[int] = None, concurrency: int = 32,
         seconds: Optional[float] = None) -> Dict:
    """``requests`` POSTs of ``body`` (or as many as fit in ``seconds``) with ``concurrency`` in flight."""
    raw = json.dumps(body).encode()
    latencies: List[float] = []
    errors: Counter = Counter()
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(_drive(url, raw, requests, seconds, concurrency, latencies, errors))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    lat = sorted(latencies)
    ms = lambda q: round(percentile(lat, q) * 1000, 2)  # noqa: E731
    return {
        "requests": len(lat), "concurrency": concurrency, "errors": sum(errors.values()),
        "error_kinds": dict(errors), "throughput_rps": round(len(lat) / wall, 1) if wall else 0.0,
        "p50_ms": ms(50), "p90_ms": ms(90), "p99_ms": ms(99), "max_ms": round(lat[-1] * 1000, 2) if lat else None,
        "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
        "wall_s": round(wall, 2), "client_cpu_s": round(cpu, 2),
        "client_cpu_share": round(cpu / wall, 3) if wall else None,
    }


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MLServer's workers, engines), in MB."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 1e6


class RSSSampler:
    """Samples ``tree_rss_mb(pid)`` every ``interval`` seconds in a thread: ``samples`` is [(seconds, MB)]."""

    def __init__(self, pid: int, interval: float = 5.0):
        self.pid, self.interval = pid, interval
        self.samples: List[tuple] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while True:
            self.samples.append((round(time.monotonic() - t0, 2), round(tree_rss_mb(self.pid), 2)))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "RSSSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def slope_mb_per_min(samples: Sequence[tuple], warmup_s: float) -> Dict:
    """Least-squares slope of RSS over time after ``warmup_s``, with its standard error and the noise."""
    pts = [(t / 60.0, mb) for t, mb in samples if t >= warmup_s and mb == mb]
    if len(pts) < 3:
        return {"slope_mb_per_min": None, "stderr": None, "points": len(pts)}
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    resid = [y - (my + slope * (x - mx)) for x, y in pts]
    sigma = math.sqrt(sum(r * r for r in resid) / (len(pts) - 2))
    stderr = sigma / math.sqrt(sxx)
    return {"slope_mb_per_min": round(slope, 4), "stderr": round(stderr, 4), "noise_mb": round(sigma, 3),
            "points": len(pts), "rss_start_mb": round(ys[0], 1), "rss_end_mb": round(ys[-1], 1),
            "rss_max_mb": round(max(ys), 1)}
