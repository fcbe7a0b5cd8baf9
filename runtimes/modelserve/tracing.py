"""Our spans in MLServer's traces, and the trace carried to the engines.

MLServer traces when its ``tracing_server`` setting names an OTLP gRPC collector: its FastAPI and gRPC
instrumentation opens a server span per request with the tracer provider of ``mlserver.tracing`` (it is not
made the global one). Our spans use that same provider, so they are children of MLServer's request span in
the same trace: ``modelserve.predict`` / ``modelserve.openai`` (the model call, decode and encode included)
and ``modelserve.engine`` around each HTTP request to a supervised engine, which also gets the W3C
``traceparent`` header. vLLM is started with ``--otlp-traces-endpoint`` at the same collector
(engines/vllm.py), so its ``llm_request`` span joins the trace as the engine request's child.

Without ``tracing_server`` every function here is a no-op costing one dictionary lookup. In-process models
only: MLServer does not carry the trace into its parallel workers.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

ENDPOINT_ENV = "MODELSERVE_TRACING_SERVER"
"""set from MLServer's ``tracing_server`` at start (lifecycle.patch_server), read by the engines' command lines"""


def _tracer():
    module = sys.modules.get("mlserver.tracing")
    provider = getattr(module, "_TRACER_PROVIDER", None) if module is not None else None
    return provider.get_tracer("modelserve") if provider is not None else None


@contextmanager
def span(name: str, **attributes) -> Iterator[Optional[object]]:
    """A child span of the current one (MLServer's request span), or nothing when not tracing."""
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, attributes={k: v for k, v in attributes.items() if v is not None}) as s:
        yield s


def headers(base: Optional[Dict[str, str]] = None) -> Optional[Dict[str, str]]:
    """``base`` plus the current trace's ``traceparent`` (and ``tracestate``) when tracing; else ``base``."""
    if _tracer() is None:
        return base
    from opentelemetry.propagate import inject

    carrier = dict(base or {})
    inject(carrier)
    return carrier


def endpoint() -> Optional[str]:
    """The OTLP collector MLServer exports to, for an engine's own traces."""
    return os.environ.get(ENDPOINT_ENV) or None
