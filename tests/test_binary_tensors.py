"""The binary tensor data extension against tritonclient's own code: its request bodies decode to the values it
sent, and the bodies encode_response writes come back exactly through its InferResult."""

import base64
import struct
import time

import ml_dtypes
import numpy as np
import pytest
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request

from modelserve import binary_tensors
from modelserve.binary_tensors import BinaryError, binary_outputs, decode_request, encode_json, encode_response

I64, U64 = np.iinfo(np.int64), np.iinfo(np.uint64)
NUMERIC = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([0, 1, 255], dtype=np.uint8),
    "UINT16": np.array([0, 1, 65535], dtype=np.uint16),
    "UINT32": np.array([[0, 7], [2**32 - 1, 123456789]], dtype=np.uint32),
    "UINT64": np.array([0, 1, U64.max], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([-32768, -1, 32767], dtype=np.int16),
    "INT32": np.array([[-2**31, 0], [1, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([I64.min, -1, I64.max], dtype=np.int64),
    "FP16": np.array([0.1, -0.0, 65504, 6e-8, np.inf], dtype=np.float16),
    "FP32": np.array([[0.1, -2.5e-38, 3.4028235e38], [1e-45, -np.inf, 1 / 3]], dtype=np.float32),
    "FP64": np.array([0.1, 5e-324, -1.7976931348623157e308, np.pi], dtype=np.float64),
}


def body_of(inputs, outputs=None, **parameters):
    """tritonclient.http's own request body and Inference-Header-Content-Length."""
    return _get_inference_request(inputs=inputs, request_id="", outputs=outputs, sequence_id=0, sequence_start=False,
                                  sequence_end=False, priority=0, timeout=None, custom_parameters=parameters or None)


def tensor(name, arr, datatype, binary=True):
    return InferInput(name, list(arr.shape), datatype).set_data_from_numpy(arr, binary_data=binary)


def raw_body(inputs, *chunks):
    """A hand-made body: header JSON, then the chunks; returns (body, header length)."""
    header = encode_json({"inputs": inputs})
    return header + b"".join(chunks), len(header)


def result_of(response, binary):
    body, header_length = encode_response(response, binary)
    return InferResult.from_response_body(body, verbose=False, header_length=header_length), header_length


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_decode_every_fixed_size_datatype(datatype):
    arr = NUMERIC[datatype]
    body, size = body_of([tensor("x", arr, datatype)])
    assert size is not None and len(body) == size + arr.nbytes
    inp = decode_request(body, str(size))["inputs"][0]
    assert inp == {"name": "x", "shape": list(arr.shape), "datatype": datatype, "data": arr.flatten().tolist()}
    assert np.asarray(inp["data"], dtype=arr.dtype).tobytes() == arr.tobytes()  # bit for bit, -0.0 included


def test_decode_bytes_as_base64_that_the_codec_turns_back_into_the_exact_bytes():
    """BYTES elements (text, empty, non-ASCII, and bytes that are not UTF-8, as an audio file) reach the JSON
    request as base64 with content_type base64; codecs.tensors.raw_data gives the model the bytes sent."""
    from mlserver.types import RequestInput

    from modelserve.codecs.tensors import decode_array, raw_data

    arr = np.array([["", "héllo wörld"], [b"\xe2\x82\xac", b"RIFF\x00\xff\xfe"]], dtype=object)
    body, size = body_of([tensor("s", arr, "BYTES")])
    inp = decode_request(body, size)["inputs"][0]
    assert inp["shape"] == [2, 2] and inp["parameters"] == {"content_type": "base64"}
    assert [base64.b64decode(v) for v in inp["data"]] == [b"", "héllo wörld".encode(), b"\xe2\x82\xac",
                                                          b"RIFF\x00\xff\xfe"]
    tensor_in = RequestInput.model_validate(inp)
    assert raw_data(tensor_in) == [b"", "héllo wörld".encode(), "€".encode(), b"RIFF\x00\xff\xfe"]
    assert decode_array(tensor_in)[0].tolist() == ["", "héllo wörld"]


def test_decode_bf16_widens_exactly_to_float32():
    arr = np.array([1.0, -3.140625, 1e-38, np.inf, 65280.0, 0.0078125], dtype=ml_dtypes.bfloat16)
    body, size = body_of([tensor("h", arr, "BF16")])
    data = decode_request(body, size)["inputs"][0]["data"]
    truncated = (arr.view("<u2").astype("<u4") << 16).view("<f4")
    assert data == truncated.tolist() == arr.astype(np.float32).tolist()


@pytest.mark.parametrize("datatype,arr", [("FP32", np.zeros((0, 3), np.float32)), ("BYTES", np.empty(0, object))])
def test_decode_empty_tensors(datatype, arr):
    body, size = body_of([tensor("e", arr, datatype)])
    assert decode_request(body, size)["inputs"][0]["data"] == []


def test_decode_mixed_binary_and_json_inputs_in_order():
    a, b, c = np.arange(6, dtype=np.int32).reshape(2, 3), np.array([1.5, 2.5]), np.array(["p", "q"], dtype=object)
    inputs = [tensor("a", a, "INT32"), tensor("b", b, "FP64", binary=False), tensor("c", c, "BYTES"),
              tensor("d", b, "FP64")]
    body, size = body_of(inputs, [InferRequestedOutput("y")])
    request = decode_request(body, size)
    assert [i["data"] for i in request["inputs"]] == [[0, 1, 2, 3, 4, 5], [1.5, 2.5], ["cA==", "cQ=="], [1.5, 2.5]]
    assert [i.get("parameters") for i in request["inputs"]] == [None, None, {"content_type": "base64"}, None]
    assert request["outputs"] == [{"name": "y", "parameters": {"binary_data": True}}]


def test_decode_keeps_other_parameters_and_json_only_bodies():
    body, size = raw_body([{"name": "x", "shape": [1], "datatype": "INT8",
                            "parameters": {"binary_data_size": 1, "content_type": "np"}}], b"\xff")
    assert decode_request(body, size)["inputs"][0] == {"name": "x", "shape": [1], "datatype": "INT8", "data": [-1],
                                                       "parameters": {"content_type": "np"}}
    body, size = body_of([tensor("j", np.array([1, 2], np.int64), "INT64", binary=False)])
    assert size is None and decode_request(body, size)["inputs"][0]["data"] == [1, 2]


def test_decode_non_ascii_name_header_length_counts_bytes():
    # tritonclient measures len() of the str rapidjson gives; that is the byte count only because it escapes
    body, size = body_of([tensor("größe", np.array([7], np.uint8), "UINT8")])
    assert decode_request(body, size)["inputs"][0]["name"] == "größe"


def test_decoded_request_is_a_valid_mlserver_request():
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest

    arr = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    body, size = body_of([tensor("x", arr, "FP32")])
    request = InferenceRequest.model_validate(decode_request(body, size))
    assert np.array_equal(NumpyCodec.decode_input(request.inputs[0]), arr)


def test_decode_and_encode_are_fast():
    arr = np.random.default_rng(0).random((1, 100_000), dtype=np.float32)
    body, size = body_of([tensor("x", arr, "FP32")])
    response = {"outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 100_000], "data": arr.ravel().tolist()}]}
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        encode_json(decode_request(body, size))
        encode_response(response, {"y"})
        best = min(best, time.perf_counter() - start)
    assert best < 0.05, f"{best * 1000:.1f} ms"


def test_binary_outputs_per_output_flag_wins():
    request = decode_request(*body_of([tensor("x", np.ones(1, np.float32), "FP32")],
                                      [InferRequestedOutput("y"), InferRequestedOutput("z", binary_data=False)]))
    assert binary_outputs(request, ["y", "z", "w"]) == {"y"}  # w: not requested, no binary_data_output
    shm = InferRequestedOutput("y")
    shm.set_shared_memory("region", 16)  # tritonclient turns binary_data off for shared memory
    assert binary_outputs(decode_request(*body_of([], [shm])), ["y"]) == set()


def test_binary_outputs_default_when_none_requested():
    request = decode_request(*body_of([tensor("x", np.ones(1, np.float32), "FP32")]))
    assert request["parameters"] == {"binary_data_output": True}
    assert binary_outputs(request, ["y", "z"]) == {"y", "z"}
    request["outputs"] = [{"name": "z", "parameters": {"binary_data": False}}, {"name": "y"}]
    assert binary_outputs(request, ["y", "z"]) == {"y"}
    assert binary_outputs({"inputs": []}, ["y"]) == set()


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_encode_response_every_datatype_through_infer_result(datatype):
    arr = NUMERIC[datatype]
    out = {"name": "y", "datatype": datatype, "shape": list(arr.shape), "data": arr.tolist(),  # nested lists
           "parameters": {"content_type": "np"}}
    result, header_length = result_of({"model_name": "m", "outputs": [out]}, {"y"})
    got = result.as_numpy("y")
    assert header_length is not None and got.dtype == arr.dtype and got.shape == arr.shape
    assert got.tobytes() == arr.tobytes()
    assert result.get_output("y")["parameters"] == {"content_type": "np", "binary_data_size": arr.nbytes}
    assert "data" not in result.get_output("y") and "data" in out  # the caller's dict is untouched


def test_encode_response_bytes_and_mixed_json_outputs():
    response = {"outputs": [
        {"name": "s", "datatype": "BYTES", "shape": [2, 2], "data": ["", "héllo", "日本", "x"]},
        {"name": "j", "datatype": "INT64", "shape": [2], "data": [3, 4]},
        {"name": "f", "datatype": "FP32", "shape": [3], "data": [0.5, None, 2.0]},  # null: MLServer's NaN
    ]}
    result, _ = result_of(response, {"s", "f", "absent"})
    assert result.as_numpy("s").tolist() == [[b"", "héllo".encode()], ["日本".encode(), b"x"]]
    assert result.get_output("j") == response["outputs"][1] and result.as_numpy("j").tolist() == [3, 4]
    f = result.as_numpy("f")
    assert f.dtype == np.float32 and f[0] == 0.5 and np.isnan(f[1]) and f[2] == 2.0


def test_encode_response_bf16_rounds_like_ml_dtypes():
    values = [1.0, 1.00390625, 1.01171875, -3.1415927, 3.4e38, -np.inf, np.nan, 1e-40, 0.1]
    result, _ = result_of({"outputs": [{"name": "h", "datatype": "BF16", "shape": [9], "data": values}]}, {"h"})
    got = result.as_numpy("h")
    assert got.dtype == ml_dtypes.bfloat16
    assert got.view("<u2").tolist() == np.array(values, np.float32).astype(ml_dtypes.bfloat16).view("<u2").tolist()


def test_encode_response_bf16_keeps_every_nan_a_nan():
    # rounding alone would turn these payloads into inf and -0.0
    nans = np.array([0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000], dtype="<u4").view("<f4")
    result, _ = result_of({"outputs": [{"name": "h", "datatype": "BF16", "shape": [4], "data": nans}]}, {"h"})
    assert np.isnan(result.as_numpy("h").astype(np.float32)).all()


def test_encode_response_without_binary_is_plain_json():
    response = {"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.5]}]}
    for binary in (set(), {"other"}):
        body, header_length = encode_response(response, binary)
        assert header_length is None and body == encode_json(response)
    result, _ = result_of(response, set())
    assert result.as_numpy("y").tolist() == [1.5]


def test_round_trip_client_request_to_client_result():
    arr = np.arange(-3, 3, dtype=np.int16).reshape(2, 3)
    request = decode_request(*body_of([tensor("x", arr, "INT16")]))
    x = request["inputs"][0]
    response = {"outputs": [{"name": "y", "datatype": x["datatype"], "shape": x["shape"],
                             "data": [v * 2 for v in x["data"]]}, {"name": "e", "datatype": "UINT8", "shape": [0],
                                                                   "data": []}]}
    result, _ = result_of(response, binary_outputs(request, ["y", "e"]))
    assert np.array_equal(result.as_numpy("y"), arr * 2) and result.as_numpy("y").dtype == np.int16
    assert result.as_numpy("e").shape == (0,) and result.get_output("e")["parameters"]["binary_data_size"] == 0


def _client_body(arr, datatype, outputs=None):
    return body_of([tensor("x", arr, datatype)], outputs)


def _bad_bodies():
    body, size = _client_body(np.ones((2, 2), np.float32), "FP32")
    fp32 = {"name": "x", "shape": [2, 2], "datatype": "FP32"}
    yield "truncated body", body[:-1], size, "input 'x' of datatype FP32 has binary_data_size 16 but the body ended"
    yield "header beyond body", body, len(body) + 10, f"is beyond the body's {len(body)} bytes"
    yield "negative header length", body, "-3", "header length '-3' is not a non-negative integer"
    yield "text header length", body, "12a", "header length '12a' is not a non-negative integer"
    yield "float header length", body, 1.5, "header length 1.5 is not a non-negative integer"
    yield "leftover bytes", body + b"\0\0\0\0", size, "the body holds 4 bytes after the binary inputs' 16"
    yield "size mismatch", *raw_body([{**fp32, "parameters": {"binary_data_size": 12}}], b"\0" * 12), \
        "input 'x': binary_data_size 12 does not fit FP32 shape [2, 2] (16 bytes)"
    yield "size not int", *raw_body([{**fp32, "parameters": {"binary_data_size": "16"}}], b"\0" * 16), \
        "binary_data_size '16' is not a non-negative integer"
    yield "size negative", *raw_body([{**fp32, "parameters": {"binary_data_size": -1}}]), \
        "binary_data_size -1 is not a non-negative integer"
    yield "bad shape", *raw_body([{**fp32, "shape": [2, -2], "parameters": {"binary_data_size": 0}}]), \
        "shape [2, -2] is not a list of non-negative integers"
    yield "data and binary", *raw_body([{**fp32, "data": [1], "parameters": {"binary_data_size": 16}}], b"\0" * 16), \
        "input 'x' has both data and binary_data_size"
    yield "unknown datatype", *raw_body([{**fp32, "datatype": "FP8", "parameters": {"binary_data_size": 4}}],
                                        b"1234"), \
        "input 'x': unknown datatype 'FP8'"
    b = {"name": "b", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}
    yield "bool byte", *raw_body([b], b"\x01\x02"), "input 'b': a BOOL byte is neither 0 nor 1"
    s = {"name": "s", "shape": [1], "datatype": "BYTES"}
    yield "bytes length past buffer", *raw_body([{**s, "parameters": {"binary_data_size": 7}}],
                                                struct.pack("<I", 100) + b"abc"), \
        "input 's': BYTES element 0 claims 100 bytes but 3 remain"
    yield "bytes truncated length", *raw_body([{**s, "shape": [2], "parameters": {"binary_data_size": 7}}],
                                              struct.pack("<I", 1) + b"a\x01\x00"), \
        "BYTES element 1 has a truncated length (2 of 4 bytes)"
    yield "bytes count", *raw_body([{**s, "parameters": {"binary_data_size": 8}}], struct.pack("<II", 0, 0)), \
        "BYTES data holds 2 elements, shape [1] needs 1"
    yield "bad json", b"{not json", 9, "the JSON header is not valid JSON: "
    yield "bad utf-8 json", b'{"a": "\xff"}', 10, "the JSON header is not valid JSON: "
    yield "json not an object", b"[1, 2]", 6, "the JSON header is a list, not an object"
    yield "inputs not a list", b'{"inputs": {}}', 14, "the JSON header's 'inputs' is not a list"


BAD = list(_bad_bodies())


@pytest.mark.parametrize("body,header_length,needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_requests_name_the_problem(body, header_length, needle):
    with pytest.raises(BinaryError) as info:
        decode_request(body, header_length)
    message = str(info.value)
    assert needle in message and "\n" not in message and isinstance(info.value, ValueError)


@pytest.mark.parametrize("out,needle", [
    ({"datatype": "FP8", "shape": [1], "data": [1]}, "output 'y': unknown datatype 'FP8'"),
    ({"datatype": "FP32", "shape": [3], "data": [1, 2]}, "output 'y': data holds 2 elements, shape [3] needs 3"),
    ({"datatype": "INT32", "shape": [1], "data": [None]}, "output 'y': data does not fit INT32"),
    ({"datatype": "UINT8", "shape": [1], "data": [300]}, "output 'y': data does not fit UINT8"),
    ({"datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}, "output 'y': data does not fit FP32"),
    ({"datatype": "BYTES", "shape": [1], "data": [7]}, "output 'y': BYTES element 7 is not str or bytes"),
    ({"datatype": "BYTES", "shape": "1", "data": ["a"]}, "output 'y': shape '1' is not a list"),
])
def test_malformed_responses_name_the_problem(out, needle):
    with pytest.raises(BinaryError) as info:
        encode_response({"outputs": [{"name": "y", **out}]}, {"y"})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_raw_mode_keeps_each_binary_inputs_bytes_and_json_values_gives_the_json_data():
    """decode_request(..., raw): the bytes the model's codec reads (no Python list built); json_values: the
    same values as the JSON mode gives, for a model that is not ours."""
    x, s = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([b"ok", b"\xff\x00"], dtype=object)
    inputs = [tensor("x", x, "FP32"), tensor("j", np.array([1, 2], np.int64), "INT64", binary=False),
              tensor("s", s, "BYTES")]
    body, size = body_of(inputs)
    raws = {}
    request = decode_request(body, size, raws)
    assert set(raws) == {0, 2} and raws[0] == x.tobytes() and raws[2] == [b"ok", b"\xff\x00"]
    assert [i["data"] for i in request["inputs"]] == [[], [1, 2], []]
    plain = decode_request(*body_of(inputs))
    assert binary_tensors.json_values("FP32", raws[0]) == plain["inputs"][0]["data"]
    assert binary_tensors.json_values("BYTES", raws[2]) == plain["inputs"][2]["data"]
