"""KubeAIRuntime without an engine: options, features, URLs, adapters and files are checked at load,
each failure naming the problem; V2 parameters map onto OpenAI fields."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from mlserver.settings import ModelParameters, ModelSettings

from modelserve.codecs.params import sampling_body
from modelserve.engines.vllm import LoraLimits, launch, serve_args
from modelserve.engines.workdir import write_files
from modelserve.errors import BadRequest, ModelLoadError
from modelserve.kubeai import KubeAIRuntime
from modelserve.backends.engine import parse_messages

from .support.runtimes import kubeai, load_error, text_request


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_engine_is_required_and_checked(tmp_path):
    assert "option 'engine': Field required" in load_error(kubeai, tmp_path, url="x")
    msg = load_error(kubeai, tmp_path, engine="TensorRT", url="x")
    assert "option 'engine'" in msg and "VLLM" in msg and "FasterWhisper" in msg


def test_engine_defaults_to_the_image_variable(tmp_path, monkeypatch):
    """Images set MODELSERVE_KUBEAI_ENGINE so that a model with only a uri is served; the option still wins."""
    monkeypatch.setenv("MODELSERVE_KUBEAI_ENGINE", "Infinity")
    assert "engine Infinity does not support feature TextGeneration" in load_error(
        kubeai, tmp_path, features=["TextGeneration"], url="x")
    assert "engine VLLM does not support feature SpeechToText" in load_error(
        kubeai, tmp_path, engine="VLLM", features=["SpeechToText"], url="x")
    monkeypatch.setenv("MODELSERVE_KUBEAI_ENGINE", "TensorRT")
    msg = load_error(kubeai, tmp_path, url="x")
    assert "option 'engine'" in msg and "'TensorRT'" in msg and "FasterWhisper" in msg


def test_a_feature_the_engine_lacks_is_refused(tmp_path):
    msg = load_error(kubeai, tmp_path, engine="VLLM", features=["SpeechToText"], url="x")
    assert "engine VLLM does not support feature SpeechToText" in msg
    msg = load_error(kubeai, tmp_path, engine="Infinity", features=["SpeechToText"], url="x")
    assert "engine Infinity does not support feature SpeechToText (it supports: Reranking, TextEmbedding)" in msg


def test_ollama_load_refusals_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("MODELSERVE_OLLAMA_COMMAND", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "engine OLlama takes url ollama://name[:tag]" in load_error(kubeai, tmp_path, engine="OLlama", url="s3://b/m")
    assert "engine OLlama takes no adapters" in load_error(
        kubeai, tmp_path, engine="OLlama", url="ollama://llama3", adapters=[{"name": "a", "url": "/x"}])
    msg = load_error(kubeai, tmp_path, engine="OLlama", url="ollama://llama3")
    assert "the Ollama engine is not installed here: set $MODELSERVE_OLLAMA_COMMAND" in msg and "OLLAMA_HOST" in msg
    msg = load_error(kubeai, tmp_path, engine="OLlama", url="ollama://llama3", engine_url="http://127.0.0.1:9",
                     args=["-v"])
    assert "options 'args' and 'env' are for an Ollama server we start" in msg
    msg = load_error(kubeai, tmp_path, engine="OLlama", url="ollama://llama3", engine_url="http://127.0.0.1:9")
    assert "Ollama at http://127.0.0.1:9 is unreachable" in msg


def test_generation_and_embeddings_from_one_vllm_engine_are_refused(tmp_path):
    msg = load_error(kubeai, tmp_path, engine="VLLM", features=["TextGeneration", "TextEmbedding"], url="x")
    assert "list one of TextGeneration, TextEmbedding, Reranking" in msg


@pytest.mark.parametrize("url,expected", [
    ("gs://bucket/model", "unsupported URI scheme 'gs://'"),
    ("ollama://llama3", "ollama:// URLs are for engine OLlama"),
    ("store://project/llama", "needs a store root"),
    ("./missing", "model path not found"),
])
def test_bad_model_urls_are_refused(tmp_path, url, expected, monkeypatch):
    monkeypatch.delenv("MODELSERVE_STORE_ROOT", raising=False)
    monkeypatch.setenv("MODELSERVE_VLLM_COMMAND", "/bin/true")
    msg = load_error(kubeai, tmp_path, engine="VLLM", url=url)
    assert expected in msg and "url" in msg


def test_no_url_at_all_is_refused(tmp_path):
    assert "no model: set the option 'url'" in load_error(kubeai, tmp_path, engine="VLLM")


def test_store_urls_resolve_under_the_store_root_and_not_outside(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("MODELSERVE_VLLM_COMMAND", "/nonexistent/vllm")
    # resolved: the load goes on to the engine command, which is what fails here
    msg = load_error(kubeai, tmp_path, engine="VLLM", url="store://llama", store_root=str(tmp_path))
    assert "vLLM engine command not found" in msg
    msg = load_error(kubeai, tmp_path, engine="VLLM", url="store://../etc", store_root=str(model_dir))
    assert "outside the store root" in msg


def test_a_missing_vllm_is_a_clear_load_error(tmp_path, model_dir, monkeypatch):
    monkeypatch.delenv("MODELSERVE_VLLM_COMMAND", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    msg = load_error(kubeai, tmp_path, engine="VLLM", url=str(model_dir))
    assert "the vLLM engine is not installed here: set $MODELSERVE_VLLM_COMMAND" in msg


@pytest.mark.parametrize("adapters,expected", [
    ([{"name": "Bad Name", "url": "x"}], "option 'adapters.0.name'"),
    ([{"name": "a"}], "option 'adapters.0.url': Field required"),
    ([{"name": "a", "url": "x"}, {"name": "a", "url": "y"}], "adapter name 'a' is used twice"),
    ([{"name": "a", "url": "./nowhere"}], "adapter 'a': model path not found"),
])
def test_bad_adapters_are_refused(tmp_path, model_dir, adapters, expected, monkeypatch):
    monkeypatch.setenv("MODELSERVE_VLLM_COMMAND", "/bin/true")
    assert expected in load_error(kubeai, tmp_path, engine="VLLM", url=str(model_dir), adapters=adapters)


def test_an_adapter_folder_without_peft_config_is_refused(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("MODELSERVE_VLLM_COMMAND", "/bin/true")
    msg = load_error(kubeai, tmp_path, engine="VLLM", url=str(model_dir),
                     adapters=[{"name": "a", "url": str(model_dir)}])
    assert "adapter 'a': no adapter_config.json" in msg


@pytest.mark.parametrize("path,expected", [
    ("/etc/passwd", "is absolute"),
    ("../escape.txt", "contains '..'"),
    ("a/../../escape.txt", "contains '..'"),
    ("~/x", "is absolute"),
])
def test_files_cannot_leave_the_working_folder(tmp_path, path, expected):
    msg = load_error(kubeai, tmp_path, engine="VLLM", url="x", files=[{"path": path, "content": "x"}])
    assert expected in msg
    assert not (tmp_path / "escape.txt").exists()


def test_files_do_not_follow_a_symlink_out(tmp_path):
    root = tmp_path / "work"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(ModelLoadError, match="through a symlink"):
        write_files("m", root, [("link/x.txt", "x")])
    os.symlink(outside / "target.txt", root / "file-link")
    with pytest.raises(ModelLoadError, match="through a symlink"):
        write_files("m", root, [("file-link", "x")])
    assert not list(outside.iterdir())
    written = write_files("m", root, [("templates/chat.jinja", "{{ x }}")])
    assert written[0].read_text() == "{{ x }}" and written[0].parent.parent == root.resolve()


@pytest.mark.parametrize("scaling,expected", [
    ({"min_replicas": 3, "max_replicas": 2}, "min_replicas (3) is above max_replicas (2)"),
    ({"replicas": 5, "max_replicas": 2}, "outside [min_replicas, max_replicas]"),
    ({"target_request": 0}, "option 'scaling.target_request'"),
    ({"replica": 1}, "unknown option 'scaling.replica'"),
])
def test_scaling_is_validated(tmp_path, scaling, expected):
    assert expected in load_error(kubeai, tmp_path, engine="VLLM", url="x", scaling=scaling)


def test_processors_and_cache_profile_are_validated(tmp_path):
    assert "option 'processors'" in load_error(kubeai, tmp_path, engine="VLLM", url="x", processors="lots of gpus")
    assert "option 'cache_profile'" in load_error(kubeai, tmp_path, engine="VLLM", url="x", cache_profile="Not_DNS")


def test_unknown_options_are_refused_naming_the_known_ones(tmp_path):
    msg = load_error(kubeai, tmp_path, engine="VLLM", url="x", adaptors=[])
    assert "unknown option 'adaptors'" in msg and "adapters" in msg


def test_serve_args_add_lora_and_let_user_args_win(tmp_path):
    argv = serve_args("llm", 1234, {"a": tmp_path / "a"}, False, ["--max-model-len", "512"],
                      LoraLimits([12], None, None, runtime=False))
    assert argv[argv.index("--port") + 1] == "1234"
    assert argv[argv.index("--served-model-name") + 1] == "llm"
    assert f"a={tmp_path / 'a'}" in argv and argv[argv.index("--max-lora-rank") + 1] == "16"
    assert argv[argv.index("--max-loras") + 1] == "1"
    assert argv[-2:] == ["--max-model-len", "512"]
    pooled = serve_args("e", 1, {}, True, [])
    assert pooled[pooled.index("--runner") + 1] == "pooling" and "--enable-lora" not in pooled
    assert "--runner" not in serve_args("e", 1, {}, True, ["--runner=generate"])[:-1]


def test_lora_limits_for_run_time_adapters():
    # no static adapter: LoRA on with room for rank-16 adapters; the options win, rounded up to vLLM's ranks
    argv = serve_args("llm", 1, {}, False, [], LoraLimits([], None, None, runtime=True))
    assert "--enable-lora" in argv and "--lora-modules" not in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "16" and argv[argv.index("--max-loras") + 1] == "1"
    limits = LoraLimits([8, 8], max_loras=4, max_rank=40, runtime=True)
    assert (limits.max_rank, limits.max_loras) == (64, 4)
    assert LoraLimits([8, 8], None, None, runtime=False).max_rank == 8
    # the user's own --max-lora-rank wins over ours
    argv = serve_args("llm", 1, {}, False, ["--max-lora-rank", "32"], limits)
    assert argv.count("--max-lora-rank") == 1 and argv[-1] == "32"


def test_the_engine_command_is_the_vllm_cli_or_a_python(tmp_path):
    assert launch(["/opt/vllm/bin/vllm"], tmp_path) == ["/opt/vllm/bin/vllm", "serve", str(tmp_path)]
    assert launch(["/venv/bin/python3.11"], tmp_path) == [
        "/venv/bin/python3.11", "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(tmp_path)]


def test_v2_parameters_map_onto_openai_fields():
    body = sampling_body({"max_tokens": "12", "temperature": "0.5", "stop": "\n", "seed": 3, "top_k": 5}, 64, 100)
    assert body == {"max_tokens": 12, "temperature": 0.5, "stop": ["\n"], "seed": 3, "top_k": 5}
    assert sampling_body({}, 64, 100) == {"max_tokens": 64}
    assert sampling_body({"max_new_tokens": 7}, 64, 100)["max_tokens"] == 7
    assert sampling_body({"ignore_eos": True, "min_tokens": 3}, 64, 100) == {"max_tokens": 64, "ignore_eos": True,
                                                                             "min_tokens": 3}


@pytest.mark.parametrize("params,expected", [
    ({"max_tokens": 0}, "parameter 'max_tokens' is 0; allowed range [1, 100]"),
    ({"max_tokens": 101}, "allowed range [1, 100]"),
    ({"temperature": None}, "has no value"),
    ({"top_p": 0}, "parameter 'top_p' is 0.0; allowed range (0, 1]"),
    ({"beams": 2}, "unknown generation parameter 'beams'"),
    ({"stop": [1]}, "parameter 'stop' must be"),
    ({"max_tokens": 3, "max_new_tokens": 3}, "not both"),
    ({"max_tokens": 3, "min_tokens": 4}, "parameter 'min_tokens' is 4; allowed range [0, 3]"),
    ({"ignore_eos": "yes"}, "'ignore_eos' must be true or false"),
])
def test_bad_v2_parameters_are_400s(params, expected):
    with pytest.raises(BadRequest) as err:
        sampling_body(params, 64, 100)
    assert expected in str(err.value)


@pytest.mark.parametrize("text,expected", [
    ("not json", "row 0 is not valid JSON"),
    ("[]", "non-empty JSON list"),
    ('[{"content": "hi"}]', "needs a 'role' and a 'content'"),
    ('[{"role": "wizard", "content": "hi"}]', "unknown role 'wizard'"),
])
def test_malformed_messages_are_400s(text, expected):
    with pytest.raises(BadRequest) as err:
        parse_messages(0, text)
    assert expected in str(err.value)


# -- against a stand-in `vllm` CLI (tests/fakes/vllm.py): the command line, env, files, attach ----------
FAKE_VLLM = Path(__file__).parent / "fakes" / "vllm.py"


def test_the_engine_gets_our_arguments_then_the_users_and_the_env_and_files(tmp_path, model_dir):
    import requests

    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 16}')

    async def run():
        rt = kubeai(tmp_path, engine="VLLM", url=str(model_dir), engine_command=str(FAKE_VLLM),
                     adapters=[{"name": "sql", "url": str(adapter)}], args=["--max-model-len", "128"],
                     env={"FOO": "bar"}, files=[{"path": "templates/chat.jinja", "content": "{{ x }}"}],
                     max_tokens=7)
        await rt.load()
        try:
            debug = await asyncio.to_thread(lambda: requests.get(rt.backend.engine.base_url() + "/debug", timeout=5).json())
            texts = [(await rt.predict(text_request(["hi"], name="prompt", **p))).outputs[0].data.root[0]
                     for p in ({}, {"adapter": "sql", "max_tokens": 5})]
            with pytest.raises(BadRequest, match="unknown adapter 'nope'"):
                await rt.predict(text_request(["hi"], name="prompt", adapter="nope"))
            tmp = debug["env"]["TMPDIR"]
            assert os.path.isdir(tmp)
        finally:
            await rt.unload()
        return debug, texts, tmp

    debug, texts, tmp = asyncio.run(run())
    argv = debug["argv"]
    assert argv[:2] == ["serve", str(model_dir)]
    assert argv[argv.index("--served-model-name") + 1] == "m"
    assert f"sql={adapter}" in argv and argv[argv.index("--max-lora-rank") + 1] == "16"
    assert argv[-2:] == ["--max-model-len", "128"]
    assert debug["env"]["FOO"] == "bar"
    assert debug["cwd"] == str((tmp_path / "cache" / "work" / "m").resolve())
    assert "templates/chat.jinja" in debug["files"]
    assert texts == [b"m:hi:7", b"sql:hi:5"]
    assert not os.path.exists(tmp)  # the engine's temporary folder goes with it


def test_attaching_to_a_running_engine(tmp_path):
    import subprocess
    import sys

    from modelserve.engines.process import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAKE_VLLM), "serve", "x", "--host", "127.0.0.1", "--port",
                             str(port), "--served-model-name", "m"], stdout=subprocess.DEVNULL)
    try:
        async def run(url):
            rt = kubeai(tmp_path, engine="VLLM", engine_url=url)
            await rt.load()
            try:
                return (await rt.predict(text_request(["hi"], name="prompt"))).outputs[0].data.root[0]
            finally:
                await rt.unload()

        import time

        import requests
        for _ in range(50):
            try:
                requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        assert asyncio.run(run(f"http://127.0.0.1:{port}")) == b"m:hi:256"
        assert proc.poll() is None  # an attached engine is not ours to stop
        msg = load_error(kubeai, tmp_path, engine="VLLM", engine_url=f"http://127.0.0.1:{port}",
                         adapters=[{"name": "sql", "url": "s3://not/resolved/when/attached"}])
        assert "does not serve adapter 'sql'" in msg
    finally:
        proc.kill()
    msg = load_error(kubeai, tmp_path, engine="VLLM", engine_url=f"http://127.0.0.1:{port}")
    assert f"engine_url http://127.0.0.1:{port}" in msg


def test_infinity_command_line_and_its_refusals(tmp_path, model_dir, monkeypatch):
    from modelserve.engines import infinity

    argv = infinity.serve_args("emb", model_dir, 4321, ["--batch-size", "8"])
    assert argv[argv.index("--model-id") + 1] == str(model_dir)
    assert argv[argv.index("--served-model-name") + 1] == "emb" and argv[argv.index("--port") + 1] == "4321"
    assert argv[argv.index("--url-prefix") + 1] == "/v1" and argv[-2:] == ["--batch-size", "8"]
    assert "--log-level" not in infinity.serve_args("emb", model_dir, 1, ["--log-level", "info"])[:-2]
    assert infinity.launch(["/opt/inf/bin/python3"]) == ["/opt/inf/bin/python3", "-m", "infinity_emb.cli", "v2"]
    assert infinity.launch(["/opt/inf/bin/infinity_emb"]) == ["/opt/inf/bin/infinity_emb", "v2"]
    monkeypatch.delenv("MODELSERVE_INFINITY_COMMAND", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    msg = load_error(kubeai, tmp_path, engine="Infinity", url=str(model_dir))
    assert "the Infinity engine is not installed here: set $MODELSERVE_INFINITY_COMMAND" in msg
    msg = load_error(kubeai, tmp_path, engine="Infinity", url=str(model_dir), engine_command="/bin/true",
                     adapters=[{"name": "a", "url": str(model_dir)}])
    assert "engine Infinity does not take adapters" in msg


def test_the_documented_ollama_example_is_valid():
    """examples/ollama is left out of ./settings (it needs a real Ollama) but must stay a valid model."""
    import json

    from modelserve.kubeai import KubeAIOptions
    from modelserve.options import Engine, parse_options

    path = Path(__file__).resolve().parents[1] / "examples" / "ollama" / "model-settings.json"
    data = json.loads(path.read_text())
    assert data["implementation"] == "modelserve.kubeai.KubeAIRuntime" and data["parallel_workers"] == 0
    opts = parse_options(KubeAIOptions, ModelSettings(name=data["name"], implementation=KubeAIRuntime,
                                                      parameters=ModelParameters(**data["parameters"])))
    assert opts.engine == Engine.OLLAMA and opts.url.startswith("ollama://")
