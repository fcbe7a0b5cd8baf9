"""Model URIs to local paths: local files and folders, s3:// (cached, atomic downloads) and pvc://."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable, List, Optional
from urllib.parse import urlparse

from mlserver.settings import ModelSettings
from mlserver.utils import to_absolute_path

from .errors import ModelLoadError

logger = logging.getLogger("modelserve.storage")

SUPPORTED = "a local path, file://, s3://bucket/key or pvc://claim/path"
DEFAULT_PVC_ROOT = "/mnt/pvc"
_COMPLETE = ".modelserve-complete"


def default_cache_dir() -> Path:
    return Path(os.environ.get("MODELSERVE_CACHE_DIR") or Path.home() / ".cache" / "modelserve")


def resolve(
    settings: ModelSettings,
    wellknown: Iterable[str] = (),
    cache_dir: Optional[str] = None,
    pvc_root: Optional[str] = None,
) -> Path:
    """The local path of the model that ``parameters.uri`` names.

    A folder holding one of the ``wellknown`` file names resolves to that file, as MLServer's own
    ``get_model_uri`` does; otherwise the folder itself is returned.
    """
    name = settings.name
    uri = settings.parameters.uri if settings.parameters else None
    if not uri:
        raise ModelLoadError(name, f"parameters.uri is not set: point it at the model ({SUPPORTED})")
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file"):
        path = Path(to_absolute_path(settings, parsed.path if scheme else uri))
    elif scheme == "pvc":
        root = Path(pvc_root or os.environ.get("MODELSERVE_PVC_ROOT") or DEFAULT_PVC_ROOT)
        path = root / parsed.netloc / parsed.path.lstrip("/")
    elif scheme == "s3":
        path = S3Download(name, parsed.netloc, parsed.path.lstrip("/"), cache_dir).fetch()
    else:
        raise ModelLoadError(name, f"unsupported URI scheme '{scheme}://' in '{uri}': use {SUPPORTED}")
    if not path.exists():
        raise ModelLoadError(name, f"model path not found: {path} (from uri '{uri}')")
    if path.is_dir():
        for fname in wellknown:
            if (path / fname).is_file():
                return path / fname
    return path


def _s3_client():
    """A boto3 S3 client configured from the usual AWS_* variables and KServe's S3_* ones."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint and os.environ.get("S3_ENDPOINT"):  # KServe's storage-initializer convention
        host = os.environ["S3_ENDPOINT"]
        if "://" not in host:
            https = os.environ.get("S3_USE_HTTPS", "1") not in ("0", "false", "False")
            host = ("https://" if https else "http://") + host
        endpoint = host
    verify = os.environ.get("S3_VERIFY_SSL", "1") not in ("0", "false", "False")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        verify=verify,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
    )


class S3Download:
    """Mirrors one object or one prefix into the cache.

    The cache entry is trusted only when its manifest (keys, sizes, ETags) matches the bucket's listing.
    Files are written to a private temporary folder that is renamed into place once complete, so an
    interrupted download never leaves an entry that a later load would trust.
    """

    def __init__(self, model: str, bucket: str, key: str, cache_dir: Optional[str]):
        self.model, self.bucket, self.key = model, bucket, key
        self.uri = f"s3://{bucket}/{key}"
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self.entry = Path(cache_dir or default_cache_dir()) / "s3" / f"{bucket}-{digest}"

    def fail(self, msg: str) -> ModelLoadError:
        return ModelLoadError(self.model, f"{self.uri}: {msg}")

    def _listing(self, client) -> List[dict]:
        from botocore.exceptions import BotoCoreError, ClientError

        if not self.bucket:
            raise self.fail("no bucket in the URI (expected s3://bucket/key)")
        try:
            prefix = self.key.rstrip("/")
            objects: List[dict] = []
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    k = obj["Key"]
                    if k == prefix:
                        rel = os.path.basename(k)
                    elif not prefix or k.startswith(prefix + "/"):
                        rel = k[len(prefix) :].lstrip("/") if prefix else k
                    else:
                        continue  # "model2.pkl" is not under "model"
                    if rel and not rel.endswith("/"):
                        objects.append({"key": k, "rel": rel, "size": obj["Size"], "etag": obj.get("ETag", "")})
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise self.fail(f"S3 refused the listing ({code}: {exc.response.get('Error', {}).get('Message', '')})")
        except BotoCoreError as exc:
            raise self.fail(f"cannot reach S3 ({exc})")
        if not objects:
            raise self.fail("no such object or prefix")
        exact = [o for o in objects if o["key"] == prefix]
        return exact or objects

    def _trusted(self, manifest: List[dict]) -> Optional[Path]:
        marker = self.entry / _COMPLETE
        try:
            if json.loads(marker.read_text()) == manifest:
                return self.entry
        except (OSError, ValueError):
            pass
        return None

    def fetch(self) -> Path:
        client = _s3_client()
        manifest = self._listing(client)
        single = len(manifest) == 1 and manifest[0]["key"] == self.key.rstrip("/")
        cached = self._trusted(manifest)
        if cached is not None:
            logger.info("model '%s': %s found in the cache at %s", self.model, self.uri, cached)
        else:
            self._download(client, manifest)
        return self.entry / manifest[0]["rel"] if single else self.entry

    def _download(self, client, manifest: List[dict]) -> None:
        total = sum(o["size"] for o in manifest) or 1
        self.entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.entry.parent / f".{self.entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        logger.info(
            "model '%s': downloading %s (%d file(s), %.1f MB) into %s",
            self.model, self.uri, len(manifest), total / 1e6, self.entry,
        )
        done = 0
        last_log = time.monotonic()

        def progress(n: int) -> None:
            nonlocal done, last_log
            done += n
            now = time.monotonic()
            if now - last_log >= 2.0:
                last_log = now
                logger.info("model '%s': %s %.0f%% (%.1f/%.1f MB)", self.model, self.uri,
                            100.0 * done / total, done / 1e6, total / 1e6)

        try:
            for obj in manifest:
                target = (tmp / obj["rel"]).resolve()
                if not str(target).startswith(str(tmp.resolve()) + os.sep):
                    raise self.fail(f"object key escapes the download folder: {obj['key']}")
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(self.bucket, obj["key"], str(target), Callback=progress)
            (tmp / _COMPLETE).write_text(json.dumps(manifest))
            self._install(tmp)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise self.fail(f"download failed: {type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("model '%s': downloaded %s (%.1f MB)", self.model, self.uri, total / 1e6)

    def _install(self, tmp: Path) -> None:
        """Swap the complete temporary folder into place; a concurrent loader may have won the race."""
        old = None
        if self.entry.exists():
            old = self.entry.parent / f".{self.entry.name}.old-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.entry, old)
            except OSError:
                old = None
        try:
            os.rename(tmp, self.entry)
        except OSError:
            if not (self.entry / _COMPLETE).exists():
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
