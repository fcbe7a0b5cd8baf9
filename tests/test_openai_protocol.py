"""openai/protocol.py's checks of structured-output and tool fields, without a server."""

from __future__ import annotations

import pytest

from modelserve.openai.protocol import OpenAIError, check_structured

from .support.runtimes import kubeai, load_error

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


def test_the_schema_an_answer_must_follow():
    assert check_structured({}) is None
    assert check_structured({"response_format": {"type": "text"}}) is None
    assert check_structured({"response_format": {"type": "json_object"}}) == {"type": "object"}
    assert check_structured({"response_format": {"type": "json_schema",
                                                 "json_schema": {"name": "x", "schema": SCHEMA}}}) == SCHEMA
    assert check_structured({"tools": [TOOL], "tool_choice": {"type": "function",
                                                              "function": {"name": "get_weather"}}}) is None
    assert check_structured({"tools": [TOOL], "tool_choice": "auto"}) is None


@pytest.mark.parametrize("body,param,fragment", [
    ({"response_format": "json"}, "response_format", "must be one of text, json_object"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "with the schema as an object"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": "x"}}}, "response_format", "schema as"),
    ({"tools": {"a": 1}}, "tools", "must be a list"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools", "must be a list"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice",
     "names tool 'other', which is not in 'tools' (given: get_weather)"),
    ({"tool_choice": {"type": "function", "function": {"name": "x"}}}, "tool_choice", "(given: none)"),
    ({"tool_choice": "sometimes"}, "tool_choice", "must be 'none', 'auto', 'required'"),
    ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
])
def test_bad_structured_fields_name_the_problem(body, param, fragment):
    with pytest.raises(OpenAIError) as err:
        check_structured(body)
    assert err.value.status == 400 and err.value.param == param and fragment in str(err.value)


def test_a_tool_parser_is_for_vllm_generation(tmp_path):
    assert "option 'tool_call_parser' is for engine VLLM" in load_error(
        kubeai, tmp_path, engine="Infinity", url=str(tmp_path), tool_call_parser="hermes")
    assert "tool_call_parser" in load_error(kubeai, tmp_path, engine="VLLM", url=str(tmp_path),
                                            tool_call_parser="Not A Parser")
