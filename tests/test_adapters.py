"""adapters.py without a server: the request bodies (ours and vLLM's shapes), the fit check of a LoRA folder
against its base model's weights (real tiny Llamas and PEFT adapters built here), and the options that
refuse LoRA where it does not apply."""

from __future__ import annotations

import json

import pytest

from modelserve.adapters import misfit, parse_spec
from modelserve.errors import BadRequest

from .support.llama_models import build_lora, build_tiny_llama
from .support.runtimes import kubeai, load_error


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamas")
    base, other = build_tiny_llama(root / "base"), build_tiny_llama(root / "other", hidden_size=64)
    return {"base": base, "other": other, "fits": build_lora(root / "fits", base, 1),
            "foreign": build_lora(root / "foreign", other, 2)}


def test_bodies_in_our_shape_and_vllms():
    assert parse_spec(b'{"name": "a-1", "url": "s3://b/k"}', {}).url == "s3://b/k"
    spec = parse_spec(b'{"lora_name": "x", "lora_path": "/p", "load_inplace": false, "model": "llm"}',
                      {"lora_name": "name", "lora_path": "url"})
    assert (spec.name, spec.url) == ("x", "/p")


@pytest.mark.parametrize("raw,fragment", [
    (b"{", "not valid JSON"),
    (b"[]", "must be a JSON object"),
    (b'{"name": "A", "url": "/p"}', "adapter field 'name'"),
    (b'{"name": "a"}', "adapter field 'url'"),
    (b'{"name": "a", "url": "/p", "rank": 8}', "adapter field 'rank'"),
])
def test_bad_bodies_name_the_field(raw, fragment):
    with pytest.raises(BadRequest) as err:
        parse_spec(raw, {})
    assert fragment in str(err.value) and err.value.status_code == 400


def test_an_adapter_fits_its_own_base_and_not_another(llamas):
    assert misfit(llamas["base"], llamas["fits"]) is None
    why = misfit(llamas["base"], llamas["foreign"])
    assert "has input size 128, the adapter's lora_A has 64" in why and "another base model" in why
    assert misfit(llamas["other"], llamas["foreign"]) is None


def test_an_adapter_for_a_layer_the_model_lacks(llamas, tmp_path):
    folder = tmp_path / "renamed"
    folder.mkdir()
    (folder / "adapter_config.json").write_text((llamas["fits"] / "adapter_config.json").read_text())
    data = (llamas["fits"] / "adapter_model.safetensors").read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header = {k.replace("layers.1.", "layers.7."): v for k, v in header.items()}
    raw = json.dumps(header).encode()
    (folder / "adapter_model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + size:])
    assert "changes layer 'model.layers.7.self_attn" in misfit(llamas["base"], folder)


def test_unreadable_weights_are_named(llamas, tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\xff" * 16)
    assert "cannot read the weights' headers" in misfit(llamas["base"], tmp_path)


@pytest.mark.parametrize("extra,fragment", [
    ({"engine": "Infinity", "runtime_adapters": True}, "option 'runtime_adapters' is for engine VLLM"),
    ({"engine": "FasterWhisper", "max_lora_rank": 32}, "option 'max_lora_rank' is for engine VLLM"),
    ({"engine": "VLLM", "max_loras": 0}, "max_loras"),
])
def test_lora_options_where_they_do_not_apply(tmp_path, extra, fragment):
    assert fragment in load_error(kubeai, tmp_path, url=str(tmp_path), **extra)


def test_a_static_adapter_for_another_base_is_a_load_error(llamas, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSERVE_VLLM_COMMAND", "/bin/true")  # refused before any engine starts
    msg = load_error(kubeai, tmp_path, engine="VLLM", url=str(llamas["base"]),
                     adapters=[{"name": "foreign", "url": str(llamas["foreign"])}])
    assert "adapter 'foreign' does not fit the model: layer 'model.layers.0.self_attn" in msg, msg
