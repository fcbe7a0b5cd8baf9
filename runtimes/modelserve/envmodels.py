"""``modelserve-start``: the mlflow image's CMD. MLflow models named by environment variables alone, or, when none
is named, ``mlserver start "$MLSERVER_MODELS_DIR"`` as before (KServe and ModelMesh unchanged).

The variables are ModelHub's (``create_server_from_env`` of autonomize-model-sdk):

- ``MODEL_URI`` (anything the MLflow runtime loads: a path, ``s3://``, ``runs:/``, ``models:/``,
  ``mlflow-artifacts:/``), or ``MODEL_NAME_REGISTRY`` with ``MODEL_VERSION`` (``models:/<name>/<version>``;
  ``models:/<name>/latest`` without a version), served as ``MODEL_NAME`` (default ``default-model``);
- more models as ``MODEL_NAME_i``, ``MODEL_URI_i``, ``MODEL_NAME_REGISTRY_i``, ``MODEL_VERSION_i`` for i = 1, 2, ...
  (up to the first i with neither a URI nor a registry name; default name ``model-i``).

Each model becomes ``<dir>/<name>/model-settings.json`` for ``modelserve.mlflow.MLflowRuntime`` (dir:
``MODELSERVE_ENV_MODELS_DIR``, else a fresh temporary folder), the models load at startup, and the process
becomes ``mlserver start <dir>`` (exec: MLServer is the container's process and gets its signals). A model
that fails to load leaves the others serving (``lifecycle.py``).

Unlike ModelHub, ambiguous settings are refused with one line and exit status 2 rather than guessed: duplicate
or invalid names, a version without a registry name, a URI and a registry name for the same model (ModelHub
silently takes the URI), a name with nothing to serve, numbered models with a gap. URIs are printed with any
``user:password@`` redacted.

Import-light: the standard library only (it runs before every container start).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, MutableMapping, Optional, Sequence

IMPLEMENTATION = "modelserve.mlflow.MLflowRuntime"
EXTRA = {"signatureless_input": "dataframe"}
"""Every env model's options: a pyfunc without a signature gets a pandas DataFrame from V2, as ModelHub gives it."""
DEFAULT_NAME = "default-model"
DIR_ENV = "MODELSERVE_ENV_MODELS_DIR"
MARKER = ".modelserve-env-models"
"""In a folder this command wrote: a restart may replace its models (any other non-empty folder is refused)."""
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""A model name: a URL path segment and a folder name (no separators, no spaces, no leading dot)."""
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")
MAX_GAP = 20
"""How far past the first missing index numbered variables are looked for (a gap is refused)."""


class EnvError(ValueError):
    """Bad environment: one line for stderr."""


@dataclass(frozen=True)
class EnvModel:
    name: str
    uri: str
    source: str  # the variables it came from, for messages: "MODEL_URI", "MODEL_NAME_REGISTRY_2", ...


def redact(uri: str) -> str:
    """``uri`` without the credentials of a ``scheme://user:password@host`` form."""
    return _USERINFO.sub("***@", uri)


def _get(env: Mapping[str, str], key: str) -> Optional[str]:
    value = (env.get(key) or "").strip()
    return value or None


def _one(env: Mapping[str, str], suffix: str, default_name: str) -> Optional[EnvModel]:
    """The model of one slot (suffix "" or "_i"), None when the slot names nothing to serve."""
    name_key, uri_key = f"MODEL_NAME{suffix}", f"MODEL_URI{suffix}"
    reg_key, ver_key = f"MODEL_NAME_REGISTRY{suffix}", f"MODEL_VERSION{suffix}"
    name, uri, registry, version = (_get(env, k) for k in (name_key, uri_key, reg_key, ver_key))
    if version and not registry:
        raise EnvError(f"{ver_key} is set but {reg_key} is not: a version names a registered model "
                       f"(set {reg_key}, or use {uri_key} alone)")
    if uri and registry:
        raise EnvError(f"both {uri_key} ({redact(uri)}) and {reg_key} ({registry}) are set: set one "
                       f"({uri_key}=models:/{registry}/{version or 'latest'} names the registered model)")
    if not (uri or registry):
        if name:
            raise EnvError(f"{name_key} is set but neither {uri_key} nor {reg_key}: nothing to serve as '{name}'")
        return None
    name = name or default_name
    if not NAME_RE.match(name):
        raise EnvError(f"{name_key}={name!r} is not a valid model name: use letters, digits, '.', '_' and '-' "
                       "(at most 128, starting with a letter or digit; no '/' or spaces)")
    if registry:
        return EnvModel(name, f"models:/{registry}/{version or 'latest'}", reg_key)
    return EnvModel(name, uri, uri_key)  # type: ignore[arg-type]


