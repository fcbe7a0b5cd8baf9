"""mlserver_early's patches apply to MLServer 1.7.1 as it is imported (a fresh interpreter, as `mlserver start`
is), each doing what its docstring says; the front door's pure parts (compression, Accept-Encoding, FastAPI's
validation errors as one line)."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
import zlib

import pytest

from modelserve import frontdoor, mlserver_early, request_errors
from modelserve.errors import BadRequest

MARKS = {
    "mlserver.parallel.worker": "Worker.run",
    "mlserver.parallel.errors": "WorkerError.__init__",
    "mlserver.rest.app": "create_app",
    "mlserver.rest.server": "_NoSignalServer.capture_signals",
    "mlserver.metrics.server": "_NoSignalServer.capture_signals",
    "mlserver.registry": "MultiModelRegistry.load",
    "mlserver.server": "MLServer.start",
    "mlserver.handlers.dataplane": "DataPlane.ready",
    "mlserver.rest.endpoints": "Endpoints.ready Endpoints.live Endpoints.model_ready Endpoints.infer",
    "mlserver.handlers.model_repository": "ModelRepositoryHandlers._to_item",
    "mlserver.grpc.servicers": "InferenceServicer.ModelInfer",
    "mlserver.metrics.prometheus": "PrometheusEndpoint.handle_metrics",
}


def test_every_patch_applies_as_mlserver_is_imported_in_a_fresh_interpreter():
    assert set(MARKS) == set(mlserver_early.PATCHES)  # a new patch gets its line here
    code = ("import importlib, json, sys\n"
            "import mlserver.server\n"  # as `mlserver start` does: the .pth armed the patches at start
            f"marks = {MARKS!r}\nout = {{}}\n"
            "for mod, attrs in marks.items():\n"
            "    out[mod] = True\n"
            "    for attr in attrs.split():\n"
            "        obj = importlib.import_module(mod)\n"
            "        for part in attr.split('.'):\n"
            "            obj = getattr(obj, part)\n"
            "        out[mod] = out[mod] and bool(getattr(obj, 'modelserve_patched', False))\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {m: True for m in MARKS}


def test_a_workers_mlserver_error_keeps_its_own_message_and_status():
    from mlserver.parallel.errors import WorkerError

    mlserver_early.arm()
    err = WorkerError(BadRequest("input 'x': shape [2] needs 2 values, got 3"))
    assert str(err) == "input 'x': shape [2] needs 2 values, got 3" and err.status_code == 400
    other = WorkerError(ValueError("boom"))  # not ours: MLServer's class path is its only clue
    assert str(other) == "builtins.ValueError: boom" and other.status_code == 500


def test_the_worker_logger_logs_an_mlserver_error_as_one_line():
    try:
        raise BadRequest("input 'x': datatype FP32 but the data holds null")
    except BadRequest:
        record = logging.LogRecord("mlserver.parallel", logging.ERROR, __file__, 1,
                                   "An error occurred calling method '%s'", ("predict",), sys.exc_info())
    assert mlserver_early._one_line_errors(record)
    assert record.exc_info is None
    assert record.getMessage() == ("An error occurred calling method 'predict' input 'x': datatype FP32 but the "
                                   "data holds null")
    try:
        raise ValueError("a bug")
    except ValueError:
        bug = logging.LogRecord("mlserver.parallel", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert mlserver_early._one_line_errors(bug) and bug.exc_info is not None  # a real bug keeps its traceback


# -- the front door's pure parts ----------------------------------------------------------------------------
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode()


@pytest.mark.parametrize("encoding,packed", [
    ("gzip", gzip.compress(BODY)),
    ("x-gzip", gzip.compress(BODY)),
    ("deflate", zlib.compress(BODY)),  # zlib-wrapped, as RFC 9110 says
    ("deflate", zlib.compress(BODY)[2:-4]),  # raw deflate, as some clients send
    ("identity", BODY),
    ("gzip, deflate", zlib.compress(gzip.compress(BODY))),  # applied in order: undone last first
])
def test_decompress_undoes_each_content_encoding(encoding, packed):
    assert frontdoor.decompress(packed, encoding) == BODY


@pytest.mark.parametrize("encoding,packed,status,fragment", [
    ("br", BODY, 415, "'br' is not supported"),
    ("gzip", b"\x1f\x8b not gzip", 400, "not valid gzip"),
    ("gzip", gzip.compress(BODY)[:-12], 400, "truncated"),
    ("deflate", b"\x78\x9c\x00\x01", 400, "deflate"),
])
def test_decompress_refuses_what_it_cannot_undo(encoding, packed, status, fragment):
    with pytest.raises(frontdoor.Refused) as err:
        frontdoor.decompress(packed, encoding)
    assert err.value.status == status and fragment in str(err.value)


def test_decompress_stops_at_the_cap(monkeypatch):
    monkeypatch.setattr(frontdoor, "MAX_BODY", 1000)
    assert frontdoor.decompress(gzip.compress(b"0" * 1000), "gzip") == b"0" * 1000
    with pytest.raises(frontdoor.Refused) as err:
        frontdoor.decompress(gzip.compress(b"0" * 1001), "gzip")
    assert err.value.status == 413


@pytest.mark.parametrize("accept,coding", [
    (b"gzip", "gzip"), (b"deflate", "deflate"), (b"deflate, gzip;q=0.5", "gzip"), (b"gzip;q=0, deflate", "deflate"),
    (b"br", None), (b"identity", None), (b"*", "gzip"), (b"*;q=0", None), (None, None), (b"gzip;q=x", None),
])
def test_accept_encoding_is_read_with_its_q_values(accept, coding):
    assert frontdoor.accepted_coding(accept) == coding


def test_compress_round_trips():
    assert gzip.decompress(frontdoor.compress(BODY, "gzip")) == BODY
    assert zlib.decompress(frontdoor.compress(BODY, "deflate")) == BODY


@pytest.mark.parametrize("errors,message", [
    ([{"type": "missing", "loc": ("body", "inputs"), "msg": "Field required", "input": {"id": "x"}}],
     "invalid request: the body has no 'inputs'"),
    ([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}],
     "invalid request: the body is empty"),
    ([{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error", "ctx": {"error": "Expecting value"}}],
     "invalid request: the body is not valid JSON (Expecting value)"),
    ([{"type": "int_parsing", "loc": ("body", "inputs", 0, "shape", 0), "msg": "Input should be a valid integer",
       "input": "x" * 10_000}] * 3,
     "invalid request: inputs.0.shape.0: Input should be a valid integer (and 2 more problems)"),
])
def test_validation_errors_become_one_line_that_never_echoes_the_input(errors, message):
    assert request_errors.validation_message(errors) == message
