"""Supervises an engine that runs as its own server process (vLLM, Infinity, Ollama, ...).

The engine is started under ``guard.py`` on a free loopback port, waited for with a timeout and
progress logs, its output forwarded into MLServer's log with the model name in front, restarted with
backoff when it crashes and given up on after too many crashes. Requests ask ``check()`` first: while
the engine is down they get a 503 with ``Retry-After`` at once, never a hang.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Awaitable, Callable, Optional, Sequence

import aiohttp

from ..errors import ModelLoadError, Unavailable

logger = logging.getLogger("mlserver.modelserve")

GUARD = str(Path(__file__).with_name("guard.py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EngineProcess:
    """One engine server: ``argv(port)`` builds its command line for the port it is given."""

    def __init__(
        self,
        name: str,
        argv: Callable[[int], Sequence[str]],
        *,
        cleanup: Optional[str] = None,
        env: Optional[dict] = None,
        cwd: Optional[str] = None,
        health_path: str = "/health",
        start_timeout: float = 600.0,
        max_restarts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        stop_grace: float = 10.0,
        on_failed: Optional[Callable[[str], None]] = None,
        on_restarted: Optional[Callable[[], Awaitable[None]]] = None,
        log_lines: int = 50,
    ):
        self.name = name
        self._argv = argv
        self._env = env
        self._cwd = cwd
        self._health_path = health_path
        self.start_timeout = start_timeout
        self.max_restarts = max_restarts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._stop_grace = stop_grace
        self._on_failed = on_failed
        self._on_restarted = on_restarted  # runs before a restarted engine takes requests (e.g. reload a model)
        self._cleanup = cleanup
        self.tail: collections.deque[str] = collections.deque(maxlen=log_lines)

        self.state = "stopped"  # starting | ready | restarting | failed | stopped
        self.port = 0
        self.on_ready: Optional[Callable[[], None]] = None
        """called each time the engine is ready (a restart listens on a new port)"""
        self.restarts = 0  # restarts so far: what an operator (and the metrics) count, tests assert it
        self.failure: Optional[str] = None
        self._proc: Optional[subprocess.Popen] = None
        self._exited: Optional[asyncio.Future] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self._restart_task: Optional[asyncio.Task] = None
        self._retry_at = 0.0
        self._startup_seconds = 10.0  # the last observed start, until one is observed
        self._spawned_at = 0.0  # when the engine now starting was spawned (0: none is starting)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Starts the engine and waits until it answers; raises ModelLoadError with its last log lines."""
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self.state = "starting"
        try:
            await self._spawn_and_wait()
        except BaseException:
            await self.stop()
            raise
        self.state = "ready"
        self._loop.create_task(self._watch())

    async def stop(self) -> None:
        self.state = "stopped"
        if self._restart_task is not None:
            self._restart_task.cancel()
            self._restart_task = None
        await self._kill()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check(self) -> None:
        """Raises a 503 unless the engine is up; cheap enough to call on every request."""
        if self.state == "ready":
            return
        if self.state == "failed":
            raise Unavailable(f"model '{self.name}': engine failed and will not be restarted: {self.failure}")
        raise Unavailable(f"model '{self.name}': engine is {self.state}, retry later",
                          retry_after=round(self.expected_wait()))

    def expected_wait(self) -> float:
        """Seconds until the engine should answer again, for ``Retry-After``: the backoff left, plus its last
        observed start time less what this start has already taken (at least 1 s)."""
        now = time.monotonic()
        if self._spawned_at and now >= self._retry_at:  # starting now
            return max(1.0, self._startup_seconds - (now - self._spawned_at))
        return max(0.0, self._retry_at - now) + max(1.0, self._startup_seconds)

    def unavailable(self, exc: BaseException) -> Unavailable:
        """The error for a request whose connection to the engine broke (the engine died mid-request)."""
        if self.state != "ready":
            try:
                self.check()
            except Unavailable as err:
                return err
        # the engine died under this request and the watcher has not seen it yet: a restart is coming
        return Unavailable(f"model '{self.name}': engine connection failed: {exc}",
                           retry_after=round(self.expected_wait()))

    # -- internals ---------------------------------------------------------------------------------
    async def _spawn_and_wait(self) -> None:
        self.port = free_port()
        if self._cleanup:  # the guard removed it when the previous engine ended
            os.makedirs(self._cleanup, exist_ok=True)
        argv = [str(a) for a in self._argv(self.port)]
        logger.info("model '%s': starting engine: %s", self.name, " ".join(argv))
        env = dict(os.environ)
        env.update(self._env or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        started = self._spawned_at = time.monotonic()
        try:
            # Spawned from the event loop's thread: the guard's parent-death signal follows that thread.
            self._proc = subprocess.Popen(
                [sys.executable, "-I", GUARD, "--grace", str(self._stop_grace),
                 *(["--cleanup", self._cleanup] if self._cleanup else []), "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self._cwd,
                env=env,
                # its own process group (what the guard kills), but MLServer's session: with the kernel's
                # autogroup scheduling a session of its own would let a busy-polling engine starve
                # MLServer of CPU (measured: MLServer waited for a core 73-92% of the time, c=8 at 0.2x)
                process_group=0,
            )
        except OSError as exc:
            raise ModelLoadError(self.name, f"cannot start the engine: {exc}") from None
        self._exited = self._loop.create_future()
        threading.Thread(target=self._pump, args=(self._proc, self._exited), daemon=True,
                         name=f"engine-log-{self.name}").start()

        deadline = started + self.start_timeout
        next_note = started + 10
        while True:
            if self._exited.done():
                raise ModelLoadError(
                    self.name, f"engine exited with status {self._exited.result()} while starting; "
                    f"last output: {self.last_lines()}")
            if await self._healthy():
                self._startup_seconds, self._spawned_at = time.monotonic() - started, 0.0
                logger.info("model '%s': engine ready on port %d after %.1f s",
                            self.name, self.port, self._startup_seconds)
                if self.on_ready is not None:
                    self.on_ready()
                return
            now = time.monotonic()
            if now > deadline:
                raise ModelLoadError(
                    self.name, f"engine did not answer within {self.start_timeout:.0f} s "
                    f"(start_timeout); last output: {self.last_lines()}")
            if now > next_note:
                logger.info("model '%s': waiting for the engine (%.0f s)", self.name, now - started)
                next_note = now + 10
            await asyncio.wait({self._exited}, timeout=0.5)

    async def _healthy(self) -> bool:
        try:
            async with self._session.get(self.base_url + self._health_path) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    def _pump(self, proc: subprocess.Popen, exited: asyncio.Future) -> None:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.tail.append(line)
                logger.info("[%s] %s", self.name, line)
        code = proc.wait()
        self._loop.call_soon_threadsafe(lambda: exited.done() or exited.set_result(code))

    def last_lines(self, n: int = 8) -> str:
        lines = list(self.tail)[-n:]
        return " | ".join(lines) if lines else "(no output)"

    async def _watch(self) -> None:
        """Waits for the running engine to exit; an exit we did not ask for starts the restart loop."""
        exited = self._exited
        code = await exited
        if self.state != "ready" or exited is not self._exited:
            return
        logger.warning("model '%s': engine exited with status %s; last output: %s",
                       self.name, code, self.last_lines())
        self._restart_task = self._loop.create_task(self._restart_loop())

    async def _restart_loop(self) -> None:
        failures = 0
        while self.state not in ("stopped",):
            failures += 1
            if failures > self.max_restarts:
                self.state = "failed"
                self.failure = (f"it crashed {failures} times in a row (max_restarts {self.max_restarts}); "
                                f"last output: {self.last_lines()}")
                logger.error("model '%s': %s", self.name, self.failure)
                if self._on_failed is not None:
                    self._on_failed(self.failure)
                return
            delay = min(self._max_backoff, self._backoff * 2 ** (failures - 1))
            self.state = "restarting"
            self._retry_at = time.monotonic() + delay
            logger.info("model '%s': restarting the engine in %.0f s (attempt %d of %d)",
                        self.name, delay, failures, self.max_restarts)
            await asyncio.sleep(delay)
            if self.state == "stopped":
                return
            try:
                await self._kill()
                await self._spawn_and_wait()
                if self._on_restarted is not None:
                    await self._on_restarted()
            except ModelLoadError as exc:
                logger.warning("model '%s': engine restart failed: %s", self.name, exc.reason)
                continue
            self.restarts += 1
            self.state = "ready"
            self._restart_task = None
            self._loop.create_task(self._watch())
            return

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)  # the guard stops the whole tree, SIGKILL after its grace
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), self._stop_grace + 5)
        except asyncio.TimeoutError:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
