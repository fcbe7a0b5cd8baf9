"""Build every docker/<key>/Dockerfile daemonless and run the images as KServe and ModelMesh run them.

    python scripts/images.py build [KEY ...] [--no-cache] [--heavy]   # every image when no KEY
    python scripts/images.py bases [--force]                          # only the stand-in base images
    python scripts/images.py report [KEY ...] [--heavy]               # benchmarks/results/images.json
    python scripts/images.py table                                    # its table, as docs/images.md has it

Tools: buildah (`bud --isolation chroot`, no daemon), podman (`--cgroup-manager=cgroupfs run --runtime runc`)
and, for the stand-in bases, mmdebstrap; `bash scripts/dev.sh setup` installs them (setup_images).

The build machine's CA bundle and pip configuration reach the build as bind mounts on every RUN step
(`buildah bud --volume`), never as a layer: a temporary folder mounted over /root (the steps' HOME) holds
the pip.conf made here from `pip config list` (cert, indexes, find-links) and a uv.toml (system
certificates, the index), the local index folders they name are mounted inside it, and the machine's CA is
mounted over the image's own bundle. Every mount lands on a path the base already has, so that not even an
empty mount point is committed; tests/server/test_images_built.py reads every layer to check.

Tiers. The default (CPU) tier builds every image from its Dockerfile as written, except that the machine's
local wheels (find-links) take part in resolving, so that torch resolves to the CPU wheel on this disk, and
docker/huggingface/torch-cuda.txt is replaced, for the build only, by `torch==<its version>` (the CUDA index
it names, download.pytorch.org, is not reachable here). `--heavy` (MODELSERVE_HEAVY_IMAGES=1 in the tests)
resolves from PyPI alone: PyPI's Linux torch wheels are CUDA builds carrying their CUDA runtime as nvidia-*
wheels, and the vllm image gets vLLM's CUDA wheel. Each image is labelled with its tier
(modelserve.image-tier).

Base images that cannot be pulled here are made offline from Debian's packages and tagged with the base's own
name (STAND_INS says what each one differs in); a base already present (a real pull) is used as it is.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
MANIFESTS = ROOT / "servingruntimes"
REPORT = ROOT / "benchmarks" / "results" / "images.json"

PODMAN = ["podman", "--cgroup-manager=cgroupfs"]  # crun fails on this kernel's cgroups hybrid mode: runc
PODMAN_RUN = [*PODMAN, "run", "--runtime", "runc"]
BUILD_CA = "/etc/ssl/certs/ca-certificates.crt"  # where pip.conf and uv find the machine's CA in a RUN step
CONTAINERS_CONF = Path("/etc/containers/containers.conf")
HEAVY_KEYS = ("vllm",)  # images the default tier does not build: vLLM's CUDA wheel and its torch (GBs)


class ImageError(Exception):
    """A one-line reason the command cannot go on."""


# -- the images ------------------------------------------------------------------------------------------
def keys() -> List[str]:
    return sorted(p.parent.name for p in DOCKER.glob("*/Dockerfile"))


def check_keys(wanted: List[str]) -> List[str]:
    unknown = [k for k in wanted if k not in keys()]
    if unknown:
        raise ImageError(f"no image {', '.join(unknown)}: the images are {', '.join(keys())}")
    return wanted


def serving_runtime(key: str, modelmesh: bool = False) -> dict:
    path = MANIFESTS / (f"{key}-modelmesh.yaml" if modelmesh else f"{key}.yaml")
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "ServingRuntime"]
    return doc


def image_name(key: str) -> str:
    """The tag the ServingRuntime names (`modelserve-<key>:<version>`), which the build gives the image."""
    return serving_runtime(key)["spec"]["containers"][0]["image"]


def bases_of(key: str) -> List[str]:
    """Every FROM image of docker/<key>/Dockerfile (build stages included)."""
    out = []
    for line in (DOCKER / key / "Dockerfile").read_text().splitlines():
        m = re.match(r"\s*FROM\s+(\S+)", line, re.I)
        if m:
            out.append(m.group(1))
    return out


def qualified(image: str) -> str:
    """docker.io's own spelling of a short name, the name buildah looks up locally."""
    first = image.split("/")[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if "/" in image else f"docker.io/library/{image}"


def require(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        raise ImageError(f"{', '.join(missing)} not found: `bash scripts/dev.sh setup` installs them (apt)")
    if "podman" in tools and "default_ulimits" not in (CONTAINERS_CONF.read_text() if CONTAINERS_CONF.exists()
                                                        else ""):
        raise ImageError(f"{CONTAINERS_CONF} sets no default_ulimits: containers would try to raise rlimits, "
                         "which this machine refuses (`bash scripts/dev.sh setup` writes it)")


def run(cmd: List[str], timeout: float = 3600, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
        raise ImageError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n" + "\n".join(tail))
    return proc


def exists(image: str) -> bool:
    return subprocess.run([*PODMAN, "image", "exists", image], capture_output=True, timeout=60).returncode == 0


# -- stand-in bases --------------------------------------------------------------------------------------
@dataclass
class StandIn:
    """A base image made here in place of one that cannot be pulled."""
    differs: str  # what it lacks or changes, said in the docs and in the image's label
    packages: List[str] = field(default_factory=list)  # Debian packages (mmdebstrap) ...
    hooks: List[str] = field(default_factory=list)  # ... and customize hooks on its root ("$1")
    changes: List[str] = field(default_factory=list)  # image config (podman import --change)
    files: Dict[str, str] = field(default_factory=dict)  # or: a scratch image of these files (path -> source)


CLEAN_APT = 'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'
STAND_INS: Dict[str, StandIn] = {
    "python:3.11.7-slim-bookworm": StandIn(
        differs="Debian bookworm's own python3 (3.11.2) with its pip, not python.org's 3.11.7 built into "
                "/usr/local; same Debian release, same PATH and LANG",
        packages=["python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates"],
        # the official image's Python is not Debian's, so no PEP 668 marker: `pip install` works as root
        hooks=['rm -f "$1"/usr/lib/python3.*/EXTERNALLY-MANAGED', CLEAN_APT],
        changes=["ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
                 'CMD ["python3"]']),
    "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04": StandIn(
        differs="Debian bookworm (Python 3.11 from apt) in place of Ubuntu 24.04 (Python 3.12), and no CUDA "
                "12.8 or cuDNN libraries: the image serves on the CPU; NVIDIA's environment variables are set "
                "as the real base sets them",
        packages=["ca-certificates"], hooks=[CLEAN_APT],
        changes=["ENV PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin"
                 ":/usr/bin:/sbin:/bin", "ENV NVIDIA_VISIBLE_DEVICES=all",
                 "ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility", "ENV CUDA_VERSION=12.8.1",
                 'CMD ["bash"]']),
    "ollama/ollama:0.12.6": StandIn(
        differs="no Ollama: /usr/bin/ollama is tests/fakes/ollama.py, a server speaking Ollama's REST API over "
                "a toy model (it runs on the Python and aiohttp of the image it is copied into), and "
                "/usr/lib/ollama holds no GPU runners",
        files={"/usr/bin/ollama": "tests/fakes/ollama.py", "/usr/lib/ollama/STAND-IN": ""}),
}


def make_stand_in(name: str) -> float:
    """Makes the stand-in for base ``name`` (tagged with its qualified name); returns the seconds it took."""
    spec = STAND_INS[name]
    started = time.monotonic()
    label = f"LABEL modelserve.stand-in={json.dumps(spec.differs)}"
    with tempfile.TemporaryDirectory(prefix="modelserve-base-") as tmp:
        if spec.files:
            require("buildah")
            ctr = run(["buildah", "from", "scratch"]).stdout.strip()
            try:
                for dest, src in spec.files.items():
                    staged = Path(tmp) / Path(dest).name
                    text = (ROOT / src).read_text() if src else spec.differs + "\n"
                    staged.write_text(("#!/usr/bin/env python3\n" + text) if src.endswith(".py") else text)
                    staged.chmod(0o755)
                    run(["buildah", "copy", ctr, str(staged), dest])
                run(["buildah", "config", "--label", f"modelserve.stand-in={spec.differs}", ctr])
                run(["buildah", "commit", "--format", "docker", ctr, qualified(name)])
            finally:
                subprocess.run(["buildah", "rm", ctr], capture_output=True, timeout=120)
        else:
            require("mmdebstrap", "podman")
            tar = Path(tmp) / "rootfs.tar"
            run(["mmdebstrap", "--variant=minbase", f"--include={','.join(spec.packages)}",
                 *[f"--customize-hook={h}" for h in spec.hooks], "bookworm", str(tar)], timeout=1800)
            run([*PODMAN, "import", *[a for c in [*spec.changes, label] for a in ("--change", c)], str(tar),
                 qualified(name)], timeout=600)
    return time.monotonic() - started


def ensure_bases(*wanted: str, force: bool = False) -> Dict[str, float]:
    """Every base of the images ``wanted`` present locally: stand-ins made for those missing (all of them
    again with ``force``); returns base -> seconds for those made."""
    made: Dict[str, float] = {}
    for key in wanted:
        for base in bases_of(key):
            if base in made or exists(qualified(base)) and not force:
                continue
            if base not in STAND_INS:
                raise ImageError(f"base image {base} of docker/{key}/Dockerfile is not here and has no stand-in "
                                 f"(stand-ins: {', '.join(STAND_INS)})")
            made[base] = make_stand_in(base)
    return made


# -- what the build may read: the machine's CA and pip configuration, mounted ------------------------------
def machine_pip_config() -> Dict[str, str]:
    """`pip config list` of this machine (files and PIP_* variables), the last scope winning per key."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          timeout=60)
    out: Dict[str, str] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"[^.]*\.([\w-]+)='(.*)'$", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def machine_ca() -> Path:
    for candidate in (machine_pip_config().get("cert"), os.environ.get("SSL_CERT_FILE"), BUILD_CA):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ImageError("no CA bundle on this machine (pip's cert, SSL_CERT_FILE, /etc/ssl/certs): builds cannot "
                     "reach the package index")


def local_path(value: str) -> Optional[str]:
    path = value[len("file://"):] if value.startswith("file://") else value
    return path if path.startswith("/") else None


BUILD_HOME = "/root"  # the RUN steps' HOME (root's): mounted over, so nothing they read or write there is kept


@contextmanager
def build_mounts(key: str, heavy: bool) -> Iterator[List[str]]:
    """`--volume` arguments for every RUN step: a temporary folder over /root holding the pip.conf and uv.toml
    made here (pip and uv read ~/.config), the local package folders the machine's pip config names mounted
    inside it, and the machine's CA over the image's own bundle. Each lands on a path that exists in the
    base already, so no mount point is left in a layer either."""
    pip = machine_pip_config()
    with tempfile.TemporaryDirectory(prefix="modelserve-build-") as tmp:
        home = Path(tmp)
        volumes = [f"{home}:{BUILD_HOME}:rw", f"{machine_ca()}:{BUILD_CA}:ro"]
        conf = configparser.ConfigParser()
        conf["global"] = {"cert": BUILD_CA}
        local = 0
        for name in ("index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout", "find-links"):
            values = pip.get(name, "").split()
            if name in ("extra-index-url", "find-links"):  # the heavy tier resolves from PyPI alone
                kept = []
                for value in values:
                    path = local_path(value)
                    if heavy or not path or not Path(path).exists():
                        continue
                    local += 1
                    inside = f"{BUILD_HOME}/.build-local/{local}"
                    if value.startswith("file://"):  # a simple index links its files relatively (../../files)
                        folder = Path(path.rstrip("/"))
                        volumes.append(f"{folder.parent}:{inside}:ro")
                        kept.append(f"file://{inside}/{folder.name}")
                    else:
                        volumes.append(f"{path}:{inside}:ro")
                        kept.append(inside)
                values = kept
            if values:
                conf["global"][name] = " ".join(values)
        (home / ".config" / "pip").mkdir(parents=True)
        with open(home / ".config" / "pip" / "pip.conf", "w") as fh:
            conf.write(fh)
        uv = ["system-certs = true"]
        if pip.get("index-url", "").startswith("http"):
            uv.append(f"index-url = {json.dumps(pip['index-url'])}")
        (home / ".config" / "uv").mkdir(parents=True)
        (home / ".config" / "uv" / "uv.toml").write_text("\n".join(uv) + "\n")
        cuda_torch = DOCKER / key / "torch-cuda.txt"
        if cuda_torch.exists():  # its index (download.pytorch.org) is unreachable here: the version alone
            pin = [ln for ln in cuda_torch.read_text().splitlines() if ln.startswith("torch==")]
            (home / ".build-torch.txt").write_text("\n".join(pin) + "\n")
            volumes.append(f"{home}/.build-torch.txt:/opt/modelserve/docker/{key}/torch-cuda.txt:ro")
        yield [a for v in volumes for a in ("--volume", v)]


# -- build -----------------------------------------------------------------------------------------------
def build(key: str, no_cache: bool = False, heavy: bool = False, context: Path = ROOT,
          log: Optional[Path] = None) -> float:
    """buildah bud of docker/<key>/Dockerfile, tagged as its ServingRuntime names it; returns seconds."""
    require("buildah", "podman")
    ensure_bases(key)
    cmd = ["buildah", "bud", "--isolation", "chroot", "--layers", "--format", "docker", "--pull-never",
           "--ignorefile", str(DOCKER / key / "Dockerfile.dockerignore"), "-f", str(DOCKER / key / "Dockerfile"),
           "--label", f"modelserve.image-tier={'heavy' if heavy else 'cpu'}", "-t", image_name(key)]
    if no_cache:
        cmd.append("--no-cache")
    started = time.monotonic()
    with build_mounts(key, heavy) as mounts:
        proc = subprocess.run([*cmd, *mounts, str(context)], capture_output=True, text=True, timeout=7200)
    took = time.monotonic() - started
    if log:
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise ImageError(f"docker/{key}/Dockerfile did not build ({proc.returncode}):\n{tail}")
    return took


def size_mb(image: str) -> float:
    out = run([*PODMAN, "image", "inspect", "--format", "{{.Size}}", image]).stdout
    return round(int(out.strip()) / 1e6, 1)


PACKAGES = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")


def packages(image: str, python: str = "python") -> Dict[str, str]:
    """name -> version of every distribution in the image's Python ``python``."""
    out = run([*PODMAN_RUN, "--rm", "--network", "none", image, python, "-c", PACKAGES], timeout=300).stdout
    return dict(sorted(json.loads(out.strip().splitlines()[-1]).items(), key=lambda kv: kv[0].lower()))


# -- run as the pod would --------------------------------------------------------------------------------
def _free_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


@dataclass
class Pod:
    """One container started with podman from a ServingRuntime's container spec."""
    name: str
    args: List[str]  # podman run arguments (after `run`), image and command included
    probe: Optional[dict]  # the container's readinessProbe
    grace: int = 30  # terminationGracePeriodSeconds (Kubernetes' default)
    started: float = 0.0
    ports: Dict[int, int] = field(default_factory=dict)  # container port -> host port

    def start(self) -> "Pod":
        self.started = time.monotonic()
        run([*PODMAN_RUN, "-d", "--name", self.name, *self.args], timeout=300)
        for line in run([*PODMAN, "port", self.name]).stdout.splitlines():
            m = re.match(r"(\d+)/tcp -> [\d.]+:(\d+)", line.strip())
            if m:
                self.ports[int(m.group(1))] = int(m.group(2))
        return self

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{self.ports[port]}"

    def running(self) -> bool:
        return self.state()["Status"] == "running"

    def state(self) -> dict:
        return json.loads(run([*PODMAN, "inspect", "--format", "{{json .State}}", self.name]).stdout)

    def probe_once(self) -> bool:
        """One readiness probe as the kubelet sends it (httpGet on the container port, timeoutSeconds)."""
        get = self.probe["httpGet"]
        try:
            with urllib.request.urlopen(self.url(int(get["port"])) + get["path"],
                                        timeout=self.probe.get("timeoutSeconds", 1)) as res:
                return 200 <= res.status < 400
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 300, period: Optional[float] = None) -> float:
        """Polls the readiness probe every periodSeconds (or ``period``) after initialDelaySeconds, as the
        kubelet does; returns the seconds from `podman run` to the first success."""
        time.sleep(self.probe.get("initialDelaySeconds", 0))
        every = period if period is not None else self.probe.get("periodSeconds", 10)
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.probe_once():
                return time.monotonic() - self.started
            if not self.running():
                raise ImageError(f"container {self.name} exited before it was ready:\n{self.logs()[-3000:]}")
            time.sleep(every)
        raise ImageError(f"container {self.name} not ready after {timeout:.0f} s:\n{self.logs()[-3000:]}")

    def exec(self, *cmd: str, stdin: Optional[str] = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """A command in the pod's network namespace and as its user (a sidecar's view: ModelMesh's adapter)."""
        return subprocess.run([*PODMAN, "exec", "-i", self.name, *cmd], input=stdin, capture_output=True,
                              text=True, timeout=timeout)

    def logs(self) -> str:
        proc = subprocess.run([*PODMAN, "logs", self.name], capture_output=True, text=True, timeout=60)
        return proc.stdout + proc.stderr

    def stop(self) -> Tuple[int, float]:
        """SIGTERM (the image's stop signal), SIGKILL after the grace period, as the kubelet does; returns the
        exit code and the seconds it took."""
        started = time.monotonic()
        subprocess.run([*PODMAN, "stop", "--time", str(self.grace), self.name], capture_output=True,
                       timeout=self.grace + 60)
        took = time.monotonic() - started
        return int(self.state()["ExitCode"]), took

    def remove(self) -> None:
        subprocess.run([*PODMAN, "rm", "-f", "--time", "0", self.name], capture_output=True, timeout=120)


def security_args(container: dict, image: str) -> List[str]:
    """A container's securityContext as podman options; runAsNonRoot refused for a root user, as the kubelet
    refuses it."""
    sc = container.get("securityContext", {})
    out = []
    user = sc.get("runAsUser")
    if user is None:
        user = json.loads(run([*PODMAN, "image", "inspect", "--format", "{{json .Config.User}}", image]).stdout)
    if sc.get("runAsNonRoot") and str(user).split(":")[0] in ("", "0", "root"):
        raise ImageError(f"runAsNonRoot, but {image} runs as {user if user not in (None, '') else 'root'}: "
                         "the kubelet would refuse it")
    if user not in (None, ""):
        out += ["--user", f"{user}:{sc['runAsGroup']}" if "runAsGroup" in sc else str(user)]
    caps = sc.get("capabilities", {})
    out += [f"--cap-drop={c}" for c in caps.get("drop", [])] + [f"--cap-add={c}" for c in caps.get("add", [])]
    if sc.get("allowPrivilegeEscalation") is False:
        out += ["--security-opt", "no-new-privileges"]
    if sc.get("privileged"):
        out.append("--privileged")
    if sc.get("readOnlyRootFilesystem"):
        out.append("--read-only")
    return out


def volume_args(spec: dict, container: dict) -> List[str]:
    """The runtime's emptyDir volumes as tmpfs mounts owned by the container's user (podman's `U`: its tmpfs
    `mode` is not honoured here; an emptyDir is writable by any uid)."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    out = []
    for mount in container.get("volumeMounts", []):
        vol = volumes[mount["name"]]
        if "emptyDir" not in vol:
            raise ImageError(f"volume {mount['name']}: only emptyDir volumes can be run here")
        size = vol["emptyDir"].get("sizeLimit")
        opts = "rw,U" + (f",size={size.replace('Gi', 'g').replace('Mi', 'm')}" if size else "")
        out += ["--tmpfs", f"{mount['mountPath']}:{opts}"]
    return out


def resource_args(container: dict) -> List[str]:
    """CPU and memory limits (accelerators are not lent to these containers)."""
    limits = container.get("resources", {}).get("limits", {})
    out = []
    if "memory" in limits:
        out += ["--memory", limits["memory"].replace("Gi", "g").replace("Mi", "m")]
    return out


def pod_args(spec: dict, container: dict, env: Dict[str, str]) -> List[str]:
    image = container["image"]
    out = [*security_args(container, image), *volume_args(spec, container), *resource_args(container)]
    for name, value in env.items():
        out += ["--env", f"{name}={value}"]
    return out


def example_isvc(key: str) -> dict:
    """The RawDeployment InferenceService of servingruntimes/examples (gRPC reaches the pod there)."""
    path = MANIFESTS / "examples" / f"{key}-raw-pvc.yaml"
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "InferenceService"]
    return doc


def kserve_pod(key: str, model_dir: Path, env: Optional[Dict[str, str]] = None,
               isvc: Optional[dict] = None) -> Pod:
    """The predictor pod of ``isvc`` (default: the key's RawDeployment example) on modelserve-<key>: the
    ServingRuntime's container with the InferenceService's model env merged in and `{{.Name}}` filled, the
    model where the storage initializer leaves it (/mnt/models, read-only), every container port published
    on 127.0.0.1 (gRPC 8081 too: a RawDeployment Service can expose it)."""
    isvc = isvc or example_isvc(key)
    sr = serving_runtime(key)
    (container,) = sr["spec"]["containers"]
    name = isvc["metadata"]["name"]
    model = isvc["spec"]["predictor"]["model"]
    merged = {e["name"]: e["value"].replace("{{.Name}}", name) for e in container.get("env", [])}
    merged.update({e["name"]: e["value"] for e in model.get("env", [])})
    merged.update(env or {})
    ports = [p["containerPort"] for p in container.get("ports", [])] + [int(merged.get("MLSERVER_GRPC_PORT", 8081))]
    args = [*pod_args(sr["spec"], container, merged),
            *[a for p in ports for a in ("--publish", f"127.0.0.1::{p}")],
            "--volume", f"{model_dir}:/mnt/models:ro", container["image"],
            *container.get("command", []), *container.get("args", []), *model.get("args", [])]
    grace = isvc["spec"]["predictor"].get("terminationGracePeriodSeconds", 30)
    return Pod(_free_name(f"ms-{key}"), args, container.get("readinessProbe"), grace)


def modelmesh_pod(key: str, models: Path) -> Pod:
    """The runtime container of modelserve-<key>-modelmesh as ModelMesh starts it: the ServingRuntime's env
    (MLServer on 127.0.0.1: only the adapter, in the same pod, talks to it), the pod's shared /models
    emptyDir (here ``models``: the puller's model files and the adapter's model-settings.json under
    MLSERVER_MODELS_DIR), no readiness probe of its own (the adapter waits on gRPC)."""
    sr = serving_runtime(key, modelmesh=True)
    (container,) = sr["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    args = [*pod_args(sr["spec"], container, env), "--volume", f"{models}:/models:rw", container["image"],
            *container.get("command", []), *container.get("args", [])]
    return Pod(_free_name(f"mm-{key}"), args, None)


# -- the report ------------------------------------------------------------------------------------------
def kept_paths(key: str) -> List[str]:
    """What docker/<key>/Dockerfile.dockerignore keeps of the build context."""
    lines = (DOCKER / key / "Dockerfile.dockerignore").read_text().splitlines()
    return [ln[1:].rstrip("/") for ln in (s.strip() for s in lines) if ln.startswith("!")]


def rebuild_after_source_change(key: str, heavy: bool) -> float:
    """Builds from a copy of the context whose runtime source differs by one comment line (the working tree
    untouched), as after a source-only change; then rebuilds the tag from the tree (cached)."""
    with tempfile.TemporaryDirectory(prefix="modelserve-ctx-") as tmp:
        for rel in kept_paths(key):
            src, dst = ROOT / rel, Path(tmp) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
            else:
                shutil.copy(src, dst)
        with open(Path(tmp) / "runtimes" / "modelserve" / "__init__.py", "a") as fh:
            fh.write(f"# a source-only change ({time.time()})\n")
        took = build(key, heavy=heavy, context=Path(tmp))
    build(key, heavy=heavy)
    return took


def served(junit: Path) -> Dict[Tuple[str, str], bool]:
    """(way, key) -> passed, from tests/server/test_images_built.py's junit report."""
    import xml.etree.ElementTree as ET

    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        m = re.match(r"test_image_serves_the_(kserve|modelmesh)_way\[(\w+)\]", name)
        way, key = (m.group(1), m.group(2)) if m else ("engine", "vllm") if name.startswith(
            "test_vllm_image_engine_env") else (None, None)
        if way:
            out[(way, key)] = not any(c.tag in ("failure", "error", "skipped") for c in case)
    return out


def report(wanted: List[str], heavy: bool) -> dict:
    """Cold build, rebuild after a source change, size, packages, ready time (KServe way, one example model of
    settings/, readiness polled every 0.25 s) and the served_* results of the real-podman tests."""
    sys.path.insert(0, str(ROOT))
    from tests.support.image_models import kserve_model  # the same models the tests serve

    junit = Path(tempfile.mkdtemp(prefix="modelserve-junit-")) / "junit.xml"
    results = {}
    bases = {}
    for key in wanted:
        for base, secs in ensure_bases(key).items():
            bases[base] = round(secs, 1)
        entry: dict = {"built": False}
        results[key] = entry
        entry["build_s"] = round(build(key, no_cache=True, heavy=heavy), 1)
        entry["built"] = True
        entry["rebuild_s"] = round(rebuild_after_source_change(key, heavy), 1)
        image = image_name(key)
        entry["size_mb"] = size_mb(image)
        entry["tier"] = "heavy" if heavy else "cpu"
        entry["packages"] = packages(image)
        engine = re.search(r"python3 -m venv (/opt/(?!venv)\w+)", (DOCKER / key / "Dockerfile").read_text())
        if engine:
            entry["engine_packages"] = packages(image, f"{engine.group(1)}/bin/python")
        if key in HEAVY_KEYS:  # vLLM's CUDA wheel serves only on a GPU
            continue
        with tempfile.TemporaryDirectory(prefix="modelserve-model-") as tmp:
            model, env = kserve_model(key, Path(tmp))
            pod = kserve_pod(key, model, env).start()
            try:
                entry["ready_s"] = round(pod.wait_ready(timeout=900, period=0.25), 1)
            finally:
                pod.remove()
        save({key: entry}, bases, heavy)  # what is measured so far survives a later failure
    env = {**os.environ, **({"MODELSERVE_HEAVY_IMAGES": "1"} if heavy else {}),
           "MODELSERVE_IMAGE_KEYS": ",".join(wanted)}
    subprocess.run([sys.executable, "-m", "pytest", "tests/server/test_images_built.py", "-q", "-k",
                    "serves or engine_env", "-p", "no:cacheprovider", f"--junitxml={junit}"], cwd=ROOT, env=env,
                   timeout=7200)
    ok = served(junit)
    for key, entry in results.items():
        if key in HEAVY_KEYS:
            entry["served_kserve"] = entry["served_modelmesh"] = None  # needs a GPU
            entry["engine_imports"] = ok.get(("engine", key), False)
        else:
            entry["served_kserve"] = ok.get(("kserve", key), False)
            entry["served_modelmesh"] = ok.get(("modelmesh", key), False)
    return save(results, bases, heavy)


def save(results: Dict[str, dict], bases: Dict[str, float], heavy: bool) -> dict:
    """Merges ``results`` into images.json (re-read: another report may have written it meanwhile)."""
    old = json.loads(REPORT.read_text()) if REPORT.exists() else {"images": {}}
    for key, entry in results.items():  # a heavy build of an image the CPU tier has goes beside it
        if heavy and old["images"].get(key, {}).get("tier") == "cpu":
            old["images"][key]["heavy"] = dict(sorted(entry.items()))
        else:
            old["images"][key] = dict(sorted(entry.items()))
    old["stand_in_bases"] = {name: s.differs for name, s in STAND_INS.items()}
    if bases:
        old.setdefault("stand_in_base_build_s", {}).update(bases)
    old["machine"] = f"{os.cpu_count()} cores; buildah {tool_version('buildah')}, podman {tool_version('podman')}"
    REPORT.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")
    return old


TABLE_START, TABLE_END = "<!-- images.json table: scripts/images.py table -->", "<!-- end of table -->"


def table(data: dict) -> str:
    """The docs table of a report (docs/images.md holds it between TABLE_START and TABLE_END)."""
    def cell(v, unit=""):
        return "" if v is None else f"{v:g}{unit}" if isinstance(v, (int, float)) and not isinstance(v, bool) else (
            "yes" if v is True else "no" if v is False else str(v))

    rows = ["| image | tier | size | build (cold) | rebuild (source change) | start to ready | KServe way | "
            "ModelMesh way | packages |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    entries = [(k, e) for k, v in sorted(data["images"].items()) for e in [v] + ([v["heavy"]] if "heavy" in v else [])]
    for key, e in entries:
        pk = e.get("packages", {})
        main = ", ".join(f"{n} {pk[n]}" for n in sorted(pk, key=str.lower) if n.lower() in TABLE_PACKAGES)
        rows.append(f"| `{key}` | {e.get('tier', '')} | {cell(e.get('size_mb'), ' MB')} | {cell(e.get('build_s'), ' s')} "
                    f"| {cell(e.get('rebuild_s'), ' s')} | {cell(e.get('ready_s'), ' s')} | "
                    f"{served_cell(e, 'served_kserve')} | {served_cell(e, 'served_modelmesh')} | {len(pk)}: {main} |")
    return "\n".join(rows) + "\n"


def served_cell(entry: dict, field_name: str) -> str:
    if entry.get(field_name) is None and "engine_imports" in entry:
        return f"needs a GPU (engine imports vLLM: {'yes' if entry['engine_imports'] else 'no'})"
    return {True: "yes", False: "no"}.get(entry.get(field_name), "")


TABLE_PACKAGES = {"mlserver", "modelserve", "torch", "transformers", "scikit-learn", "mlflow-skinny", "faster-whisper",
                  "ctranslate2", "ollama", "vllm", "infinity-emb", "fastapi"}


def tool_version(tool: str) -> str:
    return run([tool, "--version"]).stdout.split()[2]


# -- command line ----------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/images.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build images (all when no KEY is given)")
    b.add_argument("keys", nargs="*", metavar="KEY")
    b.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    b.add_argument("--heavy", action="store_true", help="PyPI alone: CUDA torch, the vllm image")
    s = sub.add_parser("bases", help="make the stand-in base images that are missing")
    s.add_argument("--force", action="store_true", help="remake them even when present")
    t = sub.add_parser("rebuild", help="time a rebuild after a source-only change, into the report")
    t.add_argument("keys", nargs="+", metavar="KEY")
    t.add_argument("--heavy", action="store_true")
    r = sub.add_parser("report", help=f"build, time and serve, then write {REPORT.relative_to(ROOT)}")
    r.add_argument("keys", nargs="*", metavar="KEY")
    r.add_argument("--heavy", action="store_true")
    sub.add_parser("table", help=f"print the docs table of {REPORT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    try:
        if args.command == "bases":
            for base, secs in ensure_bases(*keys(), force=args.force).items():
                print(f"{base}: stand-in made in {secs:.0f} s")
        elif args.command == "rebuild":
            for key in check_keys(args.keys):
                took = round(rebuild_after_source_change(key, args.heavy), 1)
                data = json.loads(REPORT.read_text()) if REPORT.exists() else {"images": {}}
                entry = data["images"].setdefault(key, {})
                (entry["heavy"] if args.heavy and "heavy" in entry else entry)["rebuild_s"] = took
                REPORT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
                print(f"{image_name(key)}: rebuilt after a source change in {took:.0f} s", flush=True)
        elif args.command == "table":
            if not REPORT.exists():
                raise ImageError(f"no {REPORT.relative_to(ROOT)} yet: `python scripts/images.py report` writes it")
            print(table(json.loads(REPORT.read_text())), end="")
        elif args.command == "build":
            wanted = check_keys(args.keys) or [k for k in keys() if args.heavy or k not in HEAVY_KEYS]
            for key in wanted:
                print(f"{image_name(key)}: built in {build(key, args.no_cache, args.heavy):.0f} s", flush=True)
        else:
            wanted = check_keys(args.keys) or [k for k in keys() if args.heavy or k not in HEAVY_KEYS]
            report(wanted, args.heavy)
            print(f"wrote {REPORT.relative_to(ROOT)}")
    except ImageError as exc:
        print(f"scripts/images.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
