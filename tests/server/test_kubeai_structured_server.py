"""Structured output and tool calls through our OpenAI route to a real vLLM engine (model ``llm`` of the shared
``llm_server``, random weights) and to transformers (``hf-llama``: llguidance's mask as a logits processor):
``response_format`` json_object / json_schema, and a named ``tool_choice`` (vLLM); every answer parsed and
validated with jsonschema, since only guided decoding can make random weights write valid JSON."""

from __future__ import annotations

import json

import pytest

jsonschema = pytest.importorskip("jsonschema")
openai = pytest.importorskip("openai")

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
                                           "sure": {"type": "boolean"}},
          "required": ["answer", "sure"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                             "parameters": {"type": "object", "properties": {
                                                 "unit": {"type": "string", "enum": ["C", "F"]}},
                                                 "required": ["unit"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "Is the sea cold in winter?"}]


def chat(srv, **kw):
    kw.setdefault("max_tokens", 48)
    return srv.client.chat.completions.create(model=kw.pop("model", "llm"), messages=ASK, temperature=0, **kw)


@pytest.mark.parametrize("model", ["llm", "lora-a", "hf-llama", "hf-a"])
def test_a_json_schema_answer_validates(llm_server, model):
    res = chat(llm_server, model=model, response_format={
        "type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True}})
    jsonschema.validate(json.loads(res.choices[0].message.content), SCHEMA)


@pytest.mark.parametrize("model", ["llm", "hf-llama"])
def test_a_json_schema_stream_adds_up_to_valid_json(llm_server, model):
    stream = chat(llm_server, model=model, stream=True, response_format={
        "type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("model", ["llm", "hf-llama"])
def test_json_object_mode_gives_a_json_object(llm_server, model):
    """Any object is allowed, so random weights may write members until max_tokens: then the text is still the
    start of an object (a JSON text cut short), else a whole one."""
    res = chat(llm_server, model=model, response_format={"type": "json_object"}, max_tokens=64)
    text, finish = res.choices[0].message.content, res.choices[0].finish_reason
    assert text.startswith("{"), text
    if finish == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert finish == "length"
        with pytest.raises(json.JSONDecodeError) as cut:
            json.loads(text)
        assert cut.value.pos >= len(text) - 1 or "Unterminated" in cut.value.msg, (text, cut.value)


def test_a_named_tool_choice_returns_a_tool_call_in_openais_shape(llm_server):
    res = chat(llm_server, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = res.choices[0].message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("kw,fragment", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     'Unsupported type "nonsense"'),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "with the schema as an object"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "not_given"}}},
     "tool_choice names tool 'not_given', which is not in 'tools' (given: get_weather)"),
    ({"tool_choice": "required"}, "needs 'tools'"),
    ({"tools": [{"name": "flat"}]}, "'tools' must be a list"),
    ({"response_format": {"type": "xml"}}, "response_format.type must be one of"),
])
def test_bad_structured_requests_are_400_naming_the_problem(llm_server, kw, fragment):
    with pytest.raises(openai.BadRequestError) as err:
        chat(llm_server, **kw)
    assert fragment in str(err.value) and "Traceback" not in str(err.value)
    assert chat(llm_server, max_tokens=2).choices[0].message.content is not None  # still serving


@pytest.mark.parametrize("kw,fragment", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "the JSON schema cannot be followed"),
    ({"tools": [WEATHER]}, "field 'tools' is not supported by backend HUGGINGFACE"),
    ({"response_format": {"type": "structural_tag"}}, "structural_tag is not supported by backend HUGGINGFACE"),
])
def test_bad_structured_requests_to_transformers_are_400(llm_server, kw, fragment):
    with pytest.raises(openai.BadRequestError) as err:
        chat(llm_server, model="hf-llama", **kw)
    assert fragment in str(err.value) and "Traceback" not in str(err.value)
    assert chat(llm_server, model="hf-llama", max_tokens=2).choices[0].message.content is not None
