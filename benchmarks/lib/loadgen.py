"""The load generator of the aiohttp benchmarks (vllm_bench.py, whisper_bench.py, infinity_bench.py).

- ``closed_loop``: an asyncio + aiohttp client in the benchmark process; N workers send requests back to back
  (keep-alive, a new client session per run); after a warm-up, the requests that finish inside a fixed
  window count, and the CPU of every role is taken over that window (``lib.cpu.CPU``).
  ``closed_loop_threads``: the same with N threads calling a function in this process (no server).
- ``measured``: the rule each run follows: wait for the machine to be quiet first, and run it again (up to
  --retries times) when other processes took more than --max-other-cpu cores during it.
- ``rotate``: the order of the interleaved runs: each repeat starts one place further down the list.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from typing import Any, Awaitable, Callable, List, Sequence, Tuple

from lib.cpu import CPU, wait_quiet

HEADERS = {"Content-Type": "application/json"}
Done = List[Tuple[float, float, Any]]  # (start, end, what the call returned) of each request counted


def new_session(timeout: float = 120):
    """A session of its own per run: no pooled connection outlives the server's keep-alive (uvicorn: 5 s)."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=timeout))


async def post_json(session, url: str, data: bytes, headers: dict = HEADERS) -> dict:
    """POST ``data``; the answer must be a 200 with a JSON body, which is returned."""
    async with session.post(url, data=data, headers=headers) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url} answered {r.status}: {body[:500]!r}")
    return json.loads(body)


def rotate(seq: Sequence, k: int) -> Sequence:
    """``seq`` rotated left by ``k``: the order of the runs in repeat ``k``."""
    k %= len(seq)
    return seq[k:] + seq[:k]


async def closed_loop(call: Callable[[Any, int], Awaitable[Any]], conc: int, warmup: float, duration: float,
                      cpu: CPU, timeout: float = 120) -> Tuple[Done, dict]:
    """``conc`` workers on a new session, each awaiting ``call(session, k)`` back to back (worker i with k = i,
    i + 1, ...: round robin over the requests) until the window is over; the window opens ``warmup`` s after
    the start and lasts ``duration`` s. A request's time includes ``call``'s checks of its answer.

    Returns the requests that finished inside the window, and ``cpu``'s figures over it."""
    async with new_session(timeout) as session:
        done: Done = []
        t0 = time.perf_counter() + warmup
        t1 = t0 + duration

        async def worker(k: int) -> None:
            while time.perf_counter() < t1:
                s = time.perf_counter()
                value = await call(session, k)
                done.append((s, time.perf_counter(), value))
                k += 1

        async def window() -> dict:
            await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
            cpu.start()
            await asyncio.sleep(max(0.0, t1 - time.perf_counter()))
            return cpu.stop()

        *_, usage = await asyncio.gather(*[worker(i) for i in range(conc)], window())
    return [d for d in done if t0 <= d[1] < t1], usage


def closed_loop_threads(call: Callable[[int], Any], conc: int, warmup: float, duration: float,
                        cpu: CPU) -> Tuple[Done, dict]:
    """``closed_loop`` with ``conc`` threads of this process calling ``call(k)``; the first error is raised
    once they have all stopped."""
    done: Done = []
    errors: List[BaseException] = []
    t0 = time.perf_counter() + warmup
    t1 = t0 + duration

    def worker(k: int) -> None:
        try:
            while time.perf_counter() < t1:
                s = time.perf_counter()
                value = call(k)
                done.append((s, time.perf_counter(), value))
                k += 1
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conc)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, t0 - time.perf_counter()))
    cpu.start()
    time.sleep(max(0.0, t1 - time.perf_counter()))
    usage = cpu.stop()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [d for d in done if t0 <= d[1] < t1], usage


def latency(done: Done, allow_empty: bool = False) -> dict:
    """Median and p99 latency (ms) of the counted requests; none counted is an error unless ``allow_empty``
    (then both are NaN)."""
    lat = sorted((e - s) * 1e3 for s, e, _ in done)
    if not lat:
        if not allow_empty:
            raise RuntimeError("no request finished inside the window: make --duration longer")
        lat = [float("nan")]
    return {"latency_p50_ms": statistics.median(lat), "latency_p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


async def measured(run: Callable[[], Awaitable[dict]], what: str, args, log: Callable[[str], None], cpu: CPU,
                   **labels) -> dict:
    """One run by the rule: wait (up to ``args.quiet_wait`` s) until other processes use less than
    ``args.max_other_cpu`` cores, ``await run()``, and run it again (up to ``args.retries`` times) while they
    took more than that during it (its ``cpu["other"]``). Returns the last run's figures with ``labels``,
    ``attempts`` and ``disturbed`` (still over the limit) added."""
    for attempt in range(args.retries + 1):
        await asyncio.to_thread(wait_quiet, args.max_other_cpu, args.quiet_wait, log, cpu)
        res = await run()
        if res["cpu"]["other"] < args.max_other_cpu:
            break
        log(f"  {what}: disturbed (other processes {res['cpu']['other']:.2f} cores)")
    res.update(labels, attempts=attempt + 1, disturbed=res["cpu"]["other"] >= args.max_other_cpu)
    return res
