"""modelserve-start (modelserve.envmodels): ModelHub's MODEL_* variables -> model-settings.json files and the
``mlserver start`` command line it execs; bad environments refused with one line and exit status 2.

tests/server/test_images.py runs it for real as the mlflow image's CMD."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from modelserve.envmodels import EXTRA, IMPLEMENTATION, EnvError, main, models_from_env, plan, redact

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def env(tmp_path):
    """A clean environment (no MODEL_* / MLSERVER_* of the caller) whose models go to tmp_path/models."""
    return {"PATH": os.environ.get("PATH", ""), "MODELSERVE_ENV_MODELS_DIR": str(tmp_path / "models")}


def settings_of(folder: Path) -> dict:
    """name -> the model-settings.json written for it."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/model-settings.json"))}


def test_model_uri_alone_is_served_as_default_model(env, tmp_path):
    env["MODEL_URI"] = "runs:/0a1b2c/model"
    cmd = plan(env, [])
    folder = tmp_path / "models"
    assert cmd == ["mlserver", "start", str(folder)]
    assert settings_of(folder) == {"default-model": {
        "name": "default-model", "implementation": IMPLEMENTATION,
        "parameters": {"uri": "runs:/0a1b2c/model", "extra": {"signatureless_input": "dataframe"}}}}
    # the image's ModelMesh default (false) would leave them unloaded
    assert env["MLSERVER_LOAD_MODELS_AT_STARTUP"] == "true"


def test_model_name_names_it(env, tmp_path):
    env.update(MODEL_URI="/mnt/models", MODEL_NAME="iris")
    plan(env, [])
    assert settings_of(tmp_path / "models")["iris"]["parameters"]["uri"] == "/mnt/models"


@pytest.mark.parametrize("version,uri", [("3", "models:/churn/3"), (None, "models:/churn/latest"),
                                         ("  ", "models:/churn/latest")])
def test_a_registered_model_by_name_and_version(env, tmp_path, version, uri):
    env.update(MODEL_NAME_REGISTRY="churn", MODEL_NAME="churn-api", **({"MODEL_VERSION": version} if version else {}))
    plan(env, [])
    assert settings_of(tmp_path / "models")["churn-api"]["parameters"]["uri"] == uri


def test_numbered_models_follow_the_single_one_and_only_the_first_owns_invocations(env, tmp_path):
    env.update(MODEL_URI="s3://bucket/a", MODEL_NAME="a",
               MODEL_NAME_1="b", MODEL_URI_1="mlflow-artifacts:/1/abc/artifacts/model",
               MODEL_NAME_REGISTRY_2="reg", MODEL_VERSION_2="7",
               MODEL_URI_3="./relative")  # no name: model-3
    assert [(m.name, m.uri) for m in models_from_env(env)] == [
        ("a", "s3://bucket/a"), ("b", "mlflow-artifacts:/1/abc/artifacts/model"), ("model-2", "models:/reg/7"),
        ("model-3", "./relative")]
    plan(env, [])
    written = settings_of(tmp_path / "models")
    assert set(written) == {"a", "b", "model-2", "model-3"}
    assert written["a"]["parameters"]["extra"] == EXTRA
    for name in ("b", "model-2", "model-3"):  # MLServer loads concurrently: one claim on /invocations
        assert written[name]["parameters"]["extra"] == {**EXTRA, "root_invocations": False}
        assert written[name]["implementation"] == IMPLEMENTATION


def test_numbered_models_alone_the_first_owns_invocations(env, tmp_path):
    env.update(MODEL_URI_1="/m/one", MODEL_URI_2="/m/two")
    plan(env, [])
    written = settings_of(tmp_path / "models")
    assert written["model-1"]["parameters"]["extra"] == EXTRA
    assert written["model-2"]["parameters"]["extra"]["root_invocations"] is False


def test_numbering_stops_at_the_first_slot_with_nothing_to_serve(env):
    env.update(MODEL_URI_1="/m/one", MODEL_URI_2="/m/two")
    assert [m.name for m in models_from_env(env)] == ["model-1", "model-2"]
    env["MODEL_URI_0"] = "/m/zero"  # not a slot
    assert [m.name for m in models_from_env(env)] == ["model-1", "model-2"]


