"""codecs/requests.py: the request checks every runtime shares, each with its one wording."""

from __future__ import annotations

import pytest
from mlserver.types import InferenceRequest

from modelserve.codecs.requests import (datatype_of, no_parameters, one_input, parse_json, request_parameters,
                                        wanted_outputs)
from modelserve.errors import BadRequest


def request(inputs=(), outputs=(), **params) -> InferenceRequest:
    return InferenceRequest.model_validate({
        "inputs": [{"name": n, "datatype": "BYTES", "shape": [1], "data": ["x"]} for n in inputs],
        "outputs": [{"name": n} for n in outputs], **({"parameters": params} if params else {})})


def refused(call, *args) -> str:
    with pytest.raises(BadRequest) as err:
        call(*args)
    assert err.value.status_code == 400 and "\n" not in str(err.value)
    return str(err.value)


def test_one_input_names_what_the_model_takes():
    assert one_input(request(["text"]), "one input tensor of texts").name == "text"
    assert refused(one_input, request(), "one input tensor of texts") == (
        "the request has no inputs: this model takes one input tensor of texts")
    assert refused(one_input, request(["a", "b"]), "one input tensor") == (
        "this model takes one input tensor, got 2 inputs (a, b)")


def test_wanted_outputs_default_and_unknown():
    assert wanted_outputs(request(["x"]), ("label", "score"), ("label",)) == ("label",)
    assert wanted_outputs(request(["x"], ["score", "label"]), ("label", "score"), ()) == ("score", "label")
    assert refused(wanted_outputs, request(["x"], ["logits"]), ("label", "score"), ()) == (
        "unknown output 'logits' (this model offers: label, score)")


def test_no_parameters_refuses_any_not_allowed():
    assert no_parameters(request(["x"]), "task text_embedding") == {}
    assert no_parameters(request(["x"], top_k=3), "fill_mask", ("top_k",)) == {"top_k": 3}
    assert refused(no_parameters, request(["x"], top_k=3), "task text_embedding") == (
        "unknown parameter 'top_k': task text_embedding takes no request parameters")
    assert refused(no_parameters, request(["x"], beams=3), "fill_mask", ("top_k",)) == (
        "unknown parameter 'beams': fill_mask takes top_k")


def test_request_parameters_leave_out_mlservers_own_fields_and_keep_none():
    req = InferenceRequest.model_validate({"inputs": [], "parameters": {"content_type": "np", "temperature": None}})
    assert request_parameters(req) == {"temperature": None}


def test_datatype_of_and_parse_json():
    assert datatype_of(request(["x"]).inputs[0]) == "BYTES"
    assert parse_json(b'{"a": 1}') == {"a": 1} and parse_json(b"") is None
    assert refused(parse_json, b"{nope").startswith("the body is not valid JSON")
