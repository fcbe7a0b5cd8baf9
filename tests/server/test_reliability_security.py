"""Issue 8, secrets: with MLServer's debug logging, every logger at DEBUG and the runtimes' request logging on,
no AWS key, HF token, OpenAI key or client Authorization header reaches the server's log, whether requests
succeed, fail, or a model loads (or fails to load) from S3 with those credentials.

Elsewhere: the OpenAI bearer key (tests/server/test_openai_auth_server.py), `files` that would write outside
the model folder (tests/test_kubeai.py), URI schemes outside the allowlist
(tests/test_storage.py::test_other_schemes_are_refused_listing_the_supported_ones), trust_remote_code off
unless asked (tests/test_huggingface.py::test_trust_remote_code_is_off_by_default), pickle loads logged as
unsafe (tests/test_sklearn.py, tests/test_mlflow.py).
"""

from __future__ import annotations

import pytest
import requests

from ..support.harness import Server, write_model
from ..support.reliability_corpus import grpc_request
from ..support.reliability_server import GOOD_V2, HF, OFFLINE, SKLEARN, build_artefacts
from ..support.s3server import moto_s3

pytest.importorskip("transformers")

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIARELIABILITY7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYreliabilityKEY",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEreliabilitySessionToken0123456789",
    "HF_TOKEN": "hf_reliabilityTokenAbCdEfGhIjKlMnOpQrStUv",
    "MODELSERVE_OPENAI_API_KEY": "sk-reliability-openai-key-0123456789",
}
CLIENT_BEARER = "Bearer sk-client-secret-reliability-9876543210"
WRONG_KEY = "sk-wrong-but-secret-reliability-5555"
DEBUG_EVERYWHERE = {"version": 1, "disable_existing_loggers": False,
                    "formatters": {"plain": {"format": "%(asctime)s [%(name)s] %(levelname)s - %(message)s"}},
                    "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "plain",
                                         "stream": "ext://sys.stdout"}},
                    "root": {"level": "DEBUG", "handlers": ["out"]},
                    "loggers": {"mlserver": {"level": "DEBUG"}, "uvicorn.access": {"level": "DEBUG"}}}


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    """A server that would print a secret if anything did: debug, DEBUG root logger, request logging on."""
    arts = build_artefacts(tmp_path_factory.mktemp("sec-art"))
    with moto_s3(tmp_path_factory.mktemp("sec-moto")) as s3:
        s3.put("iris/model.joblib", arts["iris"])
        root = tmp_path_factory.mktemp("sec-models")
        write_model(root, "iris-s3", {"implementation": SKLEARN, "parameters": {"uri": "s3://models/iris/model.joblib"}})
        write_model(root, "minilm", {"implementation": HF, "parallel_workers": 0,
                                     "parameters": {"uri": str(arts["minilm"]), "extra": {"max_log_len": 1000}}})
        env = {**OFFLINE, **s3.env, **SECRETS, "MODELSERVE_CACHE_DIR": str(tmp_path_factory.mktemp("sec-cache"))}
        srv = Server(root, debug=True, env=env, extra={"logging_settings": DEBUG_EVERYWHERE}).start(timeout=240)
        srv.s3 = s3
        try:
            yield srv
        finally:
            srv.stop()


def test_no_secret_reaches_the_log(leaky):
    auth = {"Authorization": CLIENT_BEARER, "X-Api-Key": SECRETS["HF_TOKEN"]}
    url = leaky.url
    assert requests.post(f"{url}/v2/models/iris-s3/infer", json=GOOD_V2["iris"], headers=auth, timeout=30).ok
    assert requests.post(f"{url}/v2/models/iris-s3/infer", json={"inputs": []}, headers=auth, timeout=30).status_code == 400
    assert requests.post(f"{url}/v1/models/iris-s3:predict", json={"instances": [[1, 2, 3, 4]]}, headers=auth,
                         timeout=30).ok
    assert requests.post(f"{url}/v2/models/minilm/infer", json=GOOD_V2["minilm"], headers=auth, timeout=60).ok
    openai_ok = {"Authorization": f"Bearer {SECRETS['MODELSERVE_OPENAI_API_KEY']}"}
    assert requests.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": "hi"}, headers=openai_ok,
                         timeout=60).ok
    assert requests.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": "hi"},
                         headers={"Authorization": f"Bearer {WRONG_KEY}"}, timeout=60).status_code == 401
    # gRPC with the secret in the metadata, a good and a bad request
    import grpc
    from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

    fields = {"model_name": "iris-s3", "model_version": "", "raw": [], "outputs": [], "parameters": {},
              "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                          "contents": {"fp64_contents": [5.1, 3.5, 1.4, 0.2]}}]}
    with grpc.insecure_channel(leaky.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(grpc_request(fields), metadata=[("authorization", CLIENT_BEARER)], timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(grpc_request({**fields, "inputs": []}), metadata=[("authorization", CLIENT_BEARER)],
                            timeout=30)
    # a load through the repository API that fails against S3 with those credentials
    write_model(leaky.root, "missing-s3", {"implementation": SKLEARN,
                                           "parameters": {"uri": "s3://models/nothing/model.joblib"}})
    assert leaky.load("missing-s3").status_code >= 400

    log = leaky.log()
    assert "/v1/embeddings" in log and "DEBUG" in log and "s3://models/iris" in log  # the log is not empty
    for name, value in [*SECRETS.items(), ("client Authorization", CLIENT_BEARER.split()[1]),
                        ("wrong OpenAI key", WRONG_KEY)]:
        assert value not in log, f"{name} appears in the server log"
