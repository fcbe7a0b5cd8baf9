"""Opportunistic batching: requests that arrive while the model is busy share its next call.

Unlike MLServer's adaptive batching it never waits for a batch to fill, so a lone request pays no
latency, while under concurrency one model call serves many requests and the thread hop is paid once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Deque, Dict, Hashable, List, Optional, Sequence, Tuple

Rows = Any  # an ndarray or DataFrame whose first axis is the batch
Outputs = Dict[str, Any]


class Coalescer:
    """Runs ``fn(key, rows) -> {name: array}`` in a thread on the concatenation of queued requests.

    Requests are merged only with others of the same ``key`` (same outputs, columns and dtypes), and
    each caller gets exactly its own rows back. If a merged call fails, its requests are retried one by
    one so an error reaches only the request that caused it.
    """

    def __init__(
        self,
        fn: Callable[[Hashable, Rows], Outputs],
        concat: Callable[[Sequence[Rows]], Rows],
        max_rows: int = 4096,
        enabled: bool = True,
    ):
        self._fn = fn
        self._concat = concat
        self._max_rows = max_rows
        self._enabled = enabled
        self._queue: Deque[Tuple[Hashable, Rows, int, asyncio.Future]] = deque()
        self._busy = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelserve-model")

    async def __call__(self, key: Hashable, rows: Rows, n: int) -> Outputs:
        loop = asyncio.get_running_loop()
        if not self._enabled:
            return await loop.run_in_executor(self._executor, self._fn, key, rows)
        fut = loop.create_future()
        self._queue.append((key, rows, n, fut))
        if not self._busy:
            self._busy = True
            loop.create_task(self._drain())
        return await fut

    def _take(self) -> List[Tuple[Hashable, Rows, int, asyncio.Future]]:
        key = self._queue[0][0]
        batch, rest, total = [], deque(), 0
        while self._queue:
            item = self._queue.popleft()
            if item[0] == key and (not batch or total + item[2] <= self._max_rows):
                batch.append(item)
                total += item[2]
            else:
                rest.append(item)
        self._queue.extendleft(reversed(rest))
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch = self._take()
                key = batch[0][0]
                if len(batch) == 1:
                    await self._run_one(loop, batch[0])
                    continue
                try:
                    merged = self._concat([b[1] for b in batch])
                    outputs = await loop.run_in_executor(self._executor, self._fn, key, merged)
                except Exception:
                    for item in batch:
                        await self._run_one(loop, item)
                    continue
                start = 0
                for _, _, n, fut in batch:
                    if not fut.done():
                        fut.set_result({k: v[start : start + n] for k, v in outputs.items()})
                    start += n
        finally:
            self._busy = False

    async def _run_one(self, loop, item) -> None:
        key, rows, _, fut = item
        try:
            result = await loop.run_in_executor(self._executor, self._fn, key, rows)
        except Exception as exc:  # delivered to the one caller it belongs to
            if not fut.done():
                fut.set_exception(exc)
        else:
            if not fut.done():
                fut.set_result(result)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
