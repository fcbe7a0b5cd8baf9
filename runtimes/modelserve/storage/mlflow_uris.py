"""MLflow model URIs -> a local folder, through MLflow's own client against the tracking server.

Forms: ``runs:/<run_id>/<artifact path>``, ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
``models:/<name>/latest`` (and ``models:/<name>/<stage>``), ``models:/<model id>`` (MLflow 3's LoggedModel),
``mlflow-artifacts:/<path>`` and ``mlflow-artifacts://<host>/<path>``.

The tracking server is ``$MLFLOW_TRACKING_URI``, else ModelHub's:
``$MODELHUB_BASE_URL/modelhub/api/v2/client/$CLIENT_ID/mlflow-tracking`` with ``$MODELHUB_API_KEY`` as the
bearer token (``MLFLOW_TRACKING_TOKEN``) unless one is set, as ModelHub's SDK configures MLflow.

Downloads go to ``<cache>/mlflow/<hash of tracking URI and resolved URI>/`` through a temporary folder renamed
into place. Immutable targets (a run's artifacts, a registry version, a LoggedModel) are reused from the cache
without asking the server; aliases, ``latest`` and stages are resolved to a version on every load;
``mlflow-artifacts:`` paths are downloaded again on every load. Every failure is one ``ModelLoadError`` line
with credentials masked. ``mlflow`` is imported only here, and only when such a URI is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Tuple

from ..errors import ModelLoadError
from .cache import entry_lock
from . import default_cache_dir

logger = logging.getLogger("mlserver.modelserve.storage")

SCHEMES = ("runs", "models", "mlflow-artifacts")
FORMS = {
    "runs": "runs:/<run_id>/<artifact path>",
    "models": "models:/<name>/<version>, models:/<name>@<alias> or models:/<name>/latest",
    "mlflow-artifacts": "mlflow-artifacts:/<path>",
}
NO_TRACKING = ("set MLFLOW_TRACKING_URI to the MLflow tracking server, or MODELHUB_BASE_URL and CLIENT_ID "
               "for ModelHub's (with MODELHUB_API_KEY as its token)")
# MLflow's HTTP defaults (7 retries, backoff factor 2, 120 s timeout) keep a load waiting minutes on a server
# that is down; these apply only where the variable is not set.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
QUIET_DEFAULTS = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # tqdm bars in a server log are noise
SECRET_ENV = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MODELHUB_API_KEY", "MODELHUB_CLIENT_SECRET",
              "MODELHUB_AUTH_CLIENT_SECRET")

_COMPLETE = ".modelserve-complete"
_FORM = re.compile(r"^(runs|models|mlflow-artifacts):/", re.IGNORECASE)
_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]+@")
STALE_SECONDS = 3600.0


# -- forms -------------------------------------------------------------------------------------------------
def scheme_of(uri: str) -> Optional[str]:
    """``runs``, ``models`` or ``mlflow-artifacts`` for an MLflow URI (``x:/`` or ``x://``), else None."""
    m = _FORM.match(uri.strip())
    return m.group(1).lower() if m else None


@dataclass(frozen=True)
class MLflowURI:
    """One parsed URI. ``kind``: run, version, alias, latest, stage, logged (a LoggedModel id) or artifacts."""

    uri: str
    kind: str
    run_id: str = ""
    path: str = ""
    name: str = ""
    ref: str = ""  # the version, alias, stage or model id
    host: str = ""  # mlflow-artifacts://<host>/...

    @property
    def immutable(self) -> bool:
        return self.kind in ("run", "version", "logged")


def parse(model: str, uri: str) -> MLflowURI:
    uri = uri.strip()
    scheme = scheme_of(uri)
    if scheme is None:
        raise ModelLoadError(model, f"'{redact(uri)}' is not an MLflow URI ({'; '.join(FORMS.values())})")
    rest = uri[len(scheme) + 2:]
    bad = f"malformed MLflow URI '{redact(uri)}': expected {FORMS[scheme]}"
    if scheme == "mlflow-artifacts":
        host = ""
        if rest.startswith("/"):  # mlflow-artifacts://host/path
            host, _, rest = rest[1:].partition("/")
            if not host:
                raise ModelLoadError(model, bad)
        path = rest.strip("/")
        if not path:
            raise ModelLoadError(model, bad)
        return MLflowURI(uri, "artifacts", path=path, host=host)
    if rest.startswith("/"):
        raise ModelLoadError(model, bad)
    if scheme == "runs":
        run_id, _, path = rest.partition("/")
        path = path.strip("/")
        if not run_id.strip() or not path:
            raise ModelLoadError(model, bad)
        return MLflowURI(uri, "run", run_id=run_id.strip(), path=path)
    parts = rest.rstrip("/").split("/")
    if len(parts) == 2 and parts[0].strip() and parts[1].strip():
        name, ref = parts[0], parts[1].strip()
        if ref.isdigit():
            return MLflowURI(uri, "version", name=name, ref=str(int(ref)))
        if ref.lower() == "latest":
            return MLflowURI(uri, "latest", name=name)
        return MLflowURI(uri, "stage", name=name, ref=ref)
    if len(parts) == 1 and parts[0].strip():
        name, at, alias = parts[0].rpartition("@")
        if at:
            if not name.strip() or not alias.strip():
                raise ModelLoadError(model, bad)
            return MLflowURI(uri, "alias", name=name, ref=alias.strip())
        return MLflowURI(uri, "logged", ref=parts[0].strip())
    raise ModelLoadError(model, bad)


# -- the tracking server -----------------------------------------------------------------------------------
class NoTrackingURI(Exception):
    pass


def tracking_uri(env: Mapping[str, str] = os.environ) -> Tuple[str, str]:
    """``(uri, where it came from)``: MLFLOW_TRACKING_URI, else ModelHub's MODELHUB_BASE_URL + CLIENT_ID.

    ModelHub's SDK reads its base URL from MODELHUB_URI or MODELHUB_BASE_URL and the client id from
    GENESIS_CLIENT_ID or CLIENT_ID (in that order); so does this.
    """
    explicit = (env.get("MLFLOW_TRACKING_URI") or "").strip()
    if explicit:
        return explicit, "MLFLOW_TRACKING_URI"
    base = ((env.get("MODELHUB_URI") or "").strip() or (env.get("MODELHUB_BASE_URL") or "").strip()).rstrip("/")
    client = (env.get("GENESIS_CLIENT_ID") or "").strip() or (env.get("CLIENT_ID") or "").strip()
    if base and client:
        return f"{base}/modelhub/api/v2/client/{client}/mlflow-tracking", "MODELHUB_BASE_URL and CLIENT_ID"
    if base:
        raise NoTrackingURI("MODELHUB_BASE_URL is set but CLIENT_ID is not: set CLIENT_ID (ModelHub's client id) "
                            "or MLFLOW_TRACKING_URI")
    raise NoTrackingURI(f"no MLflow tracking server is configured: {NO_TRACKING}")


def apply_env(source: str, env=os.environ) -> None:
    """ModelHub's API key as MLflow's bearer token (unless one is set) and fast-failing HTTP defaults."""
    if source.startswith("MODELHUB") and not (env.get("MLFLOW_TRACKING_TOKEN") or "").strip():
        key = (env.get("MODELHUB_API_KEY") or "").strip()
        if key:
            env["MLFLOW_TRACKING_TOKEN"] = key
    for key, value in {**HTTP_DEFAULTS, **QUIET_DEFAULTS}.items():
        if not (env.get(key) or "").strip():
            env[key] = value


# -- credentials never shown -------------------------------------------------------------------------------
def _secrets(env: Mapping[str, str] = os.environ) -> List[str]:
    values = [(env.get(k) or "").strip() for k in SECRET_ENV]
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        m = re.search(r"://([^/@\s]+)@", env.get(key) or "")
        if m:
            values.append(m.group(1).partition(":")[2])
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def redact(text: str, env: Mapping[str, str] = os.environ) -> str:
    """``text`` with ``user:password@`` in URLs and the values of token/password variables masked."""
    text = _USERINFO.sub("***@", text)
    for value in _secrets(env):
        text = text.replace(value, "***")
    return text


class _RedactFilter(logging.Filter):
    """Masks credentials in the records of MLflow's and urllib3's loggers (an MLflow error names the URL)."""

    LOGGERS = ("mlflow", "mlflow.utils.rest_utils", "mlflow.store.artifact.runs_artifact_repo",
               "mlflow.store.artifact.artifact_repo", "mlflow.store.artifact.models_artifact_repo",
               "mlflow.store.artifact.mlflow_artifacts_repo", "mlflow.tracking._tracking_service.client",
               "mlflow.store.model_registry.abstract_store", "urllib3.connectionpool", "urllib3.util.retry")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        masked = redact(msg)
        if masked != msg:
            record.msg, record.args = masked, None
        return True

    def install(self) -> None:
        for name in self.LOGGERS:
            log = logging.getLogger(name)
            if self not in log.filters:
                log.addFilter(self)
            for handler in log.handlers:  # records of child loggers reach these through propagation
                if self not in handler.filters:
                    handler.addFilter(self)


_REDACT = _RedactFilter()


# -- MLflow's errors as one line ---------------------------------------------------------------------------
def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


def _not_found(exc: BaseException) -> bool:
    return _error_code(exc) == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower()


def _unreachable(exc: BaseException) -> Optional[str]:
    """Why the server did not answer (connection refused, timed out, ...), or None when it answered."""
    try:
        import requests
    except ImportError:  # pragma: no cover - mlflow depends on requests
        return None
    text = " ".join(str(e) for e in _chain(exc))
    for e in _chain(exc):
        if isinstance(e, requests.exceptions.RetryError):
            return "it kept answering with server errors"
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            break
    else:
        if "Max retries exceeded" not in text and "failed with timeout exception" not in text:
            return None
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "timed out"
    if "Name or service not known" in text or "name resolution" in text or "nodename nor servname" in text:
        return "its host name does not resolve"
    if "too many" in text and "error responses" in text:
        return "it kept answering with server errors"
    return "no connection"


def _reason(exc: BaseException) -> str:
    """MLflow's message, first line, masked; without the request URL MLflow puts in front."""
    lines = [line.strip() for line in str(getattr(exc, "message", None) or exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return redact(text)[:500]


# -- downloading -------------------------------------------------------------------------------------------
class MLflowDownload:
    """Resolves one MLflow URI against the tracking server and mirrors its files into the cache."""

    def __init__(self, model: str, uri: str, cache_dir: Optional[str] = None, tracking: Optional[str] = None):
        self.model = model
        self.parsed = parse(model, uri)
        self.shown = redact(uri.strip())
        self.root = Path(cache_dir or default_cache_dir()).absolute() / "mlflow"
        self._tracking = (tracking or "").strip() or None
        self._client = None

    def fail(self, msg: str) -> ModelLoadError:
        return ModelLoadError(self.model, f"{self.shown}: {msg}")

    # -- configuration ------------------------------------------------------------------------------------
    def _configure(self) -> None:
        p = self.parsed
        try:
            if self._tracking:
                self.tracking, source = self._tracking, "the tracking_uri option"
            else:
                self.tracking, source = tracking_uri()
        except NoTrackingURI as exc:
            if p.kind == "artifacts" and p.host:  # mlflow-artifacts://host/... names its server
                self.tracking, source = f"http://{p.host}", "the URI"
            else:
                raise self.fail(str(exc)) from None
        self.registry = (os.environ.get("MLFLOW_REGISTRY_URI") or "").strip() or self.tracking
        apply_env(source)
        self.server = redact(self.tracking)
        if p.kind == "artifacts" and p.host:  # its own server: the one an error must name
            self.server = redact(f"{self.tracking.partition('://')[0] or 'http'}://{p.host}")

    def client(self):
        if self._client is None:
            try:
                from mlflow import MlflowClient
            except ImportError as exc:
                raise self.fail(f"MLflow URIs need the mlflow package ({exc})") from None
            _REDACT.install()  # after mlflow's import, which gives its logger its handler
            self._client = MlflowClient(tracking_uri=self.tracking, registry_uri=self.registry)
        return self._client

    def _call(self, what: str, fn, *args):
        """One MLflow call; an unreachable server becomes its one-line error, MLflow's errors go on."""
        try:
            return fn(*args)
        except ModelLoadError:
            raise
        except Exception as exc:
            why = _unreachable(exc)
            if why:
                raise self.fail(f"cannot reach the MLflow tracking server at {self.server} ({why})") from None
            if _error_code(exc) in ("UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED") or \
                    re.search(r"\b40[13]\b", str(exc)):
                raise self.fail(f"the MLflow tracking server at {self.server} refused access while "
                                f"{what} (check MLFLOW_TRACKING_TOKEN / the credentials): {_reason(exc)}") from None
            raise

    # -- resolution ---------------------------------------------------------------------------------------
    def resolve(self) -> str:
        """The immutable URI to download: an alias, latest or stage becomes ``models:/<name>/<version>``."""
        p = self.parsed
        c = self.client()
        if p.kind == "run":
            self._existing(f"run '{p.run_id}'", "reading the run", c.get_run, p.run_id)
            return f"runs:/{p.run_id}/{p.path}"
        if p.kind == "logged":
            self._existing(f"logged model '{p.ref}'", "reading the logged model", c.get_logged_model, p.ref,
                           hint=" (registered models are models:/<name>/<version>)")
            return f"models:/{p.ref}"
        if p.kind == "artifacts":
            return p.uri.strip()
        try:
            if p.kind == "version":
                version = str(self._call("reading the model version", c.get_model_version, p.name, p.ref).version)
            elif p.kind == "alias":
                version = str(self._call("reading the alias", c.get_model_version_by_alias, p.name, p.ref).version)
            else:
                stages = [p.ref] if p.kind == "stage" else None
                with warnings.catch_warnings():  # deprecated with stages, still MLflow's own way to "latest"
                    warnings.simplefilter("ignore", FutureWarning)
                    latest = self._call("listing the versions", c.get_latest_versions, p.name, stages)
                if not latest:
                    self._registered(p.name)
                    where = f" in stage '{p.ref}'" if p.kind == "stage" else ""
                    raise self.fail(f"registered model '{p.name}' has no versions{where}")
                version = str(max(int(v.version) for v in latest))
        except ModelLoadError:
            raise
        except Exception as exc:
            if not _not_found(exc) and _error_code(exc) != "INVALID_PARAMETER_VALUE":
                raise self.fail(f"cannot read registered model '{p.name}': {_reason(exc)}") from None
            model = self._registered(p.name)
            if p.kind == "version":
                versions = self._versions(p.name)
                raise self.fail(f"registered model '{p.name}' has no version {p.ref} "
                                f"(versions: {', '.join(versions) or 'none'})") from None
            if p.kind == "alias":
                aliases = sorted(getattr(model, "aliases", None) or {})
                raise self.fail(f"registered model '{p.name}' has no alias '{p.ref}' "
                                f"(aliases: {', '.join(aliases) or 'none'})") from None
            raise self.fail(f"cannot resolve registered model '{p.name}': {_reason(exc)}") from None
        if p.kind != "version":
            logger.info("model '%s': %s is version %s of registered model '%s'", self.model, self.shown,
                        version, p.name)
        return f"models:/{p.name}/{version}"

    def _registered(self, name: str):
        return self._existing(f"registered model '{name}'", "reading the registered model",
                              self.client().get_registered_model, name)

    def _existing(self, what: str, action: str, call, *args, hint: str = ""):
        """``call(*args)`` (``action``, for _call's messages) for the tracking server's ``what``: not there, or not
        readable, is one line naming it."""
        try:
            return self._call(action, call, *args)
        except ModelLoadError:
            raise
        except Exception as exc:
            if _not_found(exc):
                raise self.fail(f"{what} not found on the MLflow tracking server at {self.server}{hint}") from None
            raise self.fail(f"cannot read {what}: {_reason(exc)}") from None

    def _versions(self, name: str) -> List[str]:
        try:
            found = self.client().search_model_versions(f"name = '{name}'")
            return [str(v) for v in sorted(int(m.version) for m in found)][:20]
        except Exception:
            return []

    def _run_contents(self, run_id: str) -> List[str]:
        """What a run holds at its top: its artifacts and its logged models' names (for an error's hint)."""
        names = []
        try:
            c = self.client()
            names += [f.path for f in c.list_artifacts(run_id)]
            run = c.get_run(run_id)
            for m in c.search_logged_models(experiment_ids=[run.info.experiment_id]):
                if m.source_run_id == run_id:
                    names.append(m.name)
        except Exception:
            pass
        return sorted(set(names))

    # -- the cache ----------------------------------------------------------------------------------------
    def entry_for(self, resolved: str) -> Path:
        key = hashlib.sha256(f"{self.tracking}|{resolved}".encode()).hexdigest()[:20]
        return self.root / key

    @staticmethod
    def _cached(entry: Path) -> Optional[Path]:
        try:
            meta = json.loads((entry / _COMPLETE).read_text())
            path = (entry / meta["path"]) if meta["path"] else entry
            return path if path.exists() else None
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def fetch(self) -> Path:
        self._configure()
        p = self.parsed
        if p.immutable:  # a run's artifacts, a version, a LoggedModel: the cache answers without the server
            canonical = (f"runs:/{p.run_id}/{p.path}" if p.kind == "run" else
                         f"models:/{p.name}/{p.ref}" if p.kind == "version" else f"models:/{p.ref}")
            cached = self._cached(self.entry_for(canonical))
            if cached is not None:
                logger.info("model '%s': %s found in the cache at %s", self.model, self.shown, cached)
                return cached
        resolved = self.resolve()
        entry = self.entry_for(resolved)
        with self._lock(entry):
            cached = self._cached(entry)
            if cached is not None and resolved.startswith(("runs:/", "models:/")):
                logger.info("model '%s': %s (%s) found in the cache at %s", self.model, self.shown,
                            redact(resolved), cached)
                return cached
            return self._download(resolved, entry)

    def _lock(self, entry: Path):
        return entry_lock(self.root, entry.name, self.model, self.shown, self.fail)

    def _sweep(self, entry: Path) -> None:
        now = time.time()
        for pattern in (f".{entry.name}.tmp-*", f".{entry.name}.old-*"):
            for stale in self.root.glob(pattern):
                try:
                    if now - stale.lstat().st_mtime > STALE_SECONDS:
                        shutil.rmtree(stale, ignore_errors=True)
                except OSError:
                    continue

    def _download(self, resolved: str, entry: Path) -> Path:
        self._sweep(entry)
        tmp = self.root / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        shown = redact(resolved)
        started = time.monotonic()
        logger.info("model '%s': downloading %s from %s into %s", self.model, shown, self.server, entry)
        try:
            tmp.mkdir(parents=True)
            local = Path(self._fetch_files(resolved, tmp))
            rel = os.path.relpath(local.absolute(), tmp.absolute())
            if rel.startswith(".."):
                raise self.fail(f"MLflow put the files outside the download folder ({local})")
            rel = "" if rel == "." else rel
            (tmp / _COMPLETE).write_text(json.dumps({"uri": shown, "path": rel}))
            self._install(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        path = self._cached(entry)
        if path is None:
            raise self.fail(f"the download into {entry} did not complete")
        logger.info("model '%s': downloaded %s in %.1f s", self.model, shown, time.monotonic() - started)
        return path

    def _fetch_files(self, resolved: str, dst: Path) -> str:
        from mlflow.artifacts import download_artifacts

        p = self.parsed
        source = resolved
        if p.kind in ("version", "alias", "latest", "stage") and resolved.startswith("models:/"):
            # a registered version: its files' own location, asked of our client (MLflow's models:/ repository
            # asks the process-wide registry, not the tracking_uri given here: mlflow#_get_model_uri_infos)
            name, _, version = resolved[len("models:/"):].rpartition("/")
            source = self._call("locating the model version", self.client().get_model_version_download_uri,
                                name, version)
        try:
            return self._call("downloading", download_artifacts, source, None, None, str(dst), self.tracking,
                              self.registry)
        except ModelLoadError:
            raise
        except Exception as exc:
            if _not_found(exc) or "Failed to download artifacts" in str(exc):
                if p.kind == "run":
                    has = self._run_contents(p.run_id)
                    raise self.fail(f"artifact path '{p.path}' not found in run '{p.run_id}' "
                                    f"(the run has: {', '.join(has) or 'no artifacts'})") from None
                if p.kind == "artifacts":
                    raise self.fail(f"no artifacts at this path on {self.server}") from None
                raise self.fail(f"the files of {redact(resolved)} are missing from the artifact store: "
                                f"{_reason(exc)}") from None
            raise self.fail(f"cannot download {redact(resolved)}: {_reason(exc)}") from None

    def _install(self, tmp: Path, entry: Path) -> None:
        """The complete download renamed into place; a stale entry (re-downloaded target) is swapped out."""
        old = None
        if os.path.lexists(entry):
            old = self.root / f".{entry.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(entry, old)
            except FileNotFoundError:
                old = None
        try:
            os.rename(tmp, entry)
        except OSError:
            if self._cached(entry) is None:  # without a working lock another loader may have won
                raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)


def fetch(model: str, uri: str, cache_dir: Optional[str] = None, tracking: Optional[str] = None) -> Path:
    """The local folder (or file) of an MLflow URI; a ``ModelLoadError`` naming the problem otherwise."""
    try:
        return MLflowDownload(model, uri, cache_dir, tracking).fetch()
    except ModelLoadError:
        raise
    except Exception as exc:  # anything unforeseen still fails as one masked line
        raise ModelLoadError(model, f"{redact(uri.strip())}: {type(exc).__name__}: {_reason(exc)}") from None
