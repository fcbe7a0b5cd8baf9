"""Per-model request metrics and LLM metrics on MLServer's metrics port (``metrics_port``, ``/metrics``).

Everything goes to ``prometheus_client``'s default registry, the one MLServer's metrics server scrapes; with
``parallel_workers`` MLServer switches prometheus_client to its multiprocess files (``configure_metrics``) and
the scrape merges every process. That switch happens when the metrics server is built, so the metrics here are
created on first use, never at import (MLServer's own workaround, ``mlserver.metrics.prometheus``).

Names and labels are one table in docs/metrics.md. The request metrics carry ``model``, ``adapter`` (the LoRA
adapter or alias a request named, else empty), ``protocol`` (``v2-rest``, ``v2-grpc``, ``v1``, ``invocations``,
``openai``) and ``endpoint`` (``infer``/``stream`` on V2, the OpenAI route's kind, ``predict`` on V1); labels are
only ever made for a model that is loaded (the model is looked up before anything is counted), so a client
cannot grow the series. The LLM metrics follow vLLM's names (``vllm:prompt_tokens_total`` ->
``modelserve_prompt_tokens_total`` ...), so a dashboard written for one reads the other.

A supervised engine's own metrics (vLLM's ``vllm:*``, Infinity's) are re-exported on the same scrape with the
model's name as a label (``engine_at`` / ``engine_exposition``): the process serving the model records the
engine's ``/metrics`` URL (in memory, and with parallel workers as a file next to MLServer's multiprocess
files), and the metrics endpoint (patched in lifecycle.py) fetches each at scrape time.

Import-light: prometheus_client only (MLServer's own dependency).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple
from urllib.parse import quote, unquote

logger = logging.getLogger("mlserver.modelserve.metrics")

PROTOCOL: contextvars.ContextVar[str] = contextvars.ContextVar("modelserve_protocol", default="v2-rest")
"""The V2 protocol of the request this task serves: the gRPC servicer sets ``v2-grpc`` (lifecycle.py)."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
                         1.0, 2.5, 5.0, 10.0)
RTF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)

REQUEST_LABELS = ("model", "adapter", "protocol", "endpoint")
LLM_LABELS = ("model", "adapter")

# name -> (kind, help, labels, extra constructor arguments)
DEFINITIONS: Dict[str, Tuple[str, str, Tuple[str, ...], Dict[str, Any]]] = {
    "modelserve_requests_total": (
        "counter", "Requests answered, by model, protocol, endpoint and outcome (code: 2xx, 4xx, 5xx, cancelled)",
        REQUEST_LABELS + ("code",), {}),
    "modelserve_request_duration_seconds": (
        "histogram", "Time from a request's arrival at the model to its last byte (a stream: to its end)",
        REQUEST_LABELS, {"buckets": LATENCY_BUCKETS}),
    "modelserve_prompt_tokens_total": ("counter", "Prompt tokens of generation requests", LLM_LABELS, {}),
    "modelserve_generation_tokens_total": ("counter", "Tokens generated", LLM_LABELS, {}),
    "modelserve_time_to_first_token_seconds": (
        "histogram", "Time from a streamed generation's arrival to its first token", LLM_LABELS,
        {"buckets": LATENCY_BUCKETS}),
    "modelserve_time_per_output_token_seconds": (
        "histogram", "Mean time between a streamed generation's tokens after the first", LLM_LABELS,
        {"buckets": TOKEN_LATENCY_BUCKETS}),
    "modelserve_e2e_request_latency_seconds": (
        "histogram", "Time from a generation request's arrival to its last token", LLM_LABELS,
        {"buckets": LATENCY_BUCKETS}),
    "modelserve_num_requests_running": (
        "gauge", "Generation requests producing tokens (a stream: after its first token)", ("model",),
        {"multiprocess_mode": "livesum"}),
    "modelserve_num_requests_waiting": (
        "gauge", "Streamed generation requests accepted and waiting for their first token", ("model",),
        {"multiprocess_mode": "livesum"}),
    "modelserve_embedding_inputs_total": ("counter", "Texts embedded (or pairs scored)", LLM_LABELS, {}),
    "modelserve_embedding_tokens_total": ("counter", "Tokens of the texts embedded (or pairs scored)",
                                          LLM_LABELS, {}),
    "modelserve_audio_seconds_total": ("counter", "Seconds of audio transcribed", ("model",), {}),
    "modelserve_speech_real_time_factor": (
        "histogram", "Transcription time divided by the audio's duration (below 1: faster than real time)",
        ("model",), {"buckets": RTF_BUCKETS}),
}

