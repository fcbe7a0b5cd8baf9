"""A real S3 endpoint for the tests: moto's server as a subprocess on a free port.

``moto_s3()`` is a context manager; tests wrap it in a session-scoped fixture::

    @pytest.fixture(scope="session")
    def s3(tmp_path_factory):
        with moto_s3(tmp_path_factory.mktemp("moto")) as srv:
            yield srv
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Optional, Union

import requests

from .harness import free_port

BUCKET = "models"


class S3Server:
    """A running moto server: its endpoint, the environment that points a client at it, helpers."""

    def __init__(self, endpoint: str, bucket: str, proc: subprocess.Popen, log: Path):
        self.endpoint, self.bucket, self.proc, self.log_path = endpoint, bucket, proc, log

    @property
    def env(self) -> Dict[str, str]:
        """AWS_* variables for a boto3 client (or an mlserver process) that should talk to this server.

        The shared config files are pointed at nothing and instance metadata is off, so that nothing
        from the machine running the tests leaks in.
        """
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # variables that would otherwise redirect or configure the client differently
    UNSET = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "S3_ENDPOINT",
             "S3_USE_HTTPS", "S3_VERIFY_SSL", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "awsAnonymousCredential")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def put(self, key: str, body: Union[bytes, str, Path], bucket: Optional[str] = None) -> str:
        """Upload ``body`` (bytes, or a local file) to ``key``; returns its s3:// URI."""
        data = Path(body).read_bytes() if isinstance(body, (str, Path)) else body
        bucket = bucket or self.bucket
        self.client().put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"

    def delete(self, key: str, bucket: Optional[str] = None) -> None:
        self.client().delete_object(Bucket=bucket or self.bucket, Key=key)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@contextlib.contextmanager
def moto_s3(workdir: Path, bucket: str = BUCKET, timeout: float = 60) -> Iterator[S3Server]:
    """Start ``python -m moto.server`` on a free port, wait until it answers, create ``bucket``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = workdir / "moto.log"
    log = open(log_path, "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    srv = S3Server(endpoint, bucket, proc, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited ({proc.returncode}):\n{srv.log()[-4000:]}")
            try:
                if requests.get(endpoint + "/moto-api/", timeout=1).status_code < 500:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server not answering after {timeout}s:\n{srv.log()[-4000:]}")
            time.sleep(0.2)
        srv.client().create_bucket(Bucket=bucket)
        yield srv
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
