"""Property-based fuzzing (hypothesis) of option parsing: for every runtime's options class, any
``parameters.extra`` either parses or fails the load with a ModelLoadError naming a key that was given;
nothing else escapes, and what parses round-trips."""

from __future__ import annotations

import importlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from mlserver.settings import ModelSettings

from modelserve.errors import ModelLoadError
from modelserve.options import RuntimeOptions, parse_options

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _options_classes():
    classes = {"RuntimeOptions": RuntimeOptions}
    for module, name in [("modelserve.sklearn", "SKLearnOptions"), ("modelserve.mlflow", "MLflowOptions"),
                         ("modelserve.huggingface", "HuggingFaceOptions"), ("modelserve.kubeai", "KubeAIOptions")]:
        try:
            classes[name] = getattr(importlib.import_module(module), name)
        except ImportError:  # an extra that is not installed
            continue
    return classes


CLASSES = _options_classes()
scalars = (st.none() | st.booleans() | st.integers(-(2 ** 40), 2 ** 40) | st.floats(allow_nan=True)
           | st.text(max_size=8) | st.sampled_from(["AUTO", "vllm", "predict", "float16", "TextGeneration", "1.5"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def settings_with(extra) -> ModelSettings:
    return ModelSettings(name="m", implementation="mlserver.MLModel", parameters={"extra": extra})


def extras(cls):
    keys = st.sampled_from(sorted(cls.model_fields)) | st.text(min_size=1, max_size=10)
    return st.dictionaries(keys, values, max_size=5)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_any_extra_parses_or_fails_the_load_naming_a_given_key(name, monkeypatch):
    cls = CLASSES[name]
    monkeypatch.setenv("MODELSERVE_KUBEAI_ENGINE", "VLLM")

    @FUZZ
    @given(extra=extras(cls))
    def check(extra):
        try:
            opts = parse_options(cls, settings_with(extra))
        except ModelLoadError as exc:
            msg = str(exc)
            assert exc.status_code == 422 and msg.startswith("model 'm' failed to load: ")
            assert "option '" in msg or "unknown option '" in msg or "<options>" in msg, msg
            return
        assert isinstance(opts, cls)
        assert set(extra) <= set(cls.model_fields)
        again = parse_options(cls, settings_with(opts.model_dump(mode="json", exclude_unset=True)))
        assert again == opts

    check()


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_unknown_keys_are_named_with_the_known_ones(name, monkeypatch):
    cls = CLASSES[name]
    monkeypatch.setenv("MODELSERVE_KUBEAI_ENGINE", "VLLM")

    @FUZZ
    @given(key=st.text(min_size=1, max_size=12).filter(lambda k: k not in cls.model_fields))
    def check(key):
        with pytest.raises(ModelLoadError) as exc:
            parse_options(cls, settings_with({key: 1}))
        assert f"unknown option '{key}'" in str(exc.value) and "request_timeout" in str(exc.value)

    check()


@FUZZ
@given(value=st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=5) | st.none())
def test_request_timeout_is_a_positive_number_or_unset(value):
    try:
        opts = parse_options(RuntimeOptions, settings_with({"request_timeout": value}))
    except ModelLoadError as exc:
        assert "option 'request_timeout'" in str(exc)
        return
    assert opts.request_timeout is None or opts.request_timeout > 0


def test_trust_remote_code_is_off_unless_asked():
    """(The load refusing such a folder: tests/test_huggingface.py::test_trust_remote_code_is_off_by_default.)"""
    cls = CLASSES.get("HuggingFaceOptions")
    if cls is None:
        pytest.skip("huggingface extra not installed")
    assert parse_options(cls, settings_with({})).trust_remote_code is False
    assert parse_options(cls, settings_with({"trust_remote_code": True})).trust_remote_code is True
