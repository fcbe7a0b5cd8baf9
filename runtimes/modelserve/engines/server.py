"""An engine that runs as its own OpenAI-compatible server: found, started, supervised, or attached.

vLLM and Infinity share this: each gives only its command line. The engine gets a TMPDIR of its own
(removed on stop, also by the guard when MLServer is killed) and a client (``upstream``) whose base URL
follows restarts; ``engine_url`` attaches to a server that already runs instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .. import metrics
from ..errors import ModelLoadError, Unavailable
from .openai_http import OpenAIUpstream
from .process import EngineProcess


def find_command(model: str, configured: Optional[str], env_var: str, program: str, what: str, hint: str) -> List[str]:
    """The engine's command: option, then ``$env_var``, then ``program`` on PATH; a load error naming all three."""
    text = configured or os.environ.get(env_var) or shutil.which(program)
    if not text:
        raise ModelLoadError(model, f"the {what} engine is not installed here: set ${env_var} (or the option "
                                    f"engine_command) to {hint}")
    argv = shlex.split(text)
    exe = argv[0]
    if not (os.path.isabs(exe) and os.access(exe, os.X_OK)) and not shutil.which(exe):
        raise ModelLoadError(model, f"{what} engine command not found or not executable: {exe}")
    return argv


def flag(args: Sequence[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


class ServerEngine:
    """One engine server for one model, or an already running one at ``engine_url``.

    ``argv(port)`` gives the command line for a free port; ``expected`` are the model ids the server must
    list at ``models_path`` when attached besides the model itself (its adapters).
    """

    what = "engine"
    models_path = "/v1/models"
    metrics_path: Optional[str] = "/metrics"
    """the engine's Prometheus metrics, re-exported on MLServer's metrics port (metrics.py); None: none"""

    def __init__(self, name: str, argv: Optional[Callable[[int], List[str]]], *, env: Dict[str, str], cwd: Path,
                 expected: Sequence[str], engine_url: Optional[str] = None, start_timeout: float = 600,
                 max_restarts: int = 5, on_failed: Optional[Callable[[str], None]] = None,
                 api_key: Optional[str] = None, health_path: str = "/health"):
        self.name = name
        self.expected = list(expected)
        self._metrics_url: Optional[str] = None  # where metrics.py was told this engine's metrics are
        self.process: Optional[EngineProcess] = None
        self._tmp: Optional[str] = None
        self._url = engine_url.rstrip("/") if engine_url else None
        if self._url is None:
            # Engines leave files in $TMPDIR even on a clean exit: a folder of their own, removed on stop.
            # Short, under the system's temp root: it may hold ZeroMQ sockets (paths of at most 107 characters).
            self._tmp = tempfile.mkdtemp(prefix=f"modelserve-{self.what.lower()}-")
            self.process = EngineProcess(
                name, argv, env={"TMPDIR": self._tmp, **env}, cwd=str(cwd), cleanup=self._tmp,
                health_path=health_path, start_timeout=start_timeout, max_restarts=max_restarts, on_failed=on_failed)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.upstream = OpenAIUpstream(name, self.base_url, self._connection_error, self._check, headers)

    def base_url(self) -> str:
        return self._url if self._url else self.process.base_url

    def _check(self) -> None:
        if self.process is not None:
            self.process.check()

    def _connection_error(self, exc: BaseException) -> Unavailable:
        if self.process is not None:
            return self.process.unavailable(exc)
        return Unavailable(f"model '{self.name}': engine at {self._url} is unreachable: {exc}", retry_after=5)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # nothing half-started stays behind a failed load
            raise

    def _metrics_at(self) -> None:
        if self.metrics_path:
            self._metrics_url = self.base_url() + self.metrics_path
            metrics.engine_at(self.name, self._metrics_url)

    async def _start(self) -> None:
        if self.process is not None:
            self.process.on_ready = self._metrics_at
            await self.process.start()
            return
        try:  # attached: the engine must already serve this model
            listed = await self.upstream.get(self.models_path)
        except Exception as exc:  # noqa: BLE001 - any failure here is a load error with its reason
            raise ModelLoadError(self.name, f"engine_url {self._url}: {exc}") from None
        ids = [m.get("id") for m in listed.get("data", [])] if isinstance(listed, dict) else []
        if self.name not in ids:
            raise ModelLoadError(self.name, f"engine_url {self._url} serves {ids}, not '{self.name}': start it "
                                            f"with --served-model-name {self.name}")
        missing = [i for i in self.expected if i not in ids]
        if missing:
            raise ModelLoadError(self.name, f"engine_url {self._url} does not serve adapter '{missing[0]}' "
                                            f"(it serves {ids}): start it with --lora-modules {missing[0]}=<path>")
        self._metrics_at()

    async def stop(self) -> None:
        if self._metrics_url:  # a reload's new copy may already have registered its own
            metrics.engine_gone(self.name, self._metrics_url)
        await self.upstream.close()
        if self.process is not None:
            await self.process.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
