"""Infinity (infinity-emb) as a supervised `infinity_emb v2` server: embeddings on its OpenAI API.

infinity-emb 0.0.78 pins numpy<2 and sentence-transformers<4, which MLServer's environment does not
satisfy, so it runs in an environment of its own (as in KubeAI), from option ``engine_command``,
``$MODELSERVE_INFINITY_COMMAND`` or ``infinity_emb`` on PATH: either its CLI or the Python of its
environment (run as ``python -m infinity_emb.cli``). Its routes get the ``/v1`` prefix so that the same
OpenAI client code (llm.EngineLLM) serves vLLM and Infinity; Infinity batches concurrent requests itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .server import ServerEngine, find_command, flag

COMMAND_ENV = "MODELSERVE_INFINITY_COMMAND"


def command(model: str, configured: Optional[str]) -> List[str]:
    return find_command(model, configured, COMMAND_ENV, "infinity_emb", "Infinity",
                        "the `infinity_emb` CLI or the Python of the environment infinity-emb is installed in "
                        "(`bash scripts/dev.sh setup` makes .venv-infinity and sets it)")


def launch(exe: Sequence[str]) -> List[str]:
    if os.path.basename(exe[-1]).startswith("python"):
        return [*exe, "-m", "infinity_emb.cli", "v2"]
    return [*exe, "v2"]


def serve_args(served_name: str, model_path: Path, port: int, extra: Sequence[str]) -> List[str]:
    """The user's ``args`` come last: Typer keeps the last value of a repeated option, so they win."""
    argv = ["--model-id", str(model_path), "--served-model-name", served_name,
            "--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1"]
    if not flag(extra, "--log-level"):
        argv += ["--log-level", "warning"]  # its access log would put a line per request in MLServer's log
    return argv + list(extra)


class InfinityEngine(ServerEngine):
    what = "Infinity"

    def __init__(self, name: str, model_path: Optional[Path], *, args: Sequence[str], env: Dict[str, str], cwd: Path,
                 engine_command: Optional[str] = None, engine_url: Optional[str] = None, start_timeout: float = 600,
                 max_restarts: int = 5, on_failed: Optional[Callable[[str], None]] = None):
        if engine_url is not None:
            build = None
        else:
            exe = command(name, engine_command)

            def build(port: int) -> List[str]:
                return [*launch(exe), *serve_args(name, model_path, port, args)]

            # the model is a local folder; Infinity's usage statistics would try to reach the internet
            env = {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1", **env}
        super().__init__(name, build, env=env, cwd=cwd, expected=[], engine_url=engine_url,
                         start_timeout=start_timeout, max_restarts=max_restarts, on_failed=on_failed)
