"""The deployment artefacts as the tests read them: docker/<runtime>/Dockerfile (instructions joined across
continuation lines, ENV, COPY from the build context, the `pip install -r` steps), the requirement files' exact
pins, and the ServingRuntimes under servingruntimes/. Shared by tests/test_deploy.py and
tests/server/test_images.py (which replays each Dockerfile's COPY and pip steps)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
MANIFESTS = ROOT / "servingruntimes"


# -- Dockerfiles -----------------------------------------------------------------------------------------
@dataclass
class Dockerfile:
    path: Path
    instructions: List[Tuple[str, str]]  # (INSTRUCTION, arguments), continuation lines joined
    env: Dict[str, str] = field(default_factory=dict)  # every ENV, in order

    def all(self, name: str) -> List[str]:
        return [args for ins, args in self.instructions if ins == name]

    def one(self, name: str) -> str:
        found = self.all(name)
        assert len(found) == 1, f"{self.path}: {len(found)} {name} instructions"
        return found[0]

    @property
    def base(self) -> str:
        """The final stage's image (earlier stages only lend files through COPY --from)."""
        return self.all("FROM")[-1].split()[0]

    def context_copies(self) -> List[Tuple[List[str], str]]:
        """(sources, destination) of each COPY from the build context (not --from another stage)."""
        out = []
        for args in self.all("COPY"):
            if not args.startswith("--from="):
                *srcs, dest = [w for w in shlex.split(args) if not w.startswith("--")]
                out.append((srcs, dest))
        return out

    def pip_steps(self) -> List[Tuple[Optional[str], str]]:
        """(venv or None for the image's main environment, requirement file) of each `pip install -r` RUN."""
        out = []
        for args in self.all("RUN"):
            step = pip_step(args)
            if step:
                out.append((step[0], step[2]))
        return out


# the only form a Dockerfile may install with: tests/server/test_images.py replays exactly these steps
PIP_STEP = re.compile(r"(?:(?P<venv>/opt/[a-z]+)/bin/)?pip install --no-cache-dir -r (?P<req>docker/[a-z]+/[a-z-]+\.txt)"
                      r"|pip install --no-cache-dir -r docker/uv\.txt && (?P<uv>uv) pip install --system --no-cache "
                      r"--override docker/overrides\.txt -r (?P<uvreq>docker/[a-z]+/requirements\.txt)")
"""`pip install` of a requirement file (an engine's own venv: its pip), or, for the image's MLServer environment,
uv (docker/uv.txt) installing with docker/overrides.txt, as scripts/dev.sh does."""


def pip_step(args: str):
    """(venv or None, True when uv installs it, the requirement file) of a RUN that installs, else None."""
    m = PIP_STEP.fullmatch(" ".join(args.split()))
    if not m:
        return None
    return m.group("venv"), bool(m.group("uv")), m.group("req") or m.group("uvreq")


def parse_env(args: str) -> Dict[str, str]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # legacy `ENV KEY value with spaces`
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def read_dockerfile(path: Path) -> Dockerfile:
    instructions: List[Tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        ins, _, args = line.partition(" ")
        instructions.append((ins.upper(), args.strip()))
    df = Dockerfile(path, instructions)
    for args in df.all("ENV"):
        df.env.update(parse_env(args))
    return df


def image_keys() -> List[str]:
    return sorted(p.parent.name for p in DOCKER.glob("*/Dockerfile"))


def dockerfile(key: str) -> Dockerfile:
    return read_dockerfile(DOCKER / key / "Dockerfile")


# -- requirement files -----------------------------------------------------------------------------------
CUDA_TORCH = "torch-cuda.txt"  # docker/<key>/torch-cuda.txt: the CUDA build of torch, installed first


def requirement_lines(path: Path) -> List[str]:
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln]


def exact_pins(lines: List[str]) -> Dict[str, str]:
    """name -> version of `name[extras]==version` lines (others skipped); any other specifier fails."""
    pins = {}
    for line in lines:
        if line.startswith(("-", ".")):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{line} is not an exact pin"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


# -- ServingRuntimes and other manifests ------------------------------------------------------------------
def manifest_files() -> List[Path]:
    return sorted(MANIFESTS.rglob("*.yaml"))


def load_all(path: Path) -> List[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def runtimes_by_name() -> Dict[str, dict]:
    out = {}
    for path in manifest_files():
        for obj in load_all(path):
            if obj["kind"] in ("ServingRuntime", "ClusterServingRuntime"):
                out[obj["metadata"]["name"]] = obj
    return out


def env_of(container: dict) -> Dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def overridden() -> set:
    """The packages docker/overrides.txt lifts above what a dependency declares."""
    return {canonicalize_name(Requirement(line).name) for line in requirement_lines(ROOT / "docker" / "overrides.txt")}


def unexpected_conflicts(pip_check: str) -> list:
    """`pip check`'s complaints other than the ones docker/overrides.txt makes on purpose (e.g. "mlserver 1.7.1 has
    requirement fastapi<0.116.0,>=0.88.0, but you have fastapi 0.165.0.")."""
    lifted = overridden()
    out = []
    for line in pip_check.splitlines():
        m = re.search(r"has requirement ([A-Za-z0-9_.-]+)", line)
        if line.strip() and not line.startswith("No broken requirements") and not (
                m and canonicalize_name(m.group(1)) in lifted):
            out.append(line)
    return out
