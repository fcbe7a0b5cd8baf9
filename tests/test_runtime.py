"""Issue 8 rules that need no server: pickle loading is logged as unsafe (naming skops), the request_timeout
option turns a slow call into a 504 and cancels it, and MLServer's gRPC side maps our 503/504 and refuses
raw contents that do not fit."""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct

import joblib
import pytest

from modelserve.errors import BadRequest, ModelLoadError, RequestTimeout
from modelserve.mlflow import _load_pyfunc, pickled_flavors
from modelserve.sklearn import SKLearnRuntime

from .support.models import iris_xy
from .support.runtimes import load, nap, sleepy


@pytest.fixture(scope="module")
def iris_files(tmp_path_factory):
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    X, y = iris_xy()
    model = LogisticRegression(max_iter=300).fit(X, y)
    out = tmp_path_factory.mktemp("pickles")
    joblib.dump(model, out / "model.joblib")
    (out / "model.pkl").write_bytes(pickle.dumps(model))
    sio.dump(model, out / "model.skops")
    return out


@pytest.mark.parametrize("fname", ["model.joblib", "model.pkl"])
def test_pickle_files_are_logged_as_unsafe_naming_skops(iris_files, fname, caplog):
    with caplog.at_level(logging.WARNING, logger="mlserver.modelserve"):
        load(SKLearnRuntime, iris_files / fname)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(fname in m and "pickle" in m and "skops" in m for m in warned), warned


def test_skops_files_load_without_the_warning(iris_files, caplog):
    with caplog.at_level(logging.WARNING, logger="mlserver.modelserve"):
        load(SKLearnRuntime, iris_files / "model.skops")
    assert not [r for r in caplog.records if "pickle" in r.getMessage()]


def test_mlflow_flavours_that_unpickle_are_named():
    assert pickled_flavors({"flavors": {"sklearn": {"serialization_format": "cloudpickle"},
                                        "python_function": {"loader_module": "mlflow.sklearn"}}}) == [
        "sklearn: cloudpickle"]
    assert pickled_flavors({"flavors": {"python_function": {"python_model": "python_model.pkl"}}}) == [
        "python_function: cloudpickled python_model"]
    assert pickled_flavors({"flavors": {"sklearn": {"serialization_format": "skops"}}}) == []
    assert pickled_flavors({"flavors": {"python_function": {"model_code_path": "m.py"}}}) == []
    assert pickled_flavors(None) == [] and pickled_flavors({"flavors": "junk"}) == []


def test_mlflow_pickled_model_is_logged_as_unsafe_before_loading(tmp_path, caplog):
    (tmp_path / "MLmodel").write_text("flavors:\n  sklearn:\n    serialization_format: pickle\n"
                                      "    pickled_model: model.pkl\n")
    with caplog.at_level(logging.WARNING, logger="mlserver.modelserve"), pytest.raises(Exception):
        _load_pyfunc("m", tmp_path)  # no loadable model here: only the warning is looked at
    assert any("pickle" in r.getMessage() and "skops" in r.getMessage() for r in caplog.records)


# -- request_timeout ---------------------------------------------------------------------------------------
def test_a_request_past_request_timeout_is_a_504_and_its_work_is_cancelled():
    rt = sleepy(0.2)

    async def run():
        with pytest.raises(RequestTimeout) as exc:
            await rt.predict(nap(5))
        return exc.value

    err = asyncio.run(run())
    assert err.status_code == 504 and "request_timeout (0.2 s)" in str(err) and "'slow'" in str(err)
    assert rt.cancelled == 1 and rt.finished == 0
    assert pickle.loads(pickle.dumps(err)).status_code == 504  # crosses MLServer's worker boundary


def test_requests_within_the_timeout_and_without_one_are_served():
    assert asyncio.run(sleepy(2).predict(nap(0.01))).model_name == "slow"
    assert asyncio.run(sleepy().predict(nap(0.05))).model_name == "slow"


def test_a_timeout_raised_inside_the_call_is_not_taken_for_ours():
    rt = sleepy(5)
    with pytest.raises(TimeoutError, match="engine's own"):
        asyncio.run(rt.within_timeout(rt._raises_timeout()))


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_request_timeout_must_be_a_positive_number(value):
    with pytest.raises(ModelLoadError, match="request_timeout"):
        sleepy(value)


def test_grpc_statuses_for_503_and_504_and_raw_contents_that_do_not_fit():
    import grpc
    from mlserver.grpc import converters, dataplane_pb2 as pb
    from mlserver.grpc.utils import STATUS_CODE_MAPPING

    assert STATUS_CODE_MAPPING[503] == grpc.StatusCode.UNAVAILABLE
    assert STATUS_CODE_MAPPING[504] == grpc.StatusCode.DEADLINE_EXCEEDED
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[1, 4])
    short = pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[struct.pack("<3d", 1, 2, 3)])
    with pytest.raises(BadRequest, match="raw_input_contents"):
        converters.ModelInferRequestConverter.to_types(short)
    missing = pb.ModelInferRequest(model_name="m", inputs=[tensor, tensor], raw_input_contents=[struct.pack("<4d", 1, 2, 3, 4)])
    with pytest.raises(BadRequest, match="raw_input_contents"):
        converters.ModelInferRequestConverter.to_types(missing)
    good = pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[struct.pack("<4d", 1, 2, 3, 4)])
    assert converters.ModelInferRequestConverter.to_types(good).inputs[0].data.root == [1, 2, 3, 4]


def test_a_timed_out_engine_request_is_closed_so_the_engine_can_abort_it():
    """Engine runtimes await an aiohttp request: cancelling it closes the connection (vLLM aborts a request
    whose client went away). Work already in a thread (sklearn, MLflow, transformers) cannot be interrupted:
    it runs to its end and its result is dropped."""
    from modelserve.engines.openai_http import OpenAIUpstream
    from modelserve.errors import Unavailable

    rt = sleepy(0.3)

    async def run():
        closed = asyncio.Event()

        async def engine(reader, writer):  # reads the request, never answers, notes the client leaving
            await reader.readuntil(b"\r\n\r\n")
            while await reader.read(1024):
                pass
            closed.set()
            writer.close()

        server = await asyncio.start_server(engine, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        upstream = OpenAIUpstream("m", lambda: f"http://127.0.0.1:{port}", lambda exc: Unavailable(str(exc)))
        try:
            with pytest.raises(RequestTimeout):
                await rt.within_timeout(upstream.post("/v1/completions", {"prompt": "hi"}))
            await asyncio.wait_for(closed.wait(), 5)
        finally:
            await upstream.close()
            server.close()

    asyncio.run(run())
