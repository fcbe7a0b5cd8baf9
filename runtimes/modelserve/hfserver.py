"""KServe huggingfaceserver's command line, as DHCore sends it, served by HuggingFaceRuntime.

    modelserve-huggingfaceserver --model_name NAME (--model_id ID [--model_revision R] | --model_dir DIR)
        [--task T] [--backend B] [--dtype D] [--max_length N] [--http_port P] [--grpc_port P] ... [--any_flag V]
    python -m huggingfaceserver ...       (after `modelserve-dhcore-shims huggingfaceserver`, in the image)

writes a model folder (model-settings.json from the flags) and runs `mlserver start` on it, HTTP 8080 and gRPC
8081 by default as huggingfaceserver does. Booleans are `--flag`, `--flag true|false` or `--flag=...`; flags
that have no meaning here are tolerated (logged, with their value). `--trust_remote_code` is honoured only when
the image's operator sets MODELSERVE_TRUST_REMOTE_CODE=true: DHCore sends `--trust_remote_code true` by default.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .options import Backend, Dtype, Task

BOOL_FLAGS = {"disable_lower_case", "disable_special_tokens", "trust_remote_code", "return_token_type_ids",
              "return_probabilities", "disable_log_requests", "enable_docs_url"}
VALUE_FLAGS = {"model_name", "model_id", "model_revision", "model_dir", "tokenizer_revision", "max_length",
               "tensor_input_names", "task", "backend", "dtype", "max_log_len", "protocol", "http_port",
               "grpc_port"}
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
REMOTE_CODE_ENV = "MODELSERVE_TRUST_REMOTE_CODE"


class ArgError(ValueError):
    """A flag whose value cannot be read; the message names it."""


def parse(argv: List[str]) -> Tuple[Dict[str, Any], List[str]]:
    """(flags we read, flags tolerated) from huggingfaceserver's argument list."""
    known: Dict[str, Any] = {}
    ignored: List[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            ignored.append(arg)
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        has_value = bool(eq)
        if not has_value and i < len(argv) and not argv[i].startswith("--"):
            if key in BOOL_FLAGS and argv[i].lower() not in TRUE | FALSE:
                pass  # a bare boolean flag followed by something else
            else:
                value, has_value = argv[i], True
                i += 1
        if key in BOOL_FLAGS:
            if not has_value:
                known[key] = True
            elif value.lower() in TRUE | FALSE:
                known[key] = value.lower() in TRUE
            else:
                raise ArgError(f"--{key}: expected true or false, got {value!r}")
        elif key in VALUE_FLAGS:
            if not has_value:
                raise ArgError(f"--{key} needs a value")
            known[key] = value
        else:
            ignored.append(arg if not has_value or eq else f"{arg} {value}")
    return known, ignored


def _int(flags: Dict[str, Any], key: str) -> Optional[int]:
    if key not in flags:
        return None
    try:
        return int(flags[key])
    except ValueError:
        raise ArgError(f"--{key}: expected an integer, got {flags[key]!r}") from None


def _enum(cls, flags: Dict[str, Any], key: str):
    if key not in flags:
        return None
    try:
        return cls(flags[key]).value
    except ValueError:
        raise ArgError(f"--{key}: {flags[key]!r} is not one of {', '.join(m.value for m in cls)}") from None


def model_settings(flags: Dict[str, Any], environ=os.environ) -> Tuple[Dict[str, Any], List[str]]:
    """(model-settings.json, notes) for the flags."""
    notes = []
    if flags.get("protocol", "v2") not in ("v2", "v1"):
        raise ArgError(f"--protocol {flags['protocol']!r}: this server speaks v2 and v1 together")
    if "model_id" in flags and "model_dir" in flags:
        raise ArgError("--model_id and --model_dir: give one")
    if "model_id" in flags:
        mid = flags["model_id"].removeprefix("hf://")
        uri = f"hf://{mid}" + (f"@{flags['model_revision']}" if flags.get("model_revision") else "")
    elif "model_dir" in flags:
        uri = str(Path(flags["model_dir"]).resolve())
    else:
        raise ArgError("--model_id or --model_dir is required")
    extra: Dict[str, Any] = {
        "task": _enum(Task, flags, "task"), "backend": _enum(Backend, flags, "backend"),
        "dtype": _enum(Dtype, flags, "dtype"), "max_length": _int(flags, "max_length"),
        "max_log_len": _int(flags, "max_log_len"), "tokenizer_revision": flags.get("tokenizer_revision") or None}
    for key in BOOL_FLAGS - {"enable_docs_url", "trust_remote_code"}:
        if key in flags:
            extra[key] = flags[key]
    if flags.get("tensor_input_names"):
        extra["tensor_input_names"] = [n for n in flags["tensor_input_names"].split(",") if n]
    if flags.get("trust_remote_code"):
        if environ.get(REMOTE_CODE_ENV, "").lower() in TRUE:
            extra["trust_remote_code"] = True
        else:
            notes.append(f"--trust_remote_code true ignored: the image's operator has not set {REMOTE_CODE_ENV}=true")
    extra = {k: v for k, v in extra.items() if v is not None}
    name = flags.get("model_name") or "model"
    settings = {"name": name, "implementation": "modelserve.huggingface.HuggingFaceRuntime",
                "parameters": {"uri": uri, **({"extra": extra} if extra else {})}}
    return settings, notes


def mlserver_command() -> str:
    """The `mlserver` of this interpreter's environment, else the one on PATH."""
    own = Path(sys.executable).with_name("mlserver")
    return str(own) if os.access(own, os.X_OK) else (shutil.which("mlserver") or "mlserver")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        flags, ignored = parse(argv)
        settings, notes = model_settings(flags)
        http_port, grpc_port = _int(flags, "http_port") or 8080, _int(flags, "grpc_port") or 8081
    except ArgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in notes + ([f"tolerated, not used: {' '.join(ignored)}"] if ignored else []):
        print(f"note: {note}", file=sys.stderr)
    root = Path(os.environ.get("MODELSERVE_HF_MODELS_DIR") or tempfile.mkdtemp(prefix="hfserver-"))
    folder = root / settings["name"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))
    (root / "settings.json").write_text(json.dumps({"http_port": http_port, "grpc_port": grpc_port}))
    env = {**os.environ, "MLSERVER_HTTP_PORT": str(http_port), "MLSERVER_GRPC_PORT": str(grpc_port),
           "MLSERVER_LOAD_MODELS_AT_STARTUP": "true"}
    mlserver = mlserver_command()
    sys.stderr.flush()
    os.execve(mlserver, [mlserver, "start", str(root)], env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
