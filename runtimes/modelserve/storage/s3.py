"""s3://bucket/key: downloads into a cache, atomic (a temporary folder renamed into place), checked against the
objects' ETags, shared between processes by a lock, with credentials masked in botocore's debug log."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import List, Optional

from ..errors import ModelLoadError
from .cache import entry_lock
from . import _off, _on, default_cache_dir

logger = logging.getLogger("mlserver.modelserve.storage")

_COMPLETE = ".modelserve-complete"
_MD5_ETAG = re.compile(r"[0-9a-f]{32}")
PROGRESS_SECONDS = 2.0
"""How often a running download logs its progress."""
STALE_SECONDS = 3600.0
"""A temporary download folder nothing has written to for this long belongs to a dead process."""


class _RedactCredentials(logging.Filter):
    """botocore at DEBUG logs each signed request: the access key id in its Authorization header and the
    session token (``x-amz-security-token``). This filter masks the credentials our S3 clients use in the
    records of the loggers that print them, so that a DEBUG log never holds them."""

    LOGGERS = ("botocore.auth", "botocore.endpoint", "botocore.parsers", "botocore.httpsession",
               "botocore.credentials", "botocore.hooks")

    def __init__(self) -> None:
        super().__init__()
        self.values: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.values:
            msg = record.getMessage()
            masked = msg
            for value in self.values:
                masked = masked.replace(value, "***")
            if masked != msg:
                record.msg, record.args = masked, None
        return True

    def add(self, session) -> None:
        try:
            creds = session.get_credentials()
            frozen = creds.get_frozen_credentials() if creds is not None else None
        except Exception:  # no credentials (anonymous), or they cannot be read: the client will say so
            return
        if frozen is None:
            return
        new = {v for v in (frozen.access_key, frozen.secret_key, frozen.token) if v and len(v) >= 8}
        if new - self.values:
            self.values |= new
            for name in self.LOGGERS:
                logger_ = logging.getLogger(name)
                if self not in logger_.filters:
                    logger_.addFilter(self)


_REDACT = _RedactCredentials()


def _s3_client():
    """A boto3 S3 client configured from the usual AWS_* variables and KServe's S3_* ones."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    https = not _off(os.environ.get("S3_USE_HTTPS"))
    endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                or os.environ.get("S3_ENDPOINT") or "").strip()  # S3_ENDPOINT: KServe's convention
    if endpoint and "://" not in endpoint:
        endpoint = ("https://" if https else "http://") + endpoint
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    config = Config(retries={"max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS") or 5),
                             "mode": os.environ.get("AWS_RETRY_MODE") or "standard"})
    if _on(os.environ.get("awsAnonymousCredential")):  # KServe: a public bucket, unsigned requests
        config = config.merge(Config(signature_version=UNSIGNED))
    if _on(os.environ.get("S3_USER_VIRTUAL_BUCKET")):  # KServe: virtual-hosted-style bucket URLs
        config = config.merge(Config(s3={"addressing_style": "virtual"}))
    # a session of its own: boto3's default session is not safe to share between loader threads
    session = boto3.session.Session()
    _REDACT.add(session)
    return session.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=region,
        verify=not _off(os.environ.get("S3_VERIFY_SSL")),
        config=config,
    )


class _Unreachable(Exception):
    """S3 did not answer (network, TLS, timeouts, 5xx): a cached copy may stand in."""


