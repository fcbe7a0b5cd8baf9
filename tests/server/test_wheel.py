"""The package as a user installs it: a wheel and an sdist built from the repository's files, checked, then the
wheel installed with each extra into a clean venv (the README's install: uv with docker/overrides.txt and
docker/constraints.txt), and a model served from one of them with MLServer's default parallel workers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import joblib
import pytest
import requests

from modelserve.deploy import RUNTIMES

from ..support.deploy_files import ROOT, unexpected_conflicts
from ..support.harness import Server

pytestmark = pytest.mark.slow

EXTRAS = sorted(RUNTIMES)  # every image's extra is one of pyproject's


def run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=kw.pop("timeout", 900), **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """wheel and sdist of the repository's files (tracked or new, not ignored), built in an isolated build env."""
    out = tmp_path_factory.mktemp("dist")
    src = out / "src"
    files = run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard"]).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    run([sys.executable, "-m", "build", "--outdir", out, src])
    (wheel,) = out.glob("modelserve-*.whl")
    (sdist,) = out.glob("modelserve-*.tar.gz")
    return wheel, sdist, files


def test_wheel_and_sdist_pass_twine_check(dist):
    wheel, sdist, _ = dist
    proc = run([sys.executable, "-m", "twine", "check", "--strict", wheel, sdist])
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_the_wheel_holds_every_module_and_the_pth_file_and_nothing_else(dist):
    wheel, sdist, files = dist
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f.removeprefix("runtimes/") for f in files if f.startswith("runtimes/modelserve/")}
    assert sources and sources <= names, sources - names
    assert "modelserve-mlserver.pth" in names
    assert zipfile.ZipFile(wheel).read("modelserve-mlserver.pth").decode().strip() == "import modelserve.mlserver_early"
    extra = {n for n in names - sources if not n.startswith("modelserve-0.1.0.dist-info/")}
    assert extra == {"modelserve-mlserver.pth"}, extra  # no tests, scripts or stray files
    meta = zipfile.ZipFile(wheel).read("modelserve-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta and "Requires-Python: <3.13,>=3.11" in meta
    in_sdist = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    assert {"setup.py", "pyproject.toml", "README.md", "runtimes/modelserve-mlserver.pth"} <= in_sdist


@pytest.fixture(scope="module")
def venvs(dist, tmp_path_factory):
    """extra -> the python of a fresh venv with the wheel and that extra installed as README says."""
    wheel, _, _ = dist
    made = {}

    def get(extra: str) -> Path:
        if extra not in made:
            venv = tmp_path_factory.mktemp(f"venv-{extra}")
            run([sys.executable, "-m", "venv", venv])
            python = venv / "bin" / "python"
            run([python, "-m", "pip", "install", "-q", "-r", ROOT / "docker" / "uv.txt"])
            if extra == "huggingface":  # the CPU wheel on disk first, as README says
                run([python, "-m", "pip", "install", "-q", "torch==2.13.0"])
            run([python, "-m", "uv", "pip", "install", "--python", python, "--override", ROOT / "docker" / "overrides.txt",
                 "-c", ROOT / "docker" / "constraints.txt", f"{wheel}[{extra}]"])
            made[extra] = python
        return made[extra]

    return get


@pytest.mark.parametrize("extra", EXTRAS)
def test_the_wheel_installs_with_each_extra_into_a_clean_venv(venvs, extra):
    python = venvs(extra)
    module, _, cls = RUNTIMES[extra].implementation.rpartition(".")
    code = (f"import sys, importlib.metadata as m; armed = 'modelserve.mlserver_early' in sys.modules; "
            f"import {module}; print({module}.{cls}.__name__, armed, m.version('starlette'), m.version('uvloop'))")
    name, armed, starlette, uvloop = run([python, "-c", code]).stdout.split()
    assert (name, armed) == (cls, "True")  # the .pth armed the early patches at interpreter start
    assert int(starlette.split(".")[0]) >= 1 and tuple(map(int, uvloop.split(".")[:2])) >= (0, 22)
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert not unexpected_conflicts(check.stdout), check.stdout


@pytest.mark.lane312
def test_a_model_served_from_the_installed_wheel_with_parallel_workers(venvs, tmp_path):
    """MLServer's default mode (one parallel worker) on the current uvloop and starlette, from the wheel alone."""
    from sklearn.linear_model import LogisticRegression

    python = venvs("sklearn")
    model = tmp_path / "iris"
    model.mkdir()
    joblib.dump(LogisticRegression().fit([[0, 0], [1, 1], [0, 1], [1, 0]], [0, 1, 1, 0]), model / "model.joblib")
    (model / "model-settings.json").write_text(json.dumps(
        {"name": "iris", "implementation": "modelserve.sklearn.SKLearnRuntime", "parameters": {"uri": "./model.joblib"}}))

    class WheelServer(Server):
        def command(self):
            return [str(python.parent / "mlserver"), "start", str(self.root)]

    server = WheelServer(tmp_path, parallel_workers=1, debug=False).start(timeout=180)
    try:
        body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 2], "data": [0, 0, 1, 1]}]}
        # no Content-Type, as tritonclient.http sends it: FastAPI's strict_content_type is off for MLServer's routes
        r = requests.post(f"{server.url}/v2/models/iris/infer", data=json.dumps(body), timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [0, 1]
        assert "There is no current event loop" not in server.log()
    finally:
        server.stop()
