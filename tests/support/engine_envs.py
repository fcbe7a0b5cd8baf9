"""The engines' own environments on a development machine (`bash scripts/dev.sh setup` builds them, with the
versions of the images' engine.txt): the command each engine's variable names, or a skip where it is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINE_ENVS = {"MODELSERVE_VLLM_COMMAND": REPO / ".venv-vllm" / "bin" / "python",
               "MODELSERVE_INFINITY_COMMAND": REPO / ".venv-infinity" / "bin" / "infinity_emb"}


def engine_command(variable: str) -> str:
    """``$variable``, else the development environment's command; skips the test where it cannot run."""
    cmd = os.environ.get(variable) or str(ENGINE_ENVS[variable])
    if not os.access(cmd.split()[0], os.X_OK):
        venv = ENGINE_ENVS[variable].parents[1].name
        pytest.skip(f"no engine for ${variable} ({cmd}): run `bash scripts/dev.sh setup` (it builds {venv})")
    return cmd
