"""V2 tensor decoding with named errors, encoding that keeps shapes and datatypes, and V1 <-> V2."""

import numpy as np
import pytest
from mlserver.types import InferenceResponse, RequestInput

from modelserve.codecs import decode_array, decode_column, encode_array, v1_request_to_v2, v2_response_to_v1
from modelserve.errors import BadRequest


def dt(datatype):
    return getattr(datatype, "value", datatype)


def inp(shape, data, datatype="FP32", name="x"):
    return RequestInput(name=name, shape=shape, datatype=datatype, data=data)


def test_decode_numeric_flat_and_nested():
    a = decode_array(inp([2, 2], [1, 2, 3, 4]))
    assert a.dtype == np.float32 and a.tolist() == [[1, 2], [3, 4]]
    assert decode_array(inp([2, 2], [[1, 2], [3, 4]], "INT64")).dtype == np.int64


def test_decode_bytes_gives_str():
    a = decode_array(inp([2], ["a", "b"], "BYTES"))
    assert a.dtype == object and a.tolist() == ["a", "b"]


@pytest.mark.parametrize("shape,data,datatype,needle", [
    ([2, 2], [1, 2, 3], "FP32", "shape [2, 2] needs 4 values, got 3"),
    ([1, 2], ["a", 1], "FP32", "datatype FP32 but the data holds 'a'"),
    ([1, 2], [1, None], "FP64", "holds null"),
    ([2], ["a"], "BYTES", "needs 2 values, got 1"),
    ([1], [300], "UINT8", "does not fit datatype UINT8"),
    ([-1], [1], "FP32", "negative dimension"),
])
def test_decode_errors_name_the_input(shape, data, datatype, needle):
    with pytest.raises(BadRequest) as exc:
        decode_array(inp(shape, data, datatype))
    assert "input 'x'" in str(exc.value) and needle in str(exc.value)


def test_decode_column_accepts_n_by_1_and_refuses_2d():
    assert decode_column(inp([3, 1], [1, 2, 3])).shape == (3,)
    with pytest.raises(BadRequest, match=r"shape \[rows\] or \[rows, 1\]"):
        decode_column(inp([1, 2], [1, 2]))


def test_encode_keeps_shape_and_datatype():
    o = encode_array("p", np.array([0, 2], dtype=np.int64))
    assert (o.shape, dt(o.datatype)) == ([2], "INT64")
    o = encode_array("p", np.array([[0.5, np.nan]]))
    assert dt(o.datatype) == "FP64" and o.data.root == [0.5, None]
    o = encode_array("p", np.array(["setosa", "virginica"], dtype=object))
    assert dt(o.datatype) == "BYTES" and o.data.root == [b"setosa", b"virginica"]


def test_v1_rows_become_one_tensor_and_objects_columns():
    req = v1_request_to_v2({"instances": [[1, 2], [3, 4]]}, "input-0")
    assert [(i.name, i.shape, dt(i.datatype)) for i in req.inputs] == [("input-0", [2, 2], "INT64")]
    req = v1_request_to_v2({"instances": [{"a": 1.5, "b": "x"}, {"a": 2.0, "b": "y"}]}, "input-0")
    assert [(i.name, dt(i.datatype)) for i in req.inputs] == [("a", "FP64"), ("b", "BYTES")]


@pytest.mark.parametrize("body,needle", [
    ([1, 2], '"instances"'),
    ({"instances": "x"}, "non-empty list"),
    ({"instances": [[1, 2], [3]]}, "ragged"),
    ({"instances": [{"a": 1}, [1]]}, "mixes"),
    ({"instances": [[1]], "signature": "x"}, "unknown V1 request field"),
])
def test_v1_bad_bodies(body, needle):
    with pytest.raises(BadRequest, match=needle):
        v1_request_to_v2(body, "input-0")


def test_v2_response_to_v1():
    one = InferenceResponse(model_name="m", outputs=[encode_array("predict", np.array([1, 0]))])
    assert v2_response_to_v1(one) == {"predictions": [1, 0]}
    two = InferenceResponse(model_name="m", outputs=[encode_array("label", np.array(["a", "b"], dtype=object)),
                                                    encode_array("score", np.array([0.5, 0.25]))])
    assert v2_response_to_v1(two) == {"predictions": [{"label": "a", "score": 0.5}, {"label": "b", "score": 0.25}]}
