"""Model URIs to local paths: local files and folders, s3:// (cached, atomic downloads), pvc:// and hf://
(through huggingface_hub and its own cache)."""

from __future__ import annotations

import contextlib
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
from typing import Iterable, Iterator, List, Optional, Tuple

from mlserver.settings import ModelSettings
from mlserver.utils import to_absolute_path

from .errors import ModelLoadError

logger = logging.getLogger("mlserver.modelserve.storage")

SUPPORTED = "a local path, file://, s3://bucket/key, pvc://claim/path or hf://org/name[@revision]"
DEFAULT_PVC_ROOT = "/mnt/pvc"  # where KServe's storage initializer mounts the claim of a pvc:// URI
_COMPLETE = ".modelserve-complete"
_MD5_ETAG = re.compile(r"[0-9a-f]{32}")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
PROGRESS_SECONDS = 2.0
"""How often a running download logs its progress."""
STALE_SECONDS = 3600.0
"""A temporary download folder nothing has written to for this long belongs to a dead process."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("MODELSERVE_CACHE_DIR") or Path.home() / ".cache" / "modelserve")


def split_uri(uri: str) -> Tuple[str, str]:
    """``(scheme, rest)`` for ``scheme://rest``; ``("", uri)`` for a plain path.

    Not ``urlparse``: S3 keys and file names may hold ``#``, ``?`` or ``;``, which are not URL syntax here.
    """
    m = _SCHEME.match(uri)
    return (m.group(1).lower(), m.group(2)) if m else ("", uri)


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
    uri = ((settings.parameters.uri if settings.parameters else None) or "").strip()
    if not uri:
        raise ModelLoadError(settings.name, f"parameters.uri is not set: point it at the model ({SUPPORTED})")
    path = resolve_uri(settings, uri, cache_dir=cache_dir, pvc_root=pvc_root)
    if path.is_dir():
        for fname in wellknown:
            if (path / fname).is_file():
                return path / fname
    return path


_FORMS = {"": "a local path", "file": "file://", "s3": "s3://bucket/key", "pvc": "pvc://claim/path",
          "hf": "hf://org/name[@revision]", "store": "store://path"}


def resolve_uri(
    settings: ModelSettings,
    uri: str,
    *,
    cache_dir: Optional[str] = None,
    pvc_root: Optional[str] = None,
    store_root: Optional[str] = None,
    schemes: Iterable[str] = ("", "file", "pvc", "s3", "hf"),
) -> Path:
    """The local path of one URI; a relative path is taken from the model-settings.json folder."""
    name = settings.name
    scheme, rest = split_uri(uri.strip())
    allowed = tuple(schemes)
    if scheme not in allowed:
        listed = ", ".join(_FORMS.get(s, f"{s}://") for s in allowed)
        raise ModelLoadError(name, f"unsupported URI scheme '{scheme}://' in '{uri}': use {listed}")
    if scheme == "":
        path = Path(to_absolute_path(settings, rest))
    elif scheme == "file":
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if not rest:
            raise ModelLoadError(name, f"no path in '{uri}' (expected file:///absolute/path or file://relative/path)")
        path = Path(to_absolute_path(settings, rest))
    elif scheme == "pvc":
        path = _pvc_path(name, uri, rest, pvc_root)
    elif scheme == "store":
        path = _store_path(name, uri, rest, store_root)
    elif scheme == "s3":
        bucket, _, key = rest.partition("/")
        path = S3Download(name, bucket, key.lstrip("/"), cache_dir).fetch()
    else:  # hf
        repo_id, revision = parse_hf(name, uri)
        path = hf_snapshot(name, repo_id, revision)
    if not path.exists():
        raise ModelLoadError(name, f"model path not found: {path} (from uri '{uri}')")
    return path


def _inside(root: Path, path: Path) -> bool:
    return path == root or str(path).startswith(str(root) + os.sep)


def _store_path(model: str, uri: str, rest: str, store_root: Optional[str]) -> Path:
    """``store://project/path``: an artifact store mounted as a folder (digitalhub's store:// pattern)."""
    root_value = store_root or os.environ.get("MODELSERVE_STORE_ROOT")
    if not root_value:
        raise ModelLoadError(
            model, f"'{uri}' needs a store root: set the option store_root or MODELSERVE_STORE_ROOT "
            "to the folder where the store is mounted")
    root = Path(os.path.abspath(root_value))
    path = Path(os.path.normpath(root / rest.strip("/")))
    if path == root or not _inside(root, path):
        raise ModelLoadError(model, f"'{uri}' points outside the store root {root}")
    if not path.exists():
        raise ModelLoadError(model, f"model path not found: {path} (from uri '{uri}' under store root {root})")
    return path