def test_empty_values_are_unset(env):
    env.update(MODEL_URI="", MODEL_NAME_REGISTRY=" ", MODEL_URI_1="/m/one", MODEL_NAME_1="")
    assert [(m.name, m.uri) for m in models_from_env(env)] == [("model-1", "/m/one")]


# -- refused ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variables,message", [
    ({"MODEL_URI": "/a", "MODEL_URI_1": "/b", "MODEL_NAME_1": "default-model"},
     "two models are called 'default-model' (MODEL_URI and MODEL_URI_1)"),
    ({"MODEL_URI_1": "/a", "MODEL_NAME_1": "x", "MODEL_NAME_REGISTRY_2": "r", "MODEL_NAME_2": "x"},
     "two models are called 'x' (MODEL_URI_1 and MODEL_NAME_REGISTRY_2)"),
    ({"MODEL_VERSION": "3", "MODEL_URI": "/a"}, "MODEL_VERSION is set but MODEL_NAME_REGISTRY is not"),
    ({"MODEL_URI_1": "/a", "MODEL_VERSION_2": "3"}, "MODEL_VERSION_2 is set but MODEL_NAME_REGISTRY_2 is not"),
    ({"MODEL_URI": "/a", "MODEL_NAME_REGISTRY": "r"}, "both MODEL_URI (/a) and MODEL_NAME_REGISTRY (r) are set"),
    ({"MODEL_URI_1": "/a", "MODEL_NAME_REGISTRY_1": "r", "MODEL_VERSION_1": "2"},
     "set one (MODEL_URI_1=models:/r/2 names the registered model)"),
    ({"MODEL_NAME": "iris"}, "MODEL_NAME is set but neither MODEL_URI nor MODEL_NAME_REGISTRY"),
    ({"MODEL_URI_1": "/a", "MODEL_NAME_2": "b"}, "MODEL_NAME_2 is set but neither MODEL_URI_2"),
    ({"MODEL_URI_1": "/a", "MODEL_URI_3": "/c"}, "MODEL_URI_3 is set but model 2 is not"),
    ({"MODEL_URI": "/a", "MODEL_NAME_REGISTRY_2": "r"}, "MODEL_NAME_REGISTRY_2 is set but model 1 is not"),
])
def test_ambiguous_environments_are_refused(env, variables, message):
    env.update(variables)
    with pytest.raises(EnvError) as exc:
        plan(env, [])
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["a/b", "../x", ".hidden", "a b", "-x", "a\\b", "x" * 129, "é", "a:b", "a?b"])
def test_a_name_that_is_no_model_name_is_refused(env, name):
    env.update(MODEL_URI="/a", MODEL_NAME=name)
    with pytest.raises(EnvError, match="is not a valid model name"):
        plan(env, [])


@pytest.mark.parametrize("name", ["iris", "Iris_2", "my.model-v1", "0", "x" * 128])
def test_valid_names(env, tmp_path, name):
    env.update(MODEL_URI="/a", MODEL_NAME=name)
    plan(env, [])
    assert list(settings_of(tmp_path / "models")) == [name]


def test_a_folder_and_env_models_together_are_refused(env):
    env["MODEL_URI"] = "/a"
    with pytest.raises(EnvError, match=r"a folder \(/models\) and MODEL_\* variables \(MODEL_URI\) are both given"):
        plan(env, ["/models"])


def test_credentials_in_a_uri_are_never_printed(env, capsys, monkeypatch):
    assert redact("s3://AKIA:s3cr3t@minio:9000/bucket/m") == "s3://***@minio:9000/bucket/m"
    assert redact("https://user:pw@host/x?y=1") == "https://***@host/x?y=1"
    assert redact("runs:/abc/model") == "runs:/abc/model" and redact("/a/b@c") == "/a/b@c"
    monkeypatch.setattr(os, "execvp", lambda *a: None)
    monkeypatch.setattr(os, "environ", {**env, "MODEL_URI": "s3://AKIA:s3cr3t@minio/b/m", "MODEL_NAME_REGISTRY": "r"})
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "s3cr3t" not in err and "AKIA" not in err and "s3://***@minio/b/m" in err
    monkeypatch.setattr(os, "environ", {**env, "MODEL_URI": "s3://AKIA:s3cr3t@minio/b/m"})
    assert main([]) == 0
    err = capsys.readouterr().err
    assert "s3cr3t" not in err and "model 'default-model' from s3://***@minio/b/m (MODEL_URI)" in err


