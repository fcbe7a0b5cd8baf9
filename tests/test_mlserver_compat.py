"""mlserver_compat.py: each MLServer 1.7.1 patch does what it says (these fail when a patch stops applying); the
gRPC status and raw-contents cases moved here from the errors tests with the patches."""

from __future__ import annotations

import base64
import struct

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from mlserver.handlers.custom import get_custom_handlers
from mlserver.settings import ModelSettings

from modelserve import mlserver_compat
from modelserve.errors import BadRequest


def test_apply_maps_503_and_504_to_their_grpc_codes():
    import grpc
    from mlserver.grpc.utils import STATUS_CODE_MAPPING

    mlserver_compat.apply()
    assert STATUS_CODE_MAPPING[503] == grpc.StatusCode.UNAVAILABLE
    assert STATUS_CODE_MAPPING[504] == grpc.StatusCode.DEADLINE_EXCEEDED


def test_raw_input_contents_that_do_not_fit_are_a_bad_request():
    from mlserver.grpc import converters, dataplane_pb2 as pb

    mlserver_compat.apply()
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[1, 4])
    short = pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[struct.pack("<3d", 1, 2, 3)])
    with pytest.raises(BadRequest, match="raw_input_contents"):
        converters.ModelInferRequestConverter.to_types(short)
    missing = pb.ModelInferRequest(model_name="m", inputs=[tensor, tensor],
                                   raw_input_contents=[struct.pack("<4d", 1, 2, 3, 4)])
    with pytest.raises(BadRequest, match="raw_input_contents"):
        converters.ModelInferRequestConverter.to_types(missing)
    good = pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[struct.pack("<4d", 1, 2, 3, 4)])
    assert converters.ModelInferRequestConverter.to_types(good).inputs[0].data.root == [1, 2, 3, 4]


def test_custom_handlers_are_per_model_instance_attributes_with_literal_paths():
    from modelserve.huggingface import HuggingFaceRuntime

    a = HuggingFaceRuntime(ModelSettings(name="a", implementation=HuggingFaceRuntime))
    b = HuggingFaceRuntime(ModelSettings(name="b", implementation=HuggingFaceRuntime))
    paths = {h.rest_path: fn for h, fn in get_custom_handlers(a)}
    assert "/v1/models/a:predict" in paths and "/v1/models/b:predict" not in paths
    assert "/v1/chat/completions" in paths  # the OpenAI routes, added by every model that serves them
    assert getattr(a, "v1_predict") is paths["/v1/models/a:predict"]  # the name a parallel worker calls
    assert {h.rest_path for h, _ in get_custom_handlers(b)} - set(paths) == {
        "/v1/models/b", "/v1/models/b:predict", "/v1/models/b:explain",
        "/v2/models/b/adapters", "/v2/models/b/adapters/{adapter}"}  # adapters.py: the adapter name is a path part


@pytest.fixture
def app():
    """An app with MLServer's infer path that echoes the JSON it gets, and the raw-body route in front."""
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        return {"model": name, "got": await request.json()}

    app.router.routes.insert(0, mlserver_compat.RawBodyRoute(app))
    yield TestClient(app)
    mlserver_compat.RAW_BODY_MODELS.clear()


def test_a_non_json_body_is_rewritten_into_the_v2_request_for_mlservers_own_route(app):
    rewrite = mlserver_compat.file_as_tensor("audio")
    mlserver_compat.RAW_BODY_MODELS["m"] = rewrite
    res = app.post("/v2/models/m/infer?language=en", content=b"RIFF\x00audio",
                   headers={"Content-Type": "application/octet-stream"})
    assert res.status_code == 200, res.text
    assert res.json() == {"model": "m", "got": {
        "inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1],
                    "data": [base64.b64encode(b"RIFF\x00audio").decode()]}],
        "parameters": {"language": "en"}}}
    # JSON bodies and models that did not ask for raw bodies reach MLServer's route unchanged
    assert app.post("/v2/models/m/infer", json={"inputs": []}).json()["got"] == {"inputs": []}
    other = app.post("/v2/models/n/infer", content=b"{}", headers={"Content-Type": "text/plain"})
    assert other.json() == {"model": "n", "got": {}}


def test_a_reloads_new_copy_keeps_raw_bodies_when_the_old_copy_is_unloaded():
    old, new = mlserver_compat.file_as_tensor("audio"), mlserver_compat.file_as_tensor("audio")
    mlserver_compat.RAW_BODY_MODELS["m"] = old
    mlserver_compat.RAW_BODY_MODELS["m"] = new  # MLServer loads the new copy before unloading the old one
    mlserver_compat.disable_raw_bodies("m", old)
    assert mlserver_compat.RAW_BODY_MODELS.get("m") is new
    mlserver_compat.disable_raw_bodies("m", new)
    assert "m" not in mlserver_compat.RAW_BODY_MODELS
