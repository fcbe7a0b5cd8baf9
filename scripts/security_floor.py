"""Checks every environment modelserve ships against security-floor.toml (tests/test_security_floor.py runs it).

Environments: the Python running this (the MLServer environment, .venv), the engines' venvs (.venv-vllm,
.venv-infinity, or $MODELSERVE_VLLM_COMMAND / $MODELSERVE_INFINITY_COMMAND's), and the images' pinned files
(docker/constraints.txt for every image's MLServer environment, docker/<runtime>/engine.txt for an engine's).
`python scripts/security_floor.py` prints one line per (environment, package) and exits 1 on a violation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FLOOR = ROOT / "security-floor.toml"
_VERSIONS = ("import importlib.metadata as m, json; "
             "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")


@dataclass
class Finding:
    environment: str
    package: str
    installed: str
    minimum: str
    excepted: Optional[str] = None  # the exception's reason, when one covers it

    @property
    def below(self) -> bool:
        return Version(self.installed) < Version(self.minimum)


def load(path: Path = FLOOR) -> dict:
    return tomllib.loads(path.read_text())


def installed(python: str) -> Dict[str, str]:
    """name -> version of what the interpreter ``python`` has installed."""
    out = subprocess.run([python, "-c", _VERSIONS], capture_output=True, text=True, timeout=120, check=True)
    return {canonicalize_name(k): v for k, v in json.loads(out.stdout).items()}


def pinned(path: Path) -> Dict[str, str]:
    """name -> version of the ``name==version`` lines of a requirement file."""
    pins = {}
    for line in path.read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\[\],-]+)==([^\s;#]+)", line.split("#")[0].strip())
        if m:
            pins[canonicalize_name(m.group(1).split("[")[0])] = m.group(2)
    return pins


def _engine_python(env: str, default: str) -> Optional[str]:
    command = os.environ.get(env) or str(ROOT / default)
    python = Path(command).parent / "python"
    return str(python) if python.exists() else None


def environments() -> Dict[str, Dict[str, str]]:
    """environment name -> name -> version, for every environment that exists on this machine."""
    envs = {"mlserver": installed(sys.executable), "image:mlserver": pinned(ROOT / "docker" / "constraints.txt")}
    for name, var, default in (("vllm", "MODELSERVE_VLLM_COMMAND", ".venv-vllm/bin/python"),
                               ("infinity", "MODELSERVE_INFINITY_COMMAND", ".venv-infinity/bin/python")):
        python = _engine_python(var, default)
        if python:
            envs[name] = installed(python)
    for engine in sorted((ROOT / "docker").glob("*/engine.txt")):
        envs[f"image:{engine.parent.name}"] = pinned(engine)
    return envs


def check(floor: dict, envs: Dict[str, Dict[str, str]]) -> List[Finding]:
    """Every (environment, floor package) the environment has, below its minimum or not."""
    excepted = {(e["environment"], canonicalize_name(e["package"])): e["why"] for e in floor.get("exception", [])}
    found = []
    for env, versions in envs.items():
        for item in floor["floor"]:
            name = canonicalize_name(item["package"])
            if name in versions:
                base = env.split(":", 1)[-1]  # image:infinity is judged by the infinity environment's exceptions
                found.append(Finding(env, name, versions[name].split("+")[0], item["minimum"],
                                     excepted.get((base, name))))
    return found


def violations(findings: List[Finding]) -> List[Finding]:
    return [f for f in findings if f.below and not f.excepted]


def main() -> int:
    findings = check(load(), environments())
    for f in findings:
        state = "below, excepted" if f.below and f.excepted else "BELOW" if f.below else "ok"
        print(f"{f.environment:16} {f.package:18} {f.installed:>12} >= {f.minimum:<10} {state}")
    return 1 if violations(findings) else 0


if __name__ == "__main__":
    sys.exit(main())