# -- the command it execs ---------------------------------------------------------------------------------
@pytest.fixture
def execs(monkeypatch):
    """os.execvp captured: (file, argv) of each call."""
    calls = []
    monkeypatch.setattr(os, "execvp", lambda file, argv: calls.append((file, argv)))
    return calls


def test_no_env_models_is_the_images_old_cmd(env, execs, monkeypatch):
    monkeypatch.setattr(os, "environ", {**env, "MLSERVER_MODELS_DIR": "/models/_mlserver_models/",
                                        "MLSERVER_LOAD_MODELS_AT_STARTUP": "false"})
    assert main([]) == 0
    ((file, argv),) = execs
    assert argv == ["mlserver", "start", "/models/_mlserver_models/"]  # exec mlserver start "$MLSERVER_MODELS_DIR"
    assert file == str(VENV_BIN / "mlserver")  # the venv's own, PATH or not
    assert os.environ["MLSERVER_LOAD_MODELS_AT_STARTUP"] == "false"  # ModelMesh's setting untouched
    assert not (Path(env["MODELSERVE_ENV_MODELS_DIR"])).exists()


def test_a_folder_given_wins_over_mlserver_models_dir(env, execs, monkeypatch):
    monkeypatch.setattr(os, "environ", {**env, "MLSERVER_MODELS_DIR": "/models/_mlserver_models/"})
    assert main(["/mnt/models"]) == 0
    assert execs[0][1] == ["mlserver", "start", "/mnt/models"]


def test_nothing_to_serve_is_refused(env, execs, monkeypatch, capsys):
    monkeypatch.setattr(os, "environ", dict(env))
    assert main([]) == 2 and not execs
    assert capsys.readouterr().err == ("modelserve-start: nothing to serve: set MODEL_URI (or MODEL_NAME_REGISTRY) "
                                       "or MLSERVER_MODELS_DIR, or give a folder\n")


def test_env_models_exec_mlserver_on_their_folder(env, execs, monkeypatch, tmp_path):
    monkeypatch.setattr(os, "environ", {**env, "MODEL_URI": "/a", "MLSERVER_MODELS_DIR": "/models/_mlserver_models/",
                                        "MLSERVER_LOAD_MODELS_AT_STARTUP": "false"})
    assert main([]) == 0
    ((file, argv),) = execs
    assert argv == ["mlserver", "start", str(tmp_path / "models")]
    assert os.environ["MLSERVER_LOAD_MODELS_AT_STARTUP"] == "true"
    execs.clear()
    assert main(["--help"]) == 0  # options still reach mlserver start
    assert execs[0][1] == ["mlserver", "start", str(tmp_path / "models"), "--help"]


