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


class Server:
    def __init__(self, root: Path, parallel_workers: Optional[int] = None, debug: bool = True,
                 env: Optional[dict] = None, log: Optional[Path] = None, extra: Optional[dict] = None):
        self.root = Path(root)
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        settings = {"debug": debug, "http_port": self.http_port, "grpc_port": self.grpc_port,
                    "metrics_port": self.metrics_port, "host": "127.0.0.1", **(extra or {})}
        if parallel_workers is not None:
            settings["parallel_workers"] = parallel_workers
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "settings.json").write_text(json.dumps(settings))
        self.env = {**os.environ, **(env or {})}
        self.log_path = log or self.root / "mlserver.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 120) -> "Server":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([MLSERVER, "start", str(self.root)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlserver exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            try:
                if requests.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlserver not ready after {timeout}s:\n{self.log()[-4000:]}")

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

    # -- conveniences ----------------------------------------------------------------------------
    def infer(self, model: str, body: dict, **kw) -> requests.Response:
        return requests.post(f"{self.url}/v2/models/{model}/infer", json=body, timeout=30, **kw)

    def load(self, model: str) -> requests.Response:
        return requests.post(f"{self.url}/v2/repository/models/{model}/load", timeout=120)

    def unload(self, model: str) -> requests.Response:
        return requests.post(f"{self.url}/v2/repository/models/{model}/unload", timeout=60)
