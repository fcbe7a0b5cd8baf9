"""ModelHub's request shapes and answers on /v2/models/{name}/infer, behind a real mlserver (both modes).

The models are pyfuncs written as for ModelHub (tests/support/mlflow_models.py): "modelhub-describe" answers
which DataFrame it was handed (its columns, rows, the type of each column's first value), so each test checks
the frame against the one ModelHub's ``InputTransformer.transform`` builds (autonomize-model-sdk 1.1.73,
modelhub/serving/inference_types.py; the branch is named in each case), and the answer against its
``OutputTransformer``'s envelope.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re

import pytest
import requests

ONE_LINE = re.compile(r"^[^\n]+$")


def png(size=(24, 16), color=(200, 30, 30)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def pdf(pages: int = 2) -> bytes:
    from PIL import Image

    imgs = [Image.new("RGB", (60, 80), (i * 60, 100, 100)) for i in range(pages)]
    out = io.BytesIO()
    imgs[0].save(out, format="PDF", save_all=True, append_images=imgs[1:])
    return out.getvalue()


def hub(server, model: str, body=None, data=None, headers=None, params=None) -> requests.Response:
    return requests.post(f"{server.url}/v2/models/{model}/infer", json=body, data=data, headers=headers,
                         params=params, timeout=60)


def described(r: requests.Response) -> dict:
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"status", "data", "error", "metadata"} and answer["status"] == 200, answer
    assert answer["error"] is None
    return answer


def assert_hub_error(r: requests.Response, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"status", "data", "error", "detail"}, body
    assert body["status"] == status and body["data"] is None and body["error"] == body["detail"]
    assert ONE_LINE.match(body["error"]) and "Traceback" not in r.text, body
    for w in words:
        assert w in body["error"], body
    return body["error"]


PNG = png()
PDF = pdf()
PNG_B64 = base64.b64encode(png((64, 64))).decode()  # over 100 characters: detected by its prefix
PDF_B64 = base64.b64encode(PDF).decode()

# body -> (inference type, frame columns, rows, {column: type of its first value}); ModelHub's branch in comments
SHAPES = [
    ({"text": "hello"}, "text", ["text"], 1, {"text": "str"}),  # detect_type: "text"; TEXT: {"text": [text]}
    ({"inputs": {"data": "hello"}, "inference_type": "text"}, "text", ["text"], 1, {"text": "str"}),  # unified form
    ({"data": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]}, "tabular", ["a", "b"], 2,  # list of dicts: TABULAR
     {"a": "int64", "b": "str"}),
    ({"data": {"x": 1}}, "structured", ["data"], 1, {"data": "dict"}),  # a dict: STRUCTURED, DataFrame([data])
    ({"contract_id": "c1", "member_id": "m1", "claim_id": "k1"}, "structured",  # _is_structured_data pattern
     ["contract_id", "member_id", "claim_id"], 1, {"contract_id": "str"}),
    ({"ocr_text_list": ["p one", "p two"], "page_number_list": [1, 2]}, "ocr_text", ["ocr_text", "page_number"], 2,
     {"ocr_text": "str", "page_number": "int64"}),
    ({"image_base64": ["AAAA", "BBBB"]}, "image_base64", ["data"], 2, {"data": "str"}),  # a list: one row each
    ({"images": ["AAAA", "BBBB", "CCCC"]}, "image", ["image"], 3, {"image": "str"}),  # IMAGE: {"image": images}
    ({"image": "AAAA"}, "image", ["image"], 1, {"image": "str"}),
    ({"foo": 1, "bar": "x"}, "raw", ["foo", "bar"], 1, {"foo": "int64", "bar": "str"}),  # RAW: DataFrame([data])
    ({"data": 42}, "raw", ["data"], 1, {"data": "int64"}),  # "data" of another kind: RAW
    ({"data": PNG_B64}, "image_base64", ["data"], 1, {"data": "str"}),  # a str starting iVBOR
    ({"inference_type": "auto", "text": "x"}, "text", ["text"], 1, {"text": "str"}),  # ModelHub: auto -> RAW
    ({"byte_stream": "not hex nor base64!"}, "byte_stream", ["data"], 1, {"data": "str"}),  # decode_error
]


@pytest.mark.parametrize("body,kind,columns,rows,types", SHAPES, ids=[f"{s[1]}-{i}" for i, s in enumerate(SHAPES)])
def test_each_json_shape_hands_the_pyfunc_modelhubs_frame(any_server, body, kind, columns, rows, types):
    answer = described(hub(any_server, "modelhub-describe", body))
    data = answer["data"]
    assert answer["metadata"]["inference_type"] == kind, answer
    assert (data["columns"], data["rows"]) == (columns, rows), answer  # no "model_name" column (ModelHub adds one)
    assert {c: data["types"][c] for c in types} == types, answer
    if "decode_error" in json.dumps(answer["metadata"]):
        assert answer["metadata"]["decode_error"].startswith("Failed to decode data as hex or base64"), answer


def test_a_pdf_as_base64_or_hex_becomes_its_pages_as_pngs(any_server):
    answer = described(hub(any_server, "modelhub-describe", {"data": PDF_B64}))  # a str starting JVBER
    assert answer["metadata"] == {"inference_type": "byte_stream", "pdf_processed": True, "num_pages": 2}, answer
    data = answer["data"]
    assert data["columns"] == ["data", "images", "decoded_bytes"] and data["rows"] == 1, data
    assert data["lengths"] == {"data": len(PDF_B64), "images": 2, "decoded_bytes": 2 * len(PDF)}, data
    # the legacy field, hex (genesis-service-inference's encoding), and a page filter (1-based, 9 out of range)
    answer = described(hub(any_server, "modelhub-describe", {"byte_stream": PDF.hex(), "page_numbers": [2, 9]}))
    assert answer["metadata"]["num_pages"] == 1, answer
    assert answer["data"]["columns"] == ["data", "images", "decoded_bytes", "page_numbers"], answer
    # pdf_bytes: ModelHub has the type but no branch (a raw frame of the base64 text); here a byte stream
    answer = described(hub(any_server, "modelhub-describe", {"inputs": {"data": PDF_B64}, "inference_type": "pdf_bytes"}))
    assert answer["metadata"]["inference_type"] == "byte_stream" and answer["metadata"]["num_pages"] == 2


def test_uploads_are_byte_streams_unless_the_query_says_otherwise(any_server):
    octet = {"Content-Type": "application/octet-stream"}
    # a PNG as the body: byte_stream by default, detected as an image, the bytes themselves in "data"
    answer = described(hub(any_server, "modelhub-describe", data=PNG, headers=octet))
    assert answer["metadata"] == {"inference_type": "byte_stream", "pdf_processed": False,
                                  "detected_as_image": True}, answer
    assert answer["data"]["types"] == {"data": "bytes"} and answer["data"]["lengths"] == {"data": len(PNG)}
    # ?inference_type=image_base64: re-encoded as a base64 PNG, also in processed_images
    answer = described(hub(any_server, "modelhub-describe", data=PNG, headers=octet,
                           params={"inference_type": "image_base64"}))
    assert answer["metadata"] == {"inference_type": "image_base64", "num_images": 1, "images_processed": True}
    assert answer["data"]["columns"] == ["data", "processed_images"] and answer["data"]["types"]["data"] == "str"
    # ?inference_type=image: ModelHub hands the model an empty frame; here the image, as base64 text
    answer = described(hub(any_server, "modelhub-describe", data=PNG, headers={"Content-Type": "image/png"},
                           params={"inference_type": "image"}))
    assert answer["data"]["columns"] == ["image"] and answer["data"]["lengths"] == {"image": len(
        base64.b64encode(PNG))}, answer
    # ?inference_type=auto: detected by magic bytes
    answer = described(hub(any_server, "modelhub-describe", data=PNG, headers=octet, params={"inference_type": "auto"}))
    assert answer["metadata"]["inference_type"] == "image_base64", answer
    # a PDF: its pages; other bytes: the data with its hex
    answer = described(hub(any_server, "modelhub-describe", data=PDF,
                           headers={"Content-Type": "application/octet-stream; charset=binary"}))
    assert answer["metadata"] == {"inference_type": "byte_stream", "pdf_processed": True, "num_pages": 2}, answer
    answer = described(hub(any_server, "modelhub-describe", data=b"\x00\x01plain bytes", headers=octet))
    assert answer["metadata"] == {"inference_type": "byte_stream", "pdf_processed": False}, answer
    assert answer["data"]["columns"] == ["data", "decoded_bytes"], answer


def test_a_compressed_modelhub_body_is_read(any_server):
    r = hub(any_server, "modelhub-describe", data=gzip.compress(json.dumps({"text": "zipped"}).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert described(r)["data"]["columns"] == ["text"]


def test_parameters_reach_a_model_with_a_params_schema_and_are_reported_otherwise(any_server):
    # mlflow-params: columns a, b and params scale, mode (ModelHub drops parameters)
    r = hub(any_server, "mlflow-params", {"data": [{"a": 1.0, "b": 2.0}], "parameters": {"scale": 2.0}})
    assert described(r)["data"] == {"total": 6.0, "label": "sum"}, r.text
    r = hub(any_server, "mlflow-params", {"data": [{"a": 1.0, "b": 2.0}, {"a": 2.0, "b": 2.0}],
                                          "parameters": {"mode": "product"}})
    assert described(r)["data"] == {"total": [2.0, 4.0], "label": ["product", "product"]}, r.text  # rows: lists
    answer = described(hub(any_server, "modelhub-describe", {"foo": 1, "parameters": {"k": 1}}))
    assert answer["data"]["params"] is None and answer["data"]["columns"] == ["foo"], answer  # not a column
    assert answer["metadata"]["parameters"] == {"k": 1}, answer
    assert_hub_error(hub(any_server, "mlflow-params", {"data": [{"a": 1.0, "b": 2.0}], "parameters": {"nope": 1}}),
                     400, "unknown parameter 'nope'")


def test_embeddings_answer_modelhubs_bare_prediction(any_server):
    r = hub(any_server, "modelhub-embedder", {"texts": ["a b", "ccc"]})
    assert r.status_code == 200 and r.json() == {"prediction": [[3.0, 2.0], [3.0, 1.0]]}, r.text


@pytest.mark.parametrize("body,data,headers,params,status,words", [
    ({"inference_type": "bogus", "text": "x"}, None, None, None, 400, ["'bogus'", "image_base64"]),
    ({"inputs": {"text": "x"}, "inference_type": 3}, None, None, None, 400, ["inference_type 3"]),
    ({"ocr_text_list": ["a"], "page_number_list": [1, 2]}, None, None, None, 400, ["page_number_list"]),
    ({"images": []}, None, None, None, 400, ["no data"]),
    ({"data": "x", "page_numbers": "1"}, None, None, {"inference_type": "byte_stream"}, 400, ["page_numbers"]),
    (None, b"\x00\x01 not an image", {"Content-Type": "application/octet-stream"},
     {"inference_type": "image_base64"}, 400, ["not an image"]),
    (None, b"%PDF-1.4 broken", {"Content-Type": "application/octet-stream"}, None, 400, ["PDF cannot be read"]),
    (None, b"--x\r\nContent-Disposition: form-data\r\n\r\nhi\r\n--x--", {"Content-Type": "multipart/form-data; "
                                                                          "boundary=x"}, None, 415, ["form"]),
])
def test_bad_modelhub_requests_are_a_one_line_error_in_its_shape(any_server, body, data, headers, params, status,
                                                                 words):
    assert_hub_error(hub(any_server, "modelhub-describe", body, data, headers, params), status, *words)
    assert described(hub(any_server, "modelhub-describe", {"text": "still serving"}))["data"]["rows"] == 1


def test_model_errors_keep_their_status_in_modelhubs_shape(any_server):
    assert_hub_error(hub(any_server, "no-such-model", {"text": "x"}), 404, "no-such-model")
    # the model's signature refuses the frame: a 400 naming it (ModelHub: 400 "400: ..." text)
    assert_hub_error(hub(any_server, "mlflow-params", {"data": [{"zzz": 1.0}]}), 400, "rejected the input")
    assert_hub_error(hub(any_server, "modelhub-batched", {"text": "x"}), 400, "max_batch_size 4", "V2")
    # a model of another kind answers MLServer's own message for a body that is not V2
    r = hub(any_server, "iris", {"text": "x"})
    assert r.status_code == 400 and set(r.json()) == {"error"} and "no 'inputs'" in r.json()["error"], r.text


def test_v2_requests_are_unchanged_and_a_signatureless_pyfunc_may_get_frames(any_server):
    # mlflow-nosig-frame echoes what it gets: with signatureless_input "dataframe" a numeric [2, 3] tensor is
    # ModelHub's pd.DataFrame(array) (columns 0, 1, 2), a BYTES tensor the column "data"
    r = any_server.infer("mlflow-nosig-frame", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                                                            "data": [1, 2, 3, 4, 5, 6]}]})
    assert r.status_code == 200, r.text
    assert {o["name"]: o["data"] for o in r.json()["outputs"]} == {"0": [1, 4], "1": [2, 5], "2": [3, 6]}
    r = any_server.infer("mlflow-nosig-frame", {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2],
                                                            "data": ["u", "v"]}]})
    assert r.status_code == 200 and [o["name"] for o in r.json()["outputs"]] == ["data"], r.text
    # the describe pyfunc, without the option, fails on V2's ndarray as in ModelHub's users' reports; the
    # ModelHub shapes on the same route and the same model work
    r = any_server.infer("modelhub-describe", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                                                           "data": [1, 2]}]})
    assert r.status_code >= 400 and "columns" in r.json()["error"], r.text
    assert described(hub(any_server, "modelhub-describe", {"text": "x"}))["data"]["columns"] == ["text"]
