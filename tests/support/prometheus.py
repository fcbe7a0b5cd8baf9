"""A real Prometheus server (Debian's ``prometheus``, installed by scripts/dev.sh setup) scraping given targets
every second, and its HTTP query API."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import List

import requests

from .harness import eventually, free_port


class Prometheus:
    def __init__(self, root: Path, targets: List[str], interval: str = "1s"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        quoted = ", ".join(f"'{t}'" for t in targets)
        (self.root / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            f"scrape_configs:\n  - job_name: modelserve\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: [{quoted}]\n")
        self.proc = None

    @staticmethod
    def available() -> bool:
        return shutil.which("prometheus") is not None

    def start(self) -> "Prometheus":
        self._log = open(self.root / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.root / 'prometheus.yml'}", f"--storage.tsdb.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self._log, stderr=subprocess.STDOUT)

        def ready():
            try:
                return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        assert eventually(ready, timeout=60), (self.root / "prometheus.log").read_text()[-2000:]
        return self

    def query(self, expr: str) -> list:
        r = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "success", r.text
        return r.json()["data"]["result"]

    def targets_up(self) -> bool:
        active = requests.get(self.url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self._log.close()
