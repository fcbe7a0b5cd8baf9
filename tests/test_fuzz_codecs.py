"""Property-based fuzzing (hypothesis) of the codecs: whatever a client sends, decoding gives the declared
shape or a BadRequest (a 400), never another exception (a 500); what decodes encodes back unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput
from pydantic import ValidationError

from modelserve.codecs import decode_array, decode_column, encode_array, text_rows, v1_request_to_v2, v2_response_to_v1
from modelserve.codecs.params import SAMPLING, number, sampling_body
from modelserve.errors import BadRequest

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=12)
shapes = st.lists(st.integers(min_value=-2, max_value=5), min_size=0, max_size=4) | st.lists(
    st.sampled_from([0, 1, 2 ** 31, 2 ** 62]), max_size=3)


def _empty_but_too_big(shape) -> bool:
    """An empty tensor whose other dimensions overflow numpy's size limit: a known 500, tested apart below."""
    return 0 in shape and math.prod(d for d in shape if d) * 8 >= 2 ** 63


def tensor(shape, data, datatype) -> RequestInput:
    """As MLServer builds it from a request body; bodies MLServer itself refuses (a 422) are skipped."""
    assume(not _empty_but_too_big(shape))
    try:
        return InferenceRequest.model_validate(
            {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}).inputs[0]
    except ValidationError:
        assume(False)


@FUZZ
@given(shape=shapes, data=json_values, datatype=st.sampled_from(DATATYPES))
def test_decode_array_gives_the_declared_shape_or_a_bad_request(shape, data, datatype):
    inp = tensor(shape, data, datatype)
    try:
        arr = decode_array(inp)
    except BadRequest as exc:
        assert exc.status_code == 400 and "'x'" in str(exc) and "\n" not in str(exc)
        return
    assert list(arr.shape) == list(inp.shape)


@FUZZ
@given(shape=shapes, data=json_values, datatype=st.sampled_from(DATATYPES))
def test_decode_column_and_text_rows_refuse_with_a_bad_request_only(shape, data, datatype):
    inp = tensor(shape, data, datatype)
    for fn in (decode_column, text_rows):
        try:
            out = fn(inp)
        except BadRequest:
            continue
        assert len(out) == (inp.shape[0] if inp.shape else 1)


@pytest.mark.parametrize("datatype", ["FP64", "BYTES"])
def test_an_empty_tensor_of_an_impossible_shape_is_a_bad_request(datatype):
    with pytest.raises(BadRequest):
        decode_array(RequestInput(name="x", shape=[0, 2 ** 62, 2 ** 62], datatype=datatype, data=[]))


numeric_dtypes = st.sampled_from([np.bool_, np.uint8, np.int16, np.int32, np.int64, np.float32, np.float64])


@FUZZ
@given(arr=hnp.arrays(numeric_dtypes, hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)))
def test_numeric_tensors_decode_and_encode_back_unchanged(arr):
    out = encode_array("x", arr)
    assert out.shape == list(arr.shape)
    values = [v if v is not None else math.nan for v in out.data.root]  # NaN travels as null
    back = decode_array(RequestInput(name="x", shape=out.shape, datatype=out.datatype, data=values))
    assert back.dtype == arr.dtype
    np.testing.assert_array_equal(back, arr)


@FUZZ
@given(texts=st.lists(st.text(max_size=20), min_size=1, max_size=6))
def test_text_tensors_decode_and_encode_back_unchanged(texts):
    out = encode_array("t", np.array(texts, dtype=object))
    assert out.datatype == "BYTES"
    back = decode_array(RequestInput(name="t", shape=out.shape, datatype="BYTES", data=out.data.root))
    assert back.tolist() == texts


@FUZZ
@given(body=json_values | st.fixed_dictionaries({"instances": json_values}, optional={"parameters": json_values}))
def test_v1_bodies_become_v2_requests_or_a_bad_request(body):
    try:
        req = v1_request_to_v2(body, "input-0")
    except ValidationError:  # "parameters" that are not an object: Runtime._v1_predict makes it a 400
        assert isinstance(body, dict) and not isinstance(body.get("parameters"), (dict, type(None)))
        return
    except BadRequest as exc:
        assert exc.status_code == 400
        return
    assert all(math.prod(i.shape) == len(i.data.root) for i in req.inputs)  # [{}]: no inputs, refused later


@FUZZ
@given(arr=hnp.arrays(st.sampled_from([np.int64, np.float64]), hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
                      elements={"allow_nan": False}))
def test_v1_response_keeps_the_rows(arr):
    resp = InferenceResponse(model_name="m", outputs=[encode_array("y", arr)])
    assert np.array_equal(np.asarray(v2_response_to_v1(resp)["predictions"]), arr)


@FUZZ
@given(value=json_values, kind=st.sampled_from([int, float]),
       low=st.none() | st.integers(-5, 5), high=st.none() | st.integers(5, 10), low_open=st.booleans())
def test_a_parameter_number_is_in_range_or_a_bad_request(value, kind, low, high, low_open):
    try:
        got = number("p", value, kind, low, high, low_open)
    except BadRequest as exc:
        assert "'p'" in str(exc)
        return
    assert isinstance(got, kind)
    assert low is None or (got > low if low_open else got >= low)
    assert high is None or got <= high


param_names = st.sampled_from(["max_tokens", "max_new_tokens", "min_tokens", "ignore_eos", "stop", *SAMPLING]) | st.text(
    max_size=8)


@FUZZ
@given(params=st.dictionaries(param_names, json_values, max_size=5))
def test_sampling_parameters_are_checked_one_by_one(params):
    try:
        body = sampling_body(params, default_max=16, cap=64)
    except BadRequest as exc:  # the message may quote the client's own key, line breaks and all
        assert exc.status_code == 400
        return
    assert 1 <= body["max_tokens"] <= 64
    for key, (kind, low, high, low_open) in SAMPLING.items():
        if key in body:
            assert isinstance(body[key], kind)


# -- MLflow signatures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signature_codec():
    pytest.importorskip("mlflow")
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from modelserve.codecs.mlflow_signature import SignatureCodec

    return SignatureCodec(Schema([ColSpec("double", "a"), ColSpec("long", "n"), ColSpec("string", "s")]), None,
                          ParamSchema([ParamSpec("scale", "double", 1.0), ParamSpec("mode", "string", "sum")]))


columns = st.lists(st.tuples(st.sampled_from(["a", "n", "s", "zz"]), shapes, json_values,
                             st.sampled_from(DATATYPES)), min_size=0, max_size=4)


@FUZZ
@given(cols=columns, params=st.none() | st.dictionaries(st.sampled_from(["scale", "mode", "other"]), json_values))
def test_mlflow_signature_decoding_refuses_with_a_bad_request_only(signature_codec, cols, params):
    try:
        payload = InferenceRequest.model_validate(
            {"inputs": [{"name": n, "shape": sh, "datatype": dt, "data": d} for n, sh, d, dt in cols]})
    except ValidationError:
        assume(False)
    try:
        frame = signature_codec.decode(payload)
    except BadRequest:
        pass
    else:
        assert list(frame.columns) == ["a", "n", "s"]
    try:
        decoded = signature_codec.decode_params(params)
    except BadRequest:
        return
    assert decoded is None or set(decoded) <= {"scale", "mode"}
