"""The coalescer merges concurrent requests into one call and gives each its own rows or its own error."""

import asyncio
import threading

import numpy as np

from modelserve.batching import Coalescer


def run(coro):
    return asyncio.run(coro)


def test_concurrent_calls_share_model_calls_and_get_their_rows():
    calls = []
    gate = threading.Event()

    def fn(key, rows):
        gate.wait(1)
        calls.append(len(rows))
        return {"double": rows * 2}

    async def main():
        c = Coalescer(fn, np.concatenate)
        parts = [np.full((n, 2), n) for n in (1, 2, 3, 4, 5)]
        tasks = [asyncio.create_task(c("k", p, len(p))) for p in parts]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(*tasks)
        c.close()
        return parts, results

    parts, results = run(main())
    for p, r in zip(parts, results):
        np.testing.assert_array_equal(r["double"], p * 2)
    assert sum(calls) == 15 and len(calls) < 5  # merged: fewer model calls than requests


def test_different_keys_are_never_merged():
    seen = []

    def fn(key, rows):
        seen.append((key, len(rows)))
        return {"y": rows}

    async def main():
        c = Coalescer(fn, np.concatenate)
        out = await asyncio.gather(c("a", np.ones((2, 1)), 2), c("b", np.zeros((3, 1)), 3), c("a", np.ones((1, 1)), 1))
        c.close()
        return out

    out = run(main())
    assert [len(o["y"]) for o in out] == [2, 3, 1]
    assert all(k in ("a", "b") for k, _ in seen)
    assert ("b", 3) in seen


def test_an_error_reaches_only_the_request_that_caused_it():
    def fn(key, rows):
        if (rows < 0).any():
            raise ValueError("negative")
        return {"y": rows + 1}

    async def main():
        c = Coalescer(fn, np.concatenate)
        res = await asyncio.gather(c("k", np.ones(2), 2), c("k", -np.ones(1), 1), c("k", np.zeros(3), 3),
                                   return_exceptions=True)
        c.close()
        return res

    ok1, bad, ok2 = run(main())
    assert ok1["y"].tolist() == [2, 2] and ok2["y"].tolist() == [1, 1, 1]
    assert isinstance(bad, ValueError)


def test_disabled_runs_each_call_alone():
    sizes = []

    def fn(key, rows):
        sizes.append(len(rows))
        return {"y": rows}

    async def main():
        c = Coalescer(fn, np.concatenate, enabled=False)
        await asyncio.gather(*[c("k", np.ones(2), 2) for _ in range(4)])
        c.close()

    run(main())
    assert sizes == [2, 2, 2, 2]
