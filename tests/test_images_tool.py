"""scripts/images.py without building anything: its refusals (one line each) and how it turns a ServingRuntime's
container into podman's options (tests/server/test_images_built.py runs them for real)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("modelserve_images_tool", ROOT / "scripts" / "images.py")
images = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(images)


def refusal(capsys, *argv) -> str:
    assert images.main(list(argv)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_unknown_image_is_refused_with_the_known_ones(capsys):
    err = refusal(capsys, "build", "sklearn", "nope")
    assert err.splitlines() == [f"scripts/images.py: no image nope: the images are {', '.join(images.keys())}"]


def test_missing_tools_are_named_with_where_they_come_from(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    err = refusal(capsys, "build", "sklearn")
    assert err.strip() == ("scripts/images.py: buildah, podman not found: `bash scripts/dev.sh setup` installs "
                           "them (apt)")


def test_containers_conf_without_ulimits_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(images.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(images, "CONTAINERS_CONF", tmp_path / "containers.conf")
    with pytest.raises(images.ImageError, match="sets no default_ulimits"):
        images.require("podman")


def test_every_image_is_named_by_its_serving_runtime_and_has_its_bases_stood_in():
    for key in images.keys():
        assert images.image_name(key) == f"modelserve-{key}:0.1.0"
        assert all(base in images.STAND_INS for base in images.bases_of(key)), key
    assert images.qualified("python:3.11.7-slim-bookworm") == "docker.io/library/python:3.11.7-slim-bookworm"
    assert images.qualified("ollama/ollama:0.12.6") == "docker.io/ollama/ollama:0.12.6"
    assert images.qualified("quay.io/x/y:1") == "quay.io/x/y:1"


def test_security_context_becomes_podman_options():
    container = {"image": "x", "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "privileged": False,
                                                   "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                   "capabilities": {"drop": ["ALL"]}}}
    assert images.security_args(container, "x") == ["--user", "1000", "--cap-drop=ALL", "--security-opt",
                                                     "no-new-privileges", "--read-only"]


def test_run_as_non_root_refuses_a_root_user_as_the_kubelet_does():
    container = {"securityContext": {"runAsNonRoot": True, "runAsUser": 0}}
    with pytest.raises(images.ImageError, match="runAsNonRoot, but x runs as 0"):
        images.security_args(container, "x")


def test_kserve_pod_is_the_serving_runtime_container_with_the_isvc_filled_in(tmp_path):
    pod = images.kserve_pod("vllm", tmp_path, {"EXTRA": "1"})
    args = pod.args
    env = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--env")
    isvc = images.example_isvc("vllm")["metadata"]["name"]
    assert env["MLSERVER_MODEL_NAME"] == isvc and env["EXTRA"] == "1"
    assert ["--volume", f"{tmp_path}:/mnt/models:ro"] == args[args.index("--volume"):args.index("--volume") + 2]
    assert "--tmpfs" in args and args[args.index("--tmpfs") + 1].startswith("/dev/shm:rw,U,size=2g")
    assert ["--publish", "127.0.0.1::8080"] == args[args.index("--publish"):args.index("--publish") + 2]
    assert "127.0.0.1::8081" in args  # gRPC, in the pod
    assert args[args.index("--memory") + 1] == "48g"
    assert pod.probe["httpGet"] == {"path": "/v2/health/ready", "port": 8080} and pod.grace == 30


def test_modelmesh_pod_keeps_mlserver_on_the_pods_loopback(tmp_path):
    pod = images.modelmesh_pod("sklearn", tmp_path)
    assert "--publish" not in pod.args and "MLSERVER_HOST=127.0.0.1" in pod.args
    assert f"{tmp_path}:/models:rw" in pod.args and pod.probe is None


def test_build_mounts_leave_nothing_but_mounts(monkeypatch, tmp_path):
    (tmp_path / "pypi" / "simple").mkdir(parents=True)
    monkeypatch.setattr(images, "machine_pip_config", lambda: {
        "cert": "/etc/ssl/certs/ca-certificates.crt", "find-links": "/nonexistent /", "index-url": "https://idx/simple",
        "extra-index-url": f"file://{tmp_path}/pypi/simple"})
    with images.build_mounts("huggingface", heavy=False) as args:
        volumes = [v for flag, v in zip(args[::2], args[1::2]) if flag == "--volume"]
        home = volumes[0].split(":")[0]
        assert volumes[0] == f"{home}:/root:rw" and volumes[1].endswith(":/etc/ssl/certs/ca-certificates.crt:ro")
        # existing local folders, mounted inside the build home; a simple index with its files beside it
        assert f"{tmp_path}/pypi:/root/.build-local/1:ro" in volumes and "/:/root/.build-local/2:ro" in volumes
        conf = Path(home, ".config", "pip", "pip.conf").read_text()
        assert "extra-index-url = file:///root/.build-local/1/simple" in conf
        assert "find-links = /root/.build-local/2" in conf and "index-url = https://idx/simple" in conf
        assert Path(home, ".config", "uv", "uv.toml").read_text() == ('system-certs = true\n'
                                                                     'index-url = "https://idx/simple"\n')
        assert f"{home}/.build-torch.txt:/opt/modelserve/docker/huggingface/torch-cuda.txt:ro" in volumes
        assert Path(home, ".build-torch.txt").read_text() == "torch==2.13.0\n"
    with images.build_mounts("sklearn", heavy=True) as args:
        assert not any(".build-local" in a or "torch-cuda" in a for a in args)


DOC = ROOT / "docs" / "images.md"


def test_docs_say_what_each_stand_in_lacks():
    text = DOC.read_text()
    for base, spec in images.STAND_INS.items():
        assert f"| `{base}` | {spec.differs} |" in text, base


def test_docs_table_is_the_reports():
    if not images.REPORT.exists():
        pytest.skip("no benchmarks/results/images.json yet")
    import json

    text = DOC.read_text()
    table = text[text.index(images.TABLE_START) + len(images.TABLE_START):text.index(images.TABLE_END)].strip()
    assert table == images.table(json.loads(images.REPORT.read_text())).strip(), (
        "docs/images.md's table is not images.json's: paste `python scripts/images.py table` between its markers")


def test_table_renders_every_image_of_a_report():
    data = {"images": {"sklearn": {"tier": "cpu", "size_mb": 695.0, "build_s": 45.2, "rebuild_s": 30.0,
                                   "ready_s": 6.1, "served_kserve": True, "served_modelmesh": False,
                                   "packages": {"mlserver": "1.7.1", "six": "1"}}}}
    assert images.table(data).splitlines()[2] == (
        "| `sklearn` | cpu | 695 MB | 45.2 s | 30 s | 6.1 s | yes | no | 2: mlserver 1.7.1 |")