def _pvc_path(model: str, uri: str, rest: str, pvc_root: Optional[str]) -> Path:
    """``pvc://claim/sub/path`` as KServe lays it out: the claim is mounted at the root, so the model is
    ``<root>/sub/path``. A root holding one folder per claim (``<root>/claim/sub/path``) works too.
    """
    claim, _, sub = rest.partition("/")
    if not claim:
        raise ModelLoadError(model, f"no claim name in '{uri}' (expected pvc://claim/path)")
    root = Path(os.path.abspath(pvc_root or os.environ.get("MODELSERVE_PVC_ROOT") or DEFAULT_PVC_ROOT))
    sub = sub.strip("/")
    candidates = [Path(os.path.normpath(root / sub)), Path(os.path.normpath(root / claim / sub))]
    for path in candidates:
        if path != root and not str(path).startswith(str(root) + os.sep):
            raise ModelLoadError(model, f"'{uri}' points outside the claim's mount root {root}")
    for path in candidates:
        if path.exists():
            return path
    raise ModelLoadError(
        model,
        f"model path not found: {candidates[0]} (from uri '{uri}'; also tried {candidates[1]}; "
        f"the claim is expected to be mounted at {root}: set the option pvc_root or MODELSERVE_PVC_ROOT)",
    )


# -- hf:// -------------------------------------------------------------------------------------------
_HF_INSTALL = "pip install modelserve[huggingface]"


def parse_hf(model: str, uri: str) -> Tuple[str, Optional[str]]:
    """``(repo_id, revision)`` of ``hf://org/name[@revision]``; revision None means the hub's default (main).

    The revision is a branch, a tag or a full commit sha, and may hold slashes (``@refs/pr/1``). KServe's
    spelling ``hf://org/name:revision`` is accepted too (neither a repository id nor a git ref holds ':').
    """
    scheme, rest = split_uri(uri)
    if scheme != "hf":
        raise ModelLoadError(model, f"'{uri}' is not an hf:// URI")
    cut = min((i for i in (rest.find("@"), rest.find(":")) if i >= 0), default=-1)
    repo_id, at, revision = (rest, "", "") if cut < 0 else (rest[:cut], rest[cut], rest[cut + 1:])
    repo_id = repo_id.strip("/")
    expected = "expected hf://org/name or hf://org/name@revision"
    if not repo_id:
        raise ModelLoadError(model, f"no repository in '{uri}' ({expected})")
    if repo_id.count("/") > 1:
        raise ModelLoadError(model, f"'{repo_id}' in '{uri}' is not a repository id ({expected}; "
                                    "a path inside the repository is not supported)")
    if at and not revision.strip():
        raise ModelLoadError(model, f"empty revision after '{at}' in '{uri}' ({expected})")
    if at:
        revision = revision.strip()
        parts = revision.split("/")
        if revision.startswith("/") or ".." in parts or any(c.isspace() for c in revision):
            raise ModelLoadError(model, f"invalid revision '{revision}' in '{uri}' "
                                        "(a branch, a tag or a commit sha)")
    return repo_id, (revision if at else None)