ENABLED = os.environ.get("MODELSERVE_METRICS", "1").strip().lower() not in ("0", "false", "no", "off")
"""``MODELSERVE_METRICS=0``: modelserve records nothing (MLServer's own metrics follow its metrics_endpoint)"""

_metrics: Dict[str, Any] = {}
_children: Dict[Tuple, Any] = {}


class _Off:
    """Every child when metrics are off: nothing recorded."""

    def inc(self, amount: float = 1) -> None:
        pass

    dec = inc

    def observe(self, amount: float) -> None:
        pass


_OFF = _Off()


def metric(name: str):
    """The metric ``name`` of DEFINITIONS, created on first use in this process."""
    found = _metrics.get(name)
    if found is None:
        import prometheus_client

        kind, doc, labels, extra = DEFINITIONS[name]
        cls = {"counter": prometheus_client.Counter, "histogram": prometheus_client.Histogram,
               "gauge": prometheus_client.Gauge}[kind]
        full = name[:-len("_total")] if kind == "counter" else name  # prometheus_client adds _total itself
        found = _metrics[name] = cls(full, doc, labels, **extra)
    return found


def child(name: str, *labels: str):
    """``metric(name).labels(*labels)``, cached: the lookup costs more than the increment."""
    if not ENABLED:
        return _OFF
    key = (name, *labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric(name).labels(*labels)
    return found


def outcome(exc: Optional[BaseException]) -> str:
    """The ``code`` label of a request that ended with ``exc`` (None: answered)."""
    if exc is None:
        return "2xx"
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None) or 500
    try:
        return f"{int(status) // 100}xx"
    except (TypeError, ValueError):
        return "5xx"


def status_class(status: int) -> str:
    return f"{int(status) // 100}xx"


class Request:
    """One request's count and duration: ``done(code)`` once (later calls are ignored)."""

    __slots__ = ("labels", "start", "open")

    def __init__(self, model: str, protocol: str, endpoint: str, adapter: str = ""):
        self.labels = (model, adapter, protocol, endpoint)
        self.start = time.perf_counter()
        self.open = True

    def done(self, code: str) -> None:
        if self.open:
            self.open = False
            child("modelserve_requests_total", *self.labels, code).inc()
            child("modelserve_request_duration_seconds", *self.labels).observe(time.perf_counter() - self.start)

    def failed(self, exc: Optional[BaseException]) -> None:
        self.done(outcome(exc))


class Generation:
    """One generation request's LLM metrics. ``token()`` at each streamed token (or chunk of them);
    ``done(prompt, generated)`` once at the end with the counts of the request's ``usage``."""

    __slots__ = ("model", "adapter", "start", "first", "last", "chunks", "streamed", "open")

    def __init__(self, model: str, adapter: str = "", streamed: bool = False):
        self.model, self.adapter, self.streamed = model, adapter, streamed
        self.start = time.perf_counter()
        self.first = self.last = 0.0
        self.chunks, self.open = 0, True
        child("modelserve_num_requests_waiting" if streamed else "modelserve_num_requests_running", model).inc()

    def token(self) -> None:
        now = time.perf_counter()
        if not self.chunks and self.open:
            self.first = now
            child("modelserve_time_to_first_token_seconds", self.model, self.adapter).observe(now - self.start)
            child("modelserve_num_requests_waiting", self.model).dec()
            child("modelserve_num_requests_running", self.model).inc()
        self.chunks += 1
        self.last = now

    def done(self, prompt_tokens: int = 0, generated_tokens: Optional[int] = None) -> None:
        if not self.open:
            return
        self.open = False
        now = time.perf_counter()
        self._leave()
        generated = self.chunks if generated_tokens is None else generated_tokens
        if prompt_tokens:
            child("modelserve_prompt_tokens_total", self.model, self.adapter).inc(prompt_tokens)
        if generated:
            child("modelserve_generation_tokens_total", self.model, self.adapter).inc(generated)
        child("modelserve_e2e_request_latency_seconds", self.model, self.adapter).observe(now - self.start)
        if self.streamed and generated > 1 and self.chunks:
            child("modelserve_time_per_output_token_seconds", self.model, self.adapter).observe(
                (self.last - self.first) / (generated - 1))

    def failed(self) -> None:
        """A request that failed or was cancelled: out of the gauges, no latency (vLLM's: finished ones only)."""
        if self.open:
            self.open = False
            self._leave()

    def _leave(self) -> None:
        waiting = self.streamed and not self.chunks
        child("modelserve_num_requests_waiting" if waiting else "modelserve_num_requests_running", self.model).dec()


