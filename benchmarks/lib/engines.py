"""The engines our KubeAIRuntime starts in vllm_bench.py and infinity_bench.py: their command and their port."""

from __future__ import annotations

import os
import re
import sys
import time

from lib import REPO


def command(variable: str, default: str, name: str) -> str:
    """The engine's command: ``$variable``, else ``default`` (a path in the repository); exits when its first
    word is not an executable."""
    cmd = os.environ.get(variable) or str(REPO / default)
    if not os.access(cmd.split()[0], os.X_OK):
        sys.exit(f"no {name} environment at {cmd}: run `bash scripts/dev.sh setup` or set ${variable}")
    return cmd


def start(srv, timeout: float = 400) -> tuple:
    """Starts ``srv`` (a tests.support.harness.Server whose model starts an engine); returns the engine's port (from the
    mlserver log line "engine ready on port N") and the seconds it took. Stops ``srv`` when there is none."""
    t0 = time.monotonic()
    srv.start(timeout=timeout)
    ports = re.findall(r"engine ready on port (\d+)", srv.log())
    if not ports:
        srv.stop()
        raise RuntimeError(f"no 'engine ready on port N' in the mlserver log:\n{srv.log()[-3000:]}")
    return int(ports[-1]), time.monotonic() - t0