def models_from_env(env: Mapping[str, str]) -> List[EnvModel]:
    """The models the environment names, in order: MODEL_*, then MODEL_*_1, MODEL_*_2, ..."""
    models: List[EnvModel] = []
    single = _one(env, "", DEFAULT_NAME)
    if single is not None:
        models.append(single)
    i = 1
    while True:
        model = _one(env, f"_{i}", f"model-{i}")
        if model is None:
            break
        models.append(model)
        i += 1
    # ModelHub stops at the first gap; a model named after it would be dropped without a word: refused
    for j in range(i + 1, i + 1 + MAX_GAP):
        for key in ("MODEL_URI", "MODEL_NAME_REGISTRY", "MODEL_NAME", "MODEL_VERSION"):
            if _get(env, f"{key}_{j}"):
                raise EnvError(f"{key}_{j} is set but model {i} is not (neither MODEL_URI_{i} nor "
                               f"MODEL_NAME_REGISTRY_{i}): numbered models run from 1 without gaps")
    seen: Dict[str, EnvModel] = {}
    for model in models:
        if model.name in seen:
            raise EnvError(f"two models are called '{model.name}' ({seen[model.name].source} and {model.source}): "
                           "give each its own MODEL_NAME / MODEL_NAME_i")
        seen[model.name] = model
    return models


def settings_for(model: EnvModel, first: bool) -> dict:
    extra = dict(EXTRA) if first else {**EXTRA, "root_invocations": False}
    return {"name": model.name, "implementation": IMPLEMENTATION, "parameters": {"uri": model.uri, "extra": extra}}


def _models_dir(env: Mapping[str, str]) -> Path:
    given = _get(env, DIR_ENV)
    if not given:
        return Path(tempfile.mkdtemp(prefix="modelserve-env-models-"))
    folder = Path(given)
    if folder.exists() and not folder.is_dir():
        raise EnvError(f"{DIR_ENV}={given} is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / MARKER).is_file():
            raise EnvError(f"{DIR_ENV}={given} is not empty and was not written by modelserve-start: "
                           "MLServer would serve whatever model-settings.json it holds; give an empty folder")
        for child in folder.iterdir():  # this command's previous models (a container restart)
            if child.is_dir():
                shutil.rmtree(child)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text("model folders written by modelserve-start from MODEL_* variables\n")
    except OSError as exc:
        raise EnvError(f"{DIR_ENV}={given}: cannot write there: {exc.strerror or exc}") from None
    return folder


def write_settings(models: Sequence[EnvModel], folder: Path) -> None:
    """One ``<folder>/<name>/model-settings.json`` per model, readable by this user only (a URI may hold
    credentials)."""
    for i, model in enumerate(models):
        target = folder / model.name
        target.mkdir(parents=True, exist_ok=True)
        fd = os.open(target / "model-settings.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(settings_for(model, first=i == 0), f, indent=2)


def plan(env: MutableMapping[str, str], argv: Sequence[str]) -> List[str]:
    """The ``mlserver`` command line to exec; writes the env models' settings (and sets
    MLSERVER_LOAD_MODELS_AT_STARTUP in ``env``) when there are any. Raises EnvError."""
    models = models_from_env(env)
    options = [a for a in argv if a.startswith("-")]
    if not models:
        if argv:  # a folder (or options) given explicitly: passed on as is
            return ["mlserver", "start", *argv]
        if not _get(env, "MLSERVER_MODELS_DIR"):
            raise EnvError("nothing to serve: set MODEL_URI (or MODEL_NAME_REGISTRY) or MLSERVER_MODELS_DIR, "
                           "or give a folder")
        return ["mlserver", "start", env["MLSERVER_MODELS_DIR"]]
    if len(options) != len(argv):
        raise EnvError(f"a folder ({' '.join(a for a in argv if not a.startswith('-'))}) and MODEL_* variables "
                       f"({', '.join(m.source for m in models)}) are both given: serve one or the other")
    folder = _models_dir(env)
    write_settings(models, folder)
    env["MLSERVER_LOAD_MODELS_AT_STARTUP"] = "true"  # the image's default (false) is ModelMesh's
    for model in models:
        print(f"modelserve-start: model '{model.name}' from {redact(model.uri)} ({model.source})", file=sys.stderr)
    return ["mlserver", "start", str(folder), *options]


def _mlserver() -> str:
    """The mlserver beside this interpreter (a venv's bin, found without PATH), else the one on PATH."""
    beside = Path(sys.executable).with_name("mlserver")
    return str(beside) if os.access(beside, os.X_OK) else "mlserver"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cmd = plan(os.environ, args)
    except EnvError as exc:
        print(f"modelserve-start: {exc}", file=sys.stderr)
        return 2
    sys.stderr.flush()
    os.execvp(_mlserver(), cmd)
    return 0  # not reached: exec replaced this process (a test's stand-in returns)


if __name__ == "__main__":
    sys.exit(main())
