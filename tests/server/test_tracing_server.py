"""Traces across the engine hop: MLServer's ``tracing_server`` pointed at a real OTLP gRPC receiver run here (the
OpenTelemetry protocol's own service definition, opentelemetry-proto), then one trace holds MLServer's request
span, our spans (``modelserve.predict``, ``modelserve.openai``, ``modelserve.engine``) and the real vLLM's own
``llm_request`` span, each the child of the one before."""

from __future__ import annotations

import os
import threading
from concurrent import futures

import pytest
import requests

from ..conftest import SKLEARN
from ..support.engine_envs import engine_command
from ..support.harness import Server, eventually, write_model
from ..support.models import IRIS_ROWS as ROWS
from ..support.runtimes import v2
from .conftest import PROMPT, kubeai_settings

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.extended  # a vLLM engine of its own (tracing is set at MLServer's start): ~2 min


class Receiver:
    """An OTLP/gRPC trace receiver: every span exported to it, as dicts."""

    def __init__(self):
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans, self._lock = [], threading.Lock()
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                for rs in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for sp in ss.spans:
                            with receiver._lock:
                                receiver.spans.append({
                                    "trace": sp.trace_id.hex(), "id": sp.span_id.hex(),
                                    "parent": sp.parent_span_id.hex(), "name": sp.name,
                                    "service": resource.get("service.name", ""), "resource": resource})
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def trace(self, trace_id: str) -> list:
        with self._lock:
            return [s for s in self.spans if s["trace"] == trace_id]

    def stop(self):
        self.server.stop(grace=None)


@pytest.fixture(scope="module")
def traced(tmp_path_factory, llama, artifacts):  # noqa: F811
    receiver = Receiver()
    root = tmp_path_factory.mktemp("traced")
    write_model(root, "iris", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib"}},
                {"model.joblib": artifacts["iris_joblib"]})
    write_model(root, "llm", kubeai_settings(llama, cache_dir=str(root / "cache"), max_tokens_limit=16))
    srv = Server(root, parallel_workers=0, debug=False,
                 extra={"tracing_server": f"127.0.0.1:{receiver.port}"},
                 env={"MODELSERVE_VLLM_COMMAND": engine_command("MODELSERVE_VLLM_COMMAND"), "HF_HUB_OFFLINE": "1",
                      "OTEL_BSP_SCHEDULE_DELAY": "500"})  # export every 0.5 s, MLServer's and vLLM's
    srv.start(timeout=400)
    srv.receiver = receiver
    yield srv
    srv.stop()
    receiver.stop()


def _traceparent(n: int) -> tuple:
    trace_id = os.urandom(16).hex()
    return trace_id, f"00-{trace_id}-{os.urandom(8).hex()}-01"


def _chain(spans: list, *names: str) -> list:
    """The spans named ``names``, each the parent of the next; fails naming what is missing."""
    by_name = {}
    for s in spans:
        by_name.setdefault(s["name"], s)
    found = [by_name.get(n) for n in names]
    assert all(found), (names, [(s["service"], s["name"]) for s in spans])
    for parent, child in zip(found, found[1:]):
        assert child["parent"] == parent["id"], (parent["name"], child["name"], spans)
    return found


def test_a_v2_request_is_one_trace_with_our_span_inside_mlservers(traced):
    trace_id, header = _traceparent(1)
    r = requests.post(f"{traced.url}/v2/models/iris/infer", json=v2(ROWS), headers={"traceparent": header}, timeout=30)
    assert r.status_code == 200, r.text
    assert eventually(lambda: any(s["name"] == "modelserve.predict" for s in traced.receiver.trace(trace_id)), 30)
    spans = traced.receiver.trace(trace_id)
    server = [s for s in spans if s["parent"] == header.split("-")[2]]  # MLServer's span: the caller's child
    assert server and server[0]["service"], spans
    predict = next(s for s in spans if s["name"] == "modelserve.predict")
    assert predict["parent"] == server[0]["id"] and predict["service"] == server[0]["service"], spans


def test_an_openai_request_is_one_trace_from_mlserver_into_vllm(traced):
    trace_id, header = _traceparent(2)
    client = openai.OpenAI(base_url=traced.url + "/v1", api_key="unused", max_retries=0, timeout=60,
                           default_headers={"traceparent": header})
    res = client.completions.create(model="llm", prompt=PROMPT, max_tokens=4, temperature=0)
    assert res.usage.completion_tokens == 4

    def complete():
        names = {s["name"] for s in traced.receiver.trace(trace_id)}
        return {"modelserve.openai", "modelserve.engine", "llm_request"} <= names

    assert eventually(complete, timeout=60), traced.receiver.trace(trace_id)
    spans = traced.receiver.trace(trace_id)
    openai_span, engine, vllm = _chain(spans, "modelserve.openai", "modelserve.engine", "llm_request")
    assert openai_span["service"] == engine["service"] != vllm["service"]  # MLServer's process, then vLLM's
    assert any(s["id"] == openai_span["parent"] for s in spans)  # inside MLServer's request span
