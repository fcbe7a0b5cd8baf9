"""Session fixtures of the real-server tests that share one vLLM engine (starting one takes minutes on CPU):
the tiny Llama with its LoRA adapters, and ``llm_server``, the mlserver serving it on vLLM and transformers."""

from __future__ import annotations

import pytest

from ..support.engine_envs import engine_command
from ..support.harness import Server, write_model
from ..support.hf_models import minilm_dir
from ..support.llama_models import build_lora, build_tiny_llama

KUBEAI = "modelserve.kubeai.KubeAIRuntime"
HF = "modelserve.huggingface.HuggingFaceRuntime"
# CPU: a 64 MB KV cache (vLLM would reserve 16 GB), float32 so outputs match transformers exactly
CPU_ARGS = ["--max-model-len", "512", "--kv-cache-memory-bytes", "64M", "--dtype", "float32"]
PLAIN_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
PROMPT = "The quick brown fox"


@pytest.fixture(scope="session")
def llama(tmp_path_factory) -> dict:
    art = tmp_path_factory.mktemp("llama-art")
    base = build_tiny_llama(art / "llama")
    # c: loaded at run time; wide: rank 64, above the engine's limit; other: fits another base (hidden 64)
    other = build_tiny_llama(art / "other-llama", hidden_size=64)
    return {"base": base, "a": build_lora(art / "lora-a", base, 1), "b": build_lora(art / "lora-b", base, 2),
            "c": build_lora(art / "lora-c", base, 3), "wide": build_lora(art / "lora-wide", base, 4, rank=64),
            "other": build_lora(art / "lora-other", other, 5)}


def kubeai_settings(llama: dict, **extra) -> dict:
    return {"implementation": KUBEAI, "parallel_workers": 0,
            "parameters": {"extra": {"engine": "VLLM", "url": str(llama["base"]), "args": CPU_ARGS,
                                     "start_timeout": 240, **extra}}}


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory, llama):
    """vLLM for generation (two adapters, a chat template from `files`) and for embeddings, in one
    mlserver (parallel_workers 0: streams reach the client; gzip off: MLServer buffers V2 streams)."""
    openai = pytest.importorskip("openai")
    command = engine_command("MODELSERVE_VLLM_COMMAND")
    root = tmp_path_factory.mktemp("kubeai-server")
    write_model(root, "llm", kubeai_settings(
        llama, adapters=[{"name": "lora-a", "url": str(llama["a"])}, {"name": "lora-b", "url": str(llama["b"])}],
        files=[{"path": "templates/plain.jinja", "content": PLAIN_TEMPLATE}],
        # structured output: no free whitespace between JSON tokens (random weights would write it for ever)
        args=[*CPU_ARGS, "--chat-template", "templates/plain.jinja",
              "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}'], max_tokens_limit=64,
        tool_call_parser="pythonic",
        cache_dir=str(root / "cache"), runtime_adapters=True))
    write_model(root, "llm-embed", kubeai_settings(llama, features=["TextEmbedding"], cache_dir=str(root / "cache")))
    # the other flavour on the same routes: HuggingFaceRuntime on vLLM (the shared adapter) and on transformers
    write_model(root, "hf-vllm", {"implementation": HF, "parameters": {"uri": str(llama["base"]), "extra": {
        "backend": "VLLM", "dtype": "FLOAT32", "max_length": 512, "engine_args": CPU_ARGS[2:4],
        "cache_dir": str(root / "cache")}}})
    write_model(root, "hf-llama", {"implementation": HF, "parameters": {"uri": str(llama["base"]), "extra": {
        "backend": "HUGGINGFACE", "task": "text_generation", "runtime_adapters": True,
        "adapters": [{"name": "hf-a", "url": str(llama["a"])}]}}})
    write_model(root, "minilm", {"implementation": HF, "parameters": {"uri": str(minilm_dir())}})
    srv = Server(root, parallel_workers=0, extra={"gzip_enabled": False},
                 env={"MODELSERVE_VLLM_COMMAND": command, "HF_HUB_OFFLINE": "1"}).start(timeout=400)
    srv.client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield srv
    srv.stop()