class S3Download:
    """Mirrors one object or one prefix into the cache.

    The cache entry is trusted only when its manifest (keys, sizes, ETags) matches the bucket's listing
    and its files have the listed sizes. Files are written to a private temporary folder that is
    renamed into place once complete, so an interrupted download never leaves an entry that a later
    load would trust. Loaders of the same URI (parallel workers) take turns through a lock file, so
    the second one finds the first one's copy instead of downloading and swapping it a second time.
    """

    def __init__(self, model: str, bucket: str, key: str, cache_dir: Optional[str]):
        self.model, self.bucket, self.key = model, bucket, key
        self.uri = f"s3://{bucket}/{key}"
        self.as_folder = key == "" or key.endswith("/")
        self.prefix = key.rstrip("/")
        self.root = Path(cache_dir or default_cache_dir()).absolute() / "s3"
        self.entry = self.root / f"{bucket}-{hashlib.sha256(self.uri.encode()).hexdigest()[:16]}"

    def fail(self, msg: str) -> ModelLoadError:
        return ModelLoadError(self.model, f"{self.uri}: {msg}")

    # -- the bucket's side -------------------------------------------------------------------------
    def _client(self):
        try:
            client = _s3_client()
        except Exception as exc:
            raise self.fail(f"cannot set up the S3 client: {type(exc).__name__}: {exc}") from None
        # the same bucket and key on another endpoint is another object: another cache entry
        ident = f"{client.meta.endpoint_url}|{self.uri}"
        self.entry = self.root / f"{self.bucket}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
        return client

    def _listing(self, client) -> List[dict]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
        from botocore.exceptions import ConnectionError as BotoConnectionError, HTTPClientError

        exact: Optional[dict] = None
        objects: List[dict] = []
        try:
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", []):
                    k = obj["Key"]
                    item = {"key": k, "size": obj["Size"], "etag": obj.get("ETag", "")}
                    if k == self.prefix and not self.as_folder:
                        exact = {**item, "rel": os.path.basename(k)}
                        continue
                    if self.prefix and not k.startswith(self.prefix + "/"):
                        continue  # "model2.pkl" is not under "model"
                    rel = k[len(self.prefix):].lstrip("/")
                    if rel and not rel.endswith("/") and os.path.basename(rel) != _COMPLETE:
                        objects.append({**item, "rel": rel})
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code, msg = err.get("Code", ""), err.get("Message", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status >= 500:
                raise _Unreachable(f"S3 answered {status} ({code}: {msg})") from None
            if code == "NoSuchBucket":
                raise self.fail(f"bucket '{self.bucket}' does not exist") from None
            raise self.fail(f"S3 refused to list the bucket ({code}: {msg})") from None
        except NoCredentialsError:
            raise self.fail("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                            "(or awsAnonymousCredential=true for a public bucket)") from None
        except (BotoConnectionError, HTTPClientError) as exc:
            raise _Unreachable(str(exc)) from None
        except BotoCoreError as exc:
            raise self.fail(f"S3 error: {type(exc).__name__}: {exc}") from None
        if exact is not None:
            return [exact]
        if not objects:
            where = f"no objects under '{self.prefix}/'" if self.prefix else "no objects"
            what = f"no object '{self.prefix}' and " if self.prefix and not self.as_folder else ""
            raise self.fail(f"not found: {what}{where} in bucket '{self.bucket}'")
        return objects

    # -- the cache's side --------------------------------------------------------------------------
    def _cached_manifest(self) -> Optional[List[dict]]:
        """The manifest of a complete cache entry whose files are all present with their sizes."""
        try:
            manifest = json.loads((self.entry / _COMPLETE).read_text())
            for obj in manifest:
                if (self.entry / obj["rel"]).stat().st_size != obj["size"]:
                    return None
            return manifest
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def _trusted(self, manifest: List[dict]) -> bool:
        return self._cached_manifest() == manifest

    def _path(self, manifest: List[dict]) -> Path:
        single = len(manifest) == 1 and manifest[0]["key"] == self.prefix and not self.as_folder
        return self.entry / manifest[0]["rel"] if single else self.entry

    def fetch(self) -> Path:
        if not self.bucket:
            raise self.fail("no bucket in the URI (expected s3://bucket/key)")
        client = self._client()
        try:
            manifest = self._listing(client)
        except _Unreachable as exc:
            cached = self._cached_manifest()
            if cached is None:
                raise self.fail(f"cannot reach S3 at {client.meta.endpoint_url}: {exc}") from None
            logger.warning("model '%s': cannot reach S3 (%s); using the copy of %s cached at %s",
                           self.model, exc, self.uri, self.entry)
            return self._path(cached)
        if self._trusted(manifest):
            logger.info("model '%s': %s found in the cache at %s", self.model, self.uri, self.entry)
            return self._path(manifest)
        with self._lock():
            if self._trusted(manifest):  # another loader finished it while we waited
                logger.info("model '%s': %s downloaded by another loader into %s",
                            self.model, self.uri, self.entry)
            else:
                self._download(client, manifest)
        return self._path(manifest)

    def _lock(self):
        return entry_lock(self.root, self.entry.name, self.model, self.uri, self.fail)

    def _sweep(self) -> None:
        """Remove temporary folders of this entry that a killed process left behind."""
        now = time.time()
        for pattern in (f".{self.entry.name}.tmp-*", f".{self.entry.name}.old-*"):
            for stale in self.root.glob(pattern):
                try:
                    newest = max([stale.lstat().st_mtime] + [
                        os.lstat(os.path.join(d, f)).st_mtime
                        for d, _, files in os.walk(stale) for f in files
                    ])
                except OSError:
                    continue
                if now - newest > STALE_SECONDS:
                    logger.info("model '%s': removing the abandoned download %s", self.model, stale)
                    shutil.rmtree(stale, ignore_errors=True)

    def _download(self, client, manifest: List[dict]) -> None:
        total = sum(o["size"] for o in manifest)
        self._sweep()
        tmp = self.root / f".{self.entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        logger.info(
            "model '%s': downloading %s (%d file(s), %.1f MB) into %s",
            self.model, self.uri, len(manifest), total / 1e6, self.entry,
        )
        started = last_log = time.monotonic()
        done = 0
        guard = threading.Lock()  # s3transfer calls back from its worker threads

        def progress(n: int) -> None:
            nonlocal done, last_log
            with guard:
                done += n
                now = time.monotonic()
                if now - last_log < PROGRESS_SECONDS:
                    return
                last_log = now
                logger.info("model '%s': %s %.0f%% (%.1f/%.1f MB)", self.model, self.uri,
                            100.0 * done / (total or 1), done / 1e6, total / 1e6)

        try:
            tmp.mkdir()
            base = str(tmp.resolve()) + os.sep
            for obj in manifest:
                target = (tmp / obj["rel"]).resolve()
                if not str(target).startswith(base):
                    raise self.fail(f"object key escapes the download folder: {obj['key']}")
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(self.bucket, obj["key"], str(target), Callback=progress)
                size = target.stat().st_size
                if size != obj["size"]:
                    raise self.fail(f"{obj['key']}: got {size} bytes, the listing said {obj['size']} "
                                    "(did it change during the download? loading again will retry)")
                self._verify(client, obj, target)
            (tmp / _COMPLETE).write_text(json.dumps(manifest))
            self._install(tmp, manifest)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise self.fail(f"download failed: {type(exc).__name__}: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("model '%s': downloaded %s (%.1f MB in %.1f s)", self.model, self.uri,
                    total / 1e6, time.monotonic() - started)

    def _verify(self, client, obj: dict, target: Path) -> None:
        """The file's MD5 against the object's ETag, where the ETag is one (a single-part upload).

        botocore already checks the CRC of objects uploaded with a checksum; this covers the others. A
        multipart ETag (``<md5>-<parts>``) is no MD5 of the file and is skipped; so is a mismatch on an
        encrypted object (SSE-KMS, SSE-C, some stores' SSE-S3), whose ETag is not its MD5 either.
        """
        etag = obj["etag"].strip('"').lower()
        if not _MD5_ETAG.fullmatch(etag):
            return
        digest = hashlib.md5(usedforsecurity=False)
        with open(target, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() == etag:
            return
        try:
            head = client.head_object(Bucket=self.bucket, Key=obj["key"])
        except Exception:
            head = {}
        if head.get("ServerSideEncryption") or head.get("SSECustomerAlgorithm"):
            logger.debug("model '%s': %s is encrypted; its ETag is not its MD5", self.model, obj["key"])
            return
        raise self.fail(f"{obj['key']}: the downloaded bytes do not match the object's ETag (MD5 "
                        f"{digest.hexdigest()}, ETag {etag}): corrupted in transit? loading again will retry")

    def _install(self, tmp: Path, manifest: List[dict]) -> None:
        """Swap the complete temporary folder into place (the stale entry, if any, goes away)."""
        old = None
        if os.path.lexists(self.entry):
            old = self.root / f".{self.entry.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.entry, old)
            except FileNotFoundError:
                old = None
        try:
            os.rename(tmp, self.entry)
        except OSError:
            if not self._trusted(manifest):  # without a working lock, another loader may have won
                raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