def test_mlserver_on_path_without_one_beside_the_interpreter(env, execs, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nowhere" / "python"))
    monkeypatch.setattr(os, "environ", {**env, "MLSERVER_MODELS_DIR": "/m"})
    main([])
    assert execs[0][0] == "mlserver"


def test_a_fresh_temporary_folder_without_models_dir(env, execs, monkeypatch):
    del env["MODELSERVE_ENV_MODELS_DIR"]
    monkeypatch.setattr(os, "environ", {**env, "MODEL_URI": "/a"})
    main([])
    main([])
    folders = [Path(argv[2]) for _, argv in execs]
    assert folders[0] != folders[1]
    for folder in folders:
        assert settings_of(folder)["default-model"]["parameters"]["uri"] == "/a"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # mkdtemp's


def test_settings_files_are_private(env, tmp_path):
    env["MODEL_URI"] = "s3://k:s@host/b"
    plan(env, [])
    assert stat.S_IMODE((tmp_path / "models" / "default-model" / "model-settings.json").stat().st_mode) == 0o600


def test_a_restart_replaces_its_own_models_and_a_foreign_folder_is_refused(env, tmp_path):
    env.update(MODEL_URI_1="/a", MODEL_URI_2="/b")
    plan(env, [])
    del env["MODEL_URI_2"]
    plan(env, [])  # the container restarted with one model less: model-2 must not come back
    assert list(settings_of(tmp_path / "models")) == ["model-1"]
    foreign = tmp_path / "foreign"
    (foreign / "other").mkdir(parents=True)
    (foreign / "other" / "model-settings.json").write_text("{}")
    env["MODELSERVE_ENV_MODELS_DIR"] = str(foreign)
    with pytest.raises(EnvError, match="is not empty and was not written by modelserve-start"):
        plan(env, [])
    assert (foreign / "other" / "model-settings.json").read_text() == "{}"
    (tmp_path / "file").write_text("")
    env["MODELSERVE_ENV_MODELS_DIR"] = str(tmp_path / "file")
    with pytest.raises(EnvError, match="is not a folder"):
        plan(env, [])


def test_written_settings_are_what_mlserver_loads(env, tmp_path, monkeypatch):
    """MLServer's own reader of model-settings.json: the name, the runtime class and the URI arrive."""
    from mlserver.repository.load import load_model_settings

    from modelserve.mlflow import MLflowOptions, MLflowRuntime

    for key in [k for k in os.environ if k.startswith("MLSERVER_MODEL_")]:  # the image's or the caller's
        monkeypatch.delenv(key)
    env.update(MODEL_URI="runs:/abc/model", MODEL_NAME="iris", MODEL_NAME_REGISTRY_1="churn")
    plan(env, [])
    loaded = {s.name: s for s in (load_model_settings(str(p)) for p in (tmp_path / "models").glob("*/*.json"))}
    assert set(loaded) == {"iris", "model-1"}
    impl = loaded["iris"].implementation  # MLServer imports it afresh: the same class by its path
    assert (impl.__module__, impl.__qualname__) == (MLflowRuntime.__module__, MLflowRuntime.__qualname__)
    assert (loaded["iris"].parameters.uri, loaded["model-1"].parameters.uri) == ("runs:/abc/model",
                                                                                 "models:/churn/latest")
    if "signatureless_input" not in MLflowOptions.model_fields:
        pytest.skip("MLflowOptions has no signatureless_input yet: the runtime would refuse the env models' options")
    from modelserve.options import parse_options

    assert parse_options(MLflowOptions, loaded["model-1"]).root_invocations is False
    assert parse_options(MLflowOptions, loaded["iris"]).root_invocations is True


# -- the console script, as a process ---------------------------------------------------------------------
def script_env(**extra: str) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "MLSERVER_", "MODELSERVE_"))}
    return {**base, **extra}


def test_the_console_script_refuses_bad_env_with_one_line_and_status_2():
    script = VENV_BIN / "modelserve-start"
    assert script.is_file(), "pip install --no-deps -e . installs the console script"
    proc = subprocess.run([str(script)], env=script_env(MODEL_URI="s3://id:secret@h/b", MODEL_NAME="a/b"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("modelserve-start: MODEL_NAME='a/b' is not a valid model name")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "secret" not in proc.stderr


def test_the_console_script_becomes_mlserver_start():
    """Options pass through to the real mlserver, which answers with its own usage."""
    proc = subprocess.run([str(VENV_BIN / "modelserve-start"), "--help"], env=script_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: mlserver start [OPTIONS] FOLDER" in proc.stdout


def test_python_dash_m_works_too():
    proc = subprocess.run([sys.executable, "-m", "modelserve.envmodels"], env=script_env(MODEL_VERSION_1="2"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "MODEL_VERSION_1 is set but MODEL_NAME_REGISTRY_1 is not" in proc.stderr


def test_the_module_is_import_light():
    code = "import sys, modelserve.envmodels; print(' '.join(sys.modules))"
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert not {"mlserver", "mlflow", "pydantic", "numpy", "pandas"} & mods
