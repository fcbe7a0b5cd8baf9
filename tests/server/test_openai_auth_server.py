"""The OpenAI routes' optional bearer key ($MODELSERVE_OPENAI_API_KEY), on a real mlserver with an
embedding model: refused without or with a wrong key (401, OpenAI's error shape), served with any of the
configured keys, and the keys never reach the log."""

from __future__ import annotations

import pytest
import requests

from ..support.harness import Server, write_model
from ..support.hf_models import minilm_dir

openai = pytest.importorskip("openai")
pytest.importorskip("transformers")

KEYS = "sk-first-0123456789,sk-second-9876543210"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai-auth")
    write_model(root, "minilm", {"implementation": "modelserve.huggingface.HuggingFaceRuntime",
                                 "parameters": {"uri": str(minilm_dir())}})
    srv = Server(root, parallel_workers=0, debug=True,
                 env={"MODELSERVE_OPENAI_API_KEY": KEYS, "HF_HUB_OFFLINE": "1"}).start(timeout=180)
    yield srv
    srv.stop()


@pytest.mark.parametrize("key", KEYS.split(","))
def test_any_configured_key_is_accepted(keyed, key):
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=key, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["minilm"]
    assert len(client.embeddings.create(model="minilm", input="hello").data[0].embedding) == 384


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic x"},
                                     {"Authorization": "Bearer"}])
@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("POST", "/v1/embeddings")])
def test_requests_without_a_valid_key_are_401(keyed, headers, method, path):
    r = requests.request(method, keyed.url + path, headers=headers, timeout=10,
                         json={"model": "minilm", "input": "hello"} if method == "POST" else None)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "invalid_api_key"


def test_the_official_client_gets_an_authentication_error(keyed):
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model="minilm", input="hello")


def test_keys_never_reach_the_log(keyed):
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEYS.split(",")[0], max_retries=0)
    client.embeddings.create(model="minilm", input="hello")
    log = keyed.log()
    assert "/v1/embeddings" in log  # debug on: the access log has the requests
    for key in KEYS.split(","):
        assert key not in log
