"""A real `mlserver start` process on free ports, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import requests

MLSERVER = str(Path(sys.executable).with_name("mlserver"))


def eventually(check, timeout: float = 60.0, every: float = 0.3) -> bool:
    """Whether ``check()`` turns true within ``timeout`` seconds (polled every ``every``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return bool(check())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_model(root: Path, name: str, settings: dict, files: Optional[Dict[str, Path]] = None) -> Path:
    """A model folder under ``root``: model-settings.json plus files (or folders) copied beside it."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for fname, src in (files or {}).items():
        src = Path(src)
        if src.is_dir():
            shutil.copytree(src, folder / fname, dirs_exist_ok=True)
        else:
            shutil.copy(src, folder / fname)
    (folder / "model-settings.json").write_text(json.dumps({"name": name, **settings}))
    return folder


class MLServerProcess:
    """A running mlserver command on free ports: start (wait until ready), log, stop (its whole group)."""

    def __init__(self, log_path: Path, env: dict, cwd: Optional[Path] = None):
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.env, self.cwd, self.log_path = env, cwd, log_path
        self.proc: Optional[subprocess.Popen] = None

    def command(self) -> list:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 120, until: str = "/v2/health/ready"):
        """Starts it and waits until ``until`` answers 200 (``/v2/health/live`` where a model is meant to fail)."""
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd, process_group=0)
        deadline = time.monotonic() + timeout
        polls = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlserver exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            try:
                if requests.get(self.url + until, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            polls += 1
            if until == "/v2/health/ready" and polls % 10 == 0 and self.load_failures():
                break  # a model that failed to load never gets ready: say why now, not after the timeout
            time.sleep(0.3)
        self.stop()
        failures = "\n".join(self.load_failures())
        raise RuntimeError(f"mlserver not ready after {timeout}s:\n{failures or self.log()[-4000:]}")

    def load_failures(self) -> list:
        """The log's lines that say a model failed to load (modelserve's ModelLoadError wording)."""
        return [line for line in self.log().splitlines() if "failed to load:" in line][:20]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()


class Server(MLServerProcess):
    """`mlserver start <root>` with a settings.json written for free ports."""

    def __init__(self, root: Path, parallel_workers: Optional[int] = None, debug: bool = True,
                 env: Optional[dict] = None, log: Optional[Path] = None, extra: Optional[dict] = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        super().__init__(log or self.root / "mlserver.log", {**os.environ, **(env or {})})
        settings = {"debug": debug, "http_port": self.http_port, "grpc_port": self.grpc_port,
                    "metrics_port": self.metrics_port, "host": "127.0.0.1", **(extra or {})}
        if parallel_workers is not None:
            settings["parallel_workers"] = parallel_workers
        (self.root / "settings.json").write_text(json.dumps(settings))

    def command(self) -> list:
        return [MLSERVER, "start", str(self.root)]

    # -- conveniences ----------------------------------------------------------------------------
    def infer(self, model: str, body: dict, **kw) -> requests.Response:
        return requests.post(f"{self.url}/v2/models/{model}/infer", json=body, timeout=30, **kw)

    def load(self, model: str) -> requests.Response:
        return requests.post(f"{self.url}/v2/repository/models/{model}/load", timeout=120)

    def unload(self, model: str) -> requests.Response:
        return requests.post(f"{self.url}/v2/repository/models/{model}/unload", timeout=60)


# -- gRPC with tritonclient ------------------------------------------------------------------------------
# tritonclient.grpc and mlserver register the same protobuf symbols ("inference.ServerLiveRequest"):
# whichever is imported second fails. The unit tests import mlserver into the pytest process, so the
# gRPC client runs in a fresh interpreter.
GRPC_CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

req = json.load(sys.stdin)
client = grpcclient.InferenceServerClient(url=req["url"])
try:
    if req["op"] == "metadata":
        meta = client.get_model_metadata(req["model"])
        out = {"inputs": [[t.name, t.datatype, list(t.shape)] for t in meta.inputs],
               "outputs": [[t.name, t.datatype, list(t.shape)] for t in meta.outputs]}
    else:
        inputs = []
        for name, data, datatype in req["inputs"]:
            arr = (np.array([v.encode() for v in data], dtype=object) if datatype == "BYTES"
                   else np.array(data, dtype=req["dtypes"][name]))
            inp = grpcclient.InferInput(name, list(arr.shape), datatype)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        outputs = [grpcclient.InferRequestedOutput(n) for n in req.get("outputs") or []] or None
        res = client.infer(req["model"], inputs, outputs=outputs, parameters=req["parameters"])
        out = {"outputs": {}}
        for o in res.get_response().outputs:
            arr = res.as_numpy(o.name)
            values = [v.decode() for v in arr.reshape(-1)] if o.datatype == "BYTES" else arr.reshape(-1).tolist()
            out["outputs"][o.name] = {"datatype": o.datatype, "shape": list(arr.shape), "data": values}
except InferenceServerException as exc:
    out = {"error": {"status": exc.status(), "message": exc.message()}}
json.dump(out, sys.stdout)
"""


def grpc(server: "Server", op: str, model: str, inputs=(), parameters=None, outputs=None) -> dict:
    """One tritonclient.grpc call, in a fresh interpreter; inputs are (name, ndarray, V2 datatype)."""
    req = {"url": server.grpc_url, "op": op, "model": model, "parameters": parameters, "outputs": outputs,
           "inputs": [(n, a.tolist() if d != "BYTES" else [str(v) for v in a], d) for n, a, d in inputs],
           "dtypes": {n: str(a.dtype) for n, a, d in inputs if d != "BYTES"}}
    proc = subprocess.run([sys.executable, "-c", GRPC_CLIENT], input=json.dumps(req), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


GRPC_STREAM_CLIENT = r"""
import json, sys
import grpc
from mlserver.grpc import dataplane_pb2 as pb, dataplane_pb2_grpc as pb_grpc

req = json.load(sys.stdin)
params = {k: pb.InferParameter(string_param=str(v)) if isinstance(v, str) else pb.InferParameter(int64_param=v)
          for k, v in (req["parameters"] or {}).items()}
tensor = pb.ModelInferRequest.InferInputTensor(
    name=req["input"], datatype="BYTES", shape=[len(req["data"])],
    contents=pb.InferTensorContents(bytes_contents=[v.encode() for v in req["data"]]))
request = pb.ModelInferRequest(model_name=req["model"], inputs=[tensor], parameters=params)
out = {"pieces": [], "errors": []}
with grpc.insecure_channel(req["url"]) as channel:
    try:
        for res in pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([request]), timeout=60):
            out["pieces"].append(res.outputs[0].contents.bytes_contents[0].decode())
    except grpc.RpcError as exc:
        out["errors"].append(f"{exc.code().name}: {exc.details()}")
json.dump(out, sys.stdout)
"""


def grpc_stream(server: "Server", model: str, name: str, data: list, parameters=None) -> dict:
    """ModelStreamInfer with MLServer's own gRPC stubs, in a fresh interpreter: the text pieces.

    Not tritonclient's stream API: MLServer streams ModelInferResponse messages where Triton's protocol wraps
    them in ModelStreamInferResponse{error_message, infer_response}, so tritonclient reads every message's
    model_name as an error message.
    """
    req = {"url": server.grpc_url, "model": model, "input": name, "data": data, "parameters": parameters}
    proc = subprocess.run([sys.executable, "-c", GRPC_STREAM_CLIENT], input=json.dumps(req), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)