def embedded(model: str, adapter: str, inputs: int, tokens: int) -> None:
    if inputs:
        child("modelserve_embedding_inputs_total", model, adapter).inc(inputs)
    if tokens:
        child("modelserve_embedding_tokens_total", model, adapter).inc(tokens)


def transcribed(model: str, audio_seconds: float, took_seconds: float) -> None:
    if audio_seconds > 0:
        child("modelserve_audio_seconds_total", model).inc(audio_seconds)
        child("modelserve_speech_real_time_factor", model).observe(took_seconds / audio_seconds)


# -- engines' own metrics ----------------------------------------------------------------------------------
ENGINE_SCRAPE_TIMEOUT = float(os.environ.get("MODELSERVE_ENGINE_SCRAPE_TIMEOUT", "2"))
SKIPPED_PREFIXES = ("python_", "process_")
"""the engine process's own runtime metrics: the same names as MLServer's, which a scrape may hold once"""

_engines: Dict[str, str] = {}  # model -> the /metrics URL of its engine, in this process


def _engine_dir() -> Optional[Path]:
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # set by MLServer with parallel workers
    return Path(shared) / "modelserve-engines" if shared else None


def engine_at(model: str, url: str) -> None:
    """The engine serving ``model`` answers its metrics at ``url`` (called again after a restart)."""
    _engines[model] = url
    folder = _engine_dir()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{quote(model, safe='')}.{os.getpid()}"
        tmp.write_text(url)
        tmp.replace(folder / quote(model, safe=""))


def engine_gone(model: str, url: str) -> None:
    """The engine at ``url`` stopped (a reload's new engine, registered under the same model, stays)."""
    if _engines.get(model) == url:
        del _engines[model]
    folder = _engine_dir()
    if folder is not None:
        entry = folder / quote(model, safe="")
        try:
            if entry.read_text().strip() == url:
                entry.unlink()
        except OSError:
            pass


def engine_urls() -> Dict[str, str]:
    urls = dict(_engines)
    folder = _engine_dir()
    if folder is not None and folder.is_dir():
        for entry in folder.iterdir():
            if not entry.name.startswith("."):
                try:
                    urls.setdefault(unquote(entry.name), entry.read_text().strip())
                except OSError:
                    continue
    return urls


def _fetch(url: str) -> Optional[str]:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=ENGINE_SCRAPE_TIMEOUT) as resp:  # noqa: S310 - loopback
            return resp.read().decode("utf-8", "replace")
    except Exception as exc:  # noqa: BLE001 - an engine restarting or gone: its metrics are left out
        logger.debug("engine metrics at %s: %s", url, exc)
        return None


def engine_exposition(own: bytes = b"") -> bytes:
    """Every engine's metrics in Prometheus' text format, each sample labelled with its model; families
    named like one in ``own`` (this scrape's other text) or the engine's process metrics are left out.
    Families of the same name from several engines are merged into one."""
    urls = engine_urls()
    if not urls:
        return b""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    with ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool:
        texts = dict(zip(urls, pool.map(_fetch, urls.values())))
    families: Dict[str, Any] = {}
    for model, text in sorted(texts.items()):
        if not text:
            continue
        try:
            parsed = list(text_string_to_metric_families(text))
        except Exception as exc:  # noqa: BLE001 - a malformed exposition: this engine's metrics left out
            logger.warning("model '%s': engine metrics not readable: %s", model, exc)
            continue
        for family in parsed:
            if family.name.startswith(SKIPPED_PREFIXES) or f"# TYPE {family.name} ".encode() in own:
                continue
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type,
                                                        family.unit)
            for sample in family.samples:
                labels = {("engine_model" if k == "model" else k): v for k, v in sample.labels.items()}
                merged.add_sample(sample.name, {"model": model, **labels}, sample.value, sample.timestamp,
                                  sample.exemplar)

    class _Engines:
        def collect(self) -> Iterable[Any]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Engines())
    return generate_latest(registry)


def scrape(endpoint) -> bytes:
    """What MLServer's metrics endpoint answers: its registry, then the engines' metrics."""
    from prometheus_client import generate_latest

    own = generate_latest(endpoint._registry)
    return own + engine_exposition(own)