def hf_cache_dir() -> Path:
    """huggingface_hub's cache, read from the environment now (huggingface_hub reads it once, at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hf_offline() -> bool:
    if "HF_HUB_OFFLINE" in os.environ:
        return _on(os.environ["HF_HUB_OFFLINE"])
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - checked by hf_snapshot first
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _cached_refs(folder: Path) -> List[str]:
    refs = folder / "refs"
    names = sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file()) if refs.is_dir() else []
    return names[:10]


def hf_snapshot(model: str, repo_id: str, revision: Optional[str] = None,
                allow_patterns: Optional[List[str]] = None) -> Path:
    """The local snapshot folder of ``repo_id`` at ``revision`` (default: main), in huggingface_hub's cache.

    Online, ``snapshot_download`` fetches what the cache lacks (``allow_patterns`` limits the files, e.g.
    to a tokenizer's) and falls back on the cached snapshot when the hub cannot be reached. With
    ``HF_HUB_OFFLINE=1`` only the cache is read: a branch or tag through ``refs/<revision>``, a full
    commit sha directly. The cache is ``HF_HUB_CACHE`` (default ``$HF_HOME/hub``), shared with every
    other Hugging Face tool.
    """
    shown = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    rev = revision or "main"

    def fail(msg: str) -> ModelLoadError:
        return ModelLoadError(model, f"{shown}: {msg}")

    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        raise fail(f"hf:// URIs need huggingface_hub: {_HF_INSTALL}") from None
    try:
        validate_repo_id(repo_id)
    except hf_errors.HFValidationError as exc:
        raise fail(f"invalid repository id '{repo_id}': {_first_line(exc)}") from None

    cache = hf_cache_dir()
    offline = hf_offline()
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    logger.info("model '%s': resolving %s (revision %s) in the Hugging Face cache %s%s", model, shown, rev,
                cache, " (offline)" if offline else "")
    try:
        path = huggingface_hub.snapshot_download(
            repo_id, revision=rev, cache_dir=str(cache), local_files_only=offline, allow_patterns=allow_patterns,
            endpoint=(os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None)
    except hf_errors.LocalEntryNotFoundError as exc:
        if not folder.is_dir():
            where = f"{repo_id} is not in the Hugging Face cache at {cache}"
        elif (folder / "refs" / rev).is_file():
            where = (f"revision '{rev}' of {repo_id} points at snapshot "
                     f"{(folder / 'refs' / rev).read_text().strip()[:40]}, which is missing from the Hugging Face "
                     f"cache at {cache}")
        else:
            refs = _cached_refs(folder)
            where = (f"revision '{rev}' of {repo_id} is not in the Hugging Face cache at {cache} "
                     f"(cached revisions: {', '.join(refs) or 'none'}; a commit sha must be the full 40 characters)")
        if offline:
            why = "and the hub is offline (HF_HUB_OFFLINE is set)"
        else:
            cause = exc.__cause__ or exc.__context__
            why = "and the hub is unreachable" + (f" ({_first_line(cause)})" if cause else "")
        raise fail(f"{where} {why}; download it first (huggingface-cli download {repo_id}"
                   f"{' --revision ' + rev if revision else ''}) or set HF_HUB_CACHE/HF_HOME to the cache") from None
    except hf_errors.GatedRepoError:
        raise fail(f"{repo_id} is gated: accept its conditions on the hub and set HF_TOKEN") from None
    except hf_errors.RepositoryNotFoundError:
        raise fail(f"repository {repo_id} not found on the hub (or private: set HF_TOKEN)") from None
    except hf_errors.RevisionNotFoundError:
        raise fail(f"revision '{rev}' not found in {repo_id}") from None
    except hf_errors.HfHubHTTPError as exc:
        raise fail(f"the hub refused: {_first_line(exc)}") from None
    except PermissionError as exc:
        raise fail(f"cannot write the Hugging Face cache at {cache}: {exc.strerror or exc} "
                   "(set HF_HUB_CACHE or HF_HOME)") from None
    except Exception as exc:
        raise fail(f"download failed: {type(exc).__name__}: {_first_line(exc)}") from None
    logger.info("model '%s': %s is %s", model, shown, path)
    return Path(path)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _off(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("0", "false", "no", "off")


def _on(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


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

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / f".{self.entry.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self.fail(f"cannot use the cache folder {self.root}: {exc.strerror or exc} "
                            "(set the option cache_dir or MODELSERVE_CACHE_DIR)") from None
        try:
            try:
                import fcntl

                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    logger.info("model '%s': waiting for another loader downloading %s", self.model, self.uri)
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except (ImportError, OSError) as exc:  # no flock here (Windows, some network file systems)
                logger.debug("model '%s': no lock on the cache (%s)", self.model, exc)
            yield
        finally:
            os.close(fd)  # releases the lock

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
