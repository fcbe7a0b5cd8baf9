"""Typed options: unknown keys and bad values fail the load, naming the key and the allowed values."""

from typing import List

import pytest
from mlserver.settings import ModelSettings

from modelserve.errors import ModelLoadError
from modelserve.options import Backend, Dtype, Engine, Feature, RuntimeOptions, Task, parse_options


class Opts(RuntimeOptions):
    dtype: Dtype = Dtype.AUTO
    tasks: List[Task] = []
    n: int = 1


def settings(extra):
    return ModelSettings(name="m", implementation="mlserver.MLModel", parameters={"extra": extra})


def test_defaults_when_no_extra():
    opts = parse_options(Opts, ModelSettings(name="m", implementation="mlserver.MLModel"))
    assert opts.dtype is Dtype.AUTO and opts.n == 1 and opts.cache_dir is None


def test_enum_values_are_case_insensitive():
    assert parse_options(Opts, settings({"dtype": "half"})).dtype is Dtype.HALF
    assert parse_options(Opts, settings({"tasks": ["FILL_MASK"]})).tasks == [Task.FILL_MASK]


def test_unknown_key_names_it_and_the_known_ones():
    with pytest.raises(ModelLoadError) as exc:
        parse_options(Opts, settings({"dtyp": "HALF"}))
    msg = str(exc.value)
    assert "unknown option 'dtyp'" in msg and "known options: cache_dir, dtype, n, pvc_root, request_timeout, tasks" in msg
    assert exc.value.status_code == 422


def test_bad_enum_value_lists_the_allowed_values():
    with pytest.raises(ModelLoadError) as exc:
        parse_options(Opts, settings({"dtype": "int4"}))
    assert "option 'dtype'" in str(exc.value) and "'BFLOAT16'" in str(exc.value) and "'int4'" in str(exc.value)


def test_wrong_type_names_the_key():
    with pytest.raises(ModelLoadError) as exc:
        parse_options(Opts, settings({"n": "many"}))
    assert "option 'n'" in str(exc.value) and "integer" in str(exc.value)


def test_mission_vocabularies():
    assert [t.value for t in Task] == ["sequence_classification", "token_classification", "fill_mask",
                                       "text_generation", "text2text_generation", "text_embedding", "text_reranking"]
    assert [b.value for b in Backend] == ["AUTO", "VLLM", "HUGGINGFACE"]
    assert [d.value for d in Dtype] == ["AUTO", "FLOAT32", "FLOAT16", "BFLOAT16", "FLOAT", "HALF"]
    assert [e.value for e in Engine] == ["VLLM", "OLlama", "FasterWhisper", "Infinity"]
    assert [f.value for f in Feature] == ["TextGeneration", "TextEmbedding", "SpeechToText", "Reranking"]
    assert Engine("ollama") is Engine.OLLAMA
