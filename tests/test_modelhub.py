"""codecs/modelhub.py on its own: ModelHub's detection order, the DataFrames it builds and its answer envelope
(autonomize-model-sdk 1.1.73, modelhub/serving/inference_types.py: InferenceDetector.detect_type,
InputTransformer.transform, OutputTransformer.transform), and where we differ on purpose."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pandas as pd
import pytest

from modelserve.codecs import modelhub
from modelserve.errors import BadRequest


def png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format="PNG")
    return out.getvalue()


LONG_PNG = "iVBOR" + "A" * 120
LONG_JPEG = "/9j/" + "A" * 120
LONG_PDF = "JVBER" + "A" * 120


@pytest.mark.parametrize("data,kind", [
    ({"inference_type": "ocr_text", "texts": ["a"]}, "ocr_text"),  # 1. explicit wins over everything
    ({"texts": ["a"], "data": {"x": 1}}, "embedding"),  # 2. texts (a list) before data
    ({"texts": "a", "text": "b"}, "text"),  # texts that is not a list does not count
    ({"data": png()}, "image_base64"),  # 3. bytes by magic
    ({"data": b"%PDF-1.7 ..."}, "byte_stream"),
    ({"data": b"GIF89a......"}, "image_base64"),
    ({"data": b"short"}, "byte_stream"),  # under 8 bytes: never an image
    ({"data": LONG_PNG}, "image_base64"), ({"data": LONG_JPEG}, "image_base64"), ({"data": LONG_PDF}, "byte_stream"),
    ({"data": "iVBOR" + "A" * 10}, "raw"),  # 100 characters or fewer: not looked at
    ({"data": {"a": 1}}, "structured"), ({"data": [{"a": 1}]}, "tabular"), ({"data": [{"a": 1}, 2]}, "raw"),
    ({"data": []}, "raw"), ({"data": None, "text": "t"}, "raw"),  # "data" present decides, whatever follows
    ({"byte_stream": "00", "image_base64": "x"}, "byte_stream"),  # 4-7 in ModelHub's order
    ({"image_base64": "x", "image": "y"}, "image_base64"),
    ({"images": [], "ocr_text_list": []}, "image"),
    ({"ocr_text_list": [], "text": "x"}, "ocr_text"),
    ({"source_text": "a", "text_to_be_cited": "b", "text": "c"}, "structured"),  # 8. patterns before text
    ({"contract_id": 1, "member_id": 2}, "raw"),  # an incomplete pattern
    ({"text": "x", "other": 1}, "text"), ({"anything": 1}, "raw"), ({}, "raw"),
    ({"inference_type": "AUTO", "text": "x"}, "text"),  # ModelHub: auto becomes raw; here it detects
])
def test_detection_follows_modelhubs_order(data, kind):
    assert modelhub.detect(data) == kind


def test_the_unified_and_legacy_forms_and_uploads():
    assert modelhub.parse({"inputs": {"text": "x"}, "inference_type": "raw"}, False, None) == ({"text": "x"}, "raw")
    assert modelhub.parse({"inputs": {"text": "x"}}, False, None) == ({"text": "x"}, "text")
    assert modelhub.parse({"text": "x"}, False, "structured") == ({"text": "x"}, "structured")  # ?inference_type=
    assert modelhub.parse(b"raw", True, None) == ({"data": b"raw"}, "byte_stream")  # server.py's default
    assert modelhub.parse(png(), True, "auto")[1] == "image_base64"
    with pytest.raises(BadRequest, match="'inputs' must be a JSON object"):
        modelhub.parse({"inputs": "x"}, False, None)
    with pytest.raises(BadRequest, match="not one of ModelHub's inference types"):
        modelhub.parse({"inputs": {}, "inference_type": "video"}, False, None)


def frame(data, kind=None):
    return modelhub.to_frame(data, kind or modelhub.detect(data))


def test_text_frames():
    assert frame({"text": "hi"})[0].to_dict("list") == {"text": ["hi"]}
    assert frame({"data": "hi"}, "text")[0].to_dict("list") == {"text": ["hi"]}  # "data" first
    # neither: the whole dict as text (ModelHub: str(data))
    assert frame({"q": 1}, "text")[0].to_dict("list") == {"text": [str({"q": 1})]}


def test_byte_stream_frames():
    raw = png()
    df, meta = frame({"data": raw.hex()}, "byte_stream")  # hex first (genesis-service-inference)
    assert list(df.columns) == ["data"] and df["data"][0] == raw.hex()
    assert meta == {"inference_type": "byte_stream", "pdf_processed": False, "detected_as_image": True}
    df, meta = frame({"byte_stream": base64.b64encode(b"\x01\x02plain").decode(), "page_numbers": [1]})
    assert list(df.columns) == ["data", "decoded_bytes", "page_numbers"] and df["decoded_bytes"][0] == "0102" + \
        b"plain".hex()
    assert meta == {"inference_type": "byte_stream", "pdf_processed": False}
    df, meta = frame({"data": 12}, "byte_stream")  # cannot be decoded: passed on with the reason
    assert df.to_dict("list") == {"data": [12]} and "Unsupported data type" in meta["decode_error"]
    with pytest.raises(BadRequest, match="needs 'data'"):
        frame({"other": 1}, "byte_stream")


def test_pdf_pages_and_page_numbers():
    from PIL import Image

    pages = [Image.new("RGB", (40, 30), (i * 80, 0, 0)) for i in range(3)]
    out = io.BytesIO()
    pages[0].save(out, format="PDF", save_all=True, append_images=pages[1:])
    raw = out.getvalue()
    df, meta = frame({"data": base64.b64encode(raw).decode(), "page_numbers": [3, 1, 7]}, "byte_stream")
    assert meta == {"inference_type": "byte_stream", "pdf_processed": True, "num_pages": 2}
    assert list(df.columns) == ["data", "images", "decoded_bytes", "page_numbers"]
    first = Image.open(io.BytesIO(base64.b64decode(df["images"][0][0])))
    assert first.format == "PNG" and first.getpixel((first.width // 2, first.height // 2))[0] > 100  # page 3: red
    assert df["decoded_bytes"][0] == raw.hex()
    with pytest.raises(BadRequest, match="PDF cannot be read"):
        frame({"data": b"%PDF-1.4 nothing else"}, "byte_stream")


def test_image_frames():
    raw = png()
    df, meta = frame({"data": raw}, "image_base64")  # an upload: re-encoded as a PNG's base64
    assert list(df.columns) == ["data", "processed_images"] and df["processed_images"][0] == [df["data"][0]]
    assert base64.b64decode(df["data"][0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert meta == {"inference_type": "image_base64", "num_images": 1, "images_processed": True}
    df, meta = frame({"image_base64": ["a", "b"]})
    assert df.to_dict("list") == {"data": ["a", "b"]} and meta["num_images"] == 2
    assert frame({"image": "x"})[0].to_dict("list") == {"image": ["x"]}
    assert frame({"images": ["x", "y"]})[0].to_dict("list") == {"image": ["x", "y"]}
    # an upload with ?inference_type=image (ModelHub: an empty frame): the image as base64 text
    assert frame({"data": raw}, "image")[0].to_dict("list") == {"image": [base64.b64encode(raw).decode()]}
    with pytest.raises(BadRequest, match="not an image"):
        frame({"data": b"\x00" * 20}, "image_base64")
    with pytest.raises(BadRequest, match="no data"):
        frame({"images": []})


def test_ocr_tabular_embedding_structured_and_raw_frames():
    df, _ = frame({"ocr_text_list": ["a", "b"], "page_number_list": [1, 2]})
    assert df.to_dict("list") == {"ocr_text": ["a", "b"], "page_number": [1, 2]}
    with pytest.raises(BadRequest, match="has 1 entries for 2"):
        frame({"ocr_text_list": ["a", "b"], "page_number_list": [1]})
    assert frame({"data": [{"a": 1}, {"a": 2, "b": 3}]})[0].shape == (2, 2)
    df, meta = frame({"texts": ["a", "b"], "model_name": "m"})
    assert df["texts"].tolist() == [["a", "b"]] and meta == {"inference_type": "embedding", "model_name": "m"}
    df, _ = frame({"data": {"x": 1}, "other": 2, "parameters": {"p": 1}, "inference_type": "structured"})
    assert df.to_dict("list") == {"data": [{"x": 1}], "other": [2]}  # ModelHub's own fields are not columns
    multimodal = [{"type": "text", "text": "one"}, {"type": "image_url"}, {"type": "text", "text": "two"}]
    df, _ = frame({"source_text": "s", "text_to_be_cited": "c", "text": multimodal})
    assert df["text"][0] == "one two"
    df, meta = frame({"a": 1, "parameters": {"p": 2}})
    assert df.to_dict("list") == {"a": [1]} and meta == {"inference_type": "raw", "parameters": {"p": 2}}
    with pytest.raises(BadRequest, match="no data"):
        frame({})


def env(result, kind="raw"):
    return modelhub.envelope(result, {"inference_type": kind})


def test_the_envelope_follows_modelhubs_rules():
    one = env(pd.DataFrame({"f": [1.5], "i": [np.int64(2)], "b": [True], "j": ['{"k": [1]}'], "s": ["plain"]}))
    assert one == {"status": 200, "data": {"f": 1.5, "i": 2, "b": True, "j": {"k": [1]}, "s": "plain"},
                   "error": None, "metadata": {"inference_type": "raw"}}
    many = env(pd.DataFrame({"x": [1, 2], "j": ["[1]", "no json"]}))["data"]
    assert many == {"x": [1, 2], "j": [[1], "no json"]}
    assert env({"body": np.arange(3)})["data"] == [0, 1, 2] and env({"a": 1})["data"] == {"a": 1}
    assert env([1, 2])["data"] == {"predictions": [1, 2]}
    assert env(np.array([[1.0], [2.0]]))["data"] == {"predictions": [[1.0], [2.0]]}
    assert env(np.float32(0.5))["data"] == {"prediction": 0.5} and env("label")["data"] == {"prediction": "label"}


def test_where_the_envelope_is_right_where_modelhub_fails():
    # NaN (ModelHub writes invalid JSON), bytes and a Series (ModelHub cannot serialize them)
    answer = env(pd.DataFrame({"x": [np.nan], "y": [b"\x00\x01"]}))
    assert answer["data"] == {"x": None, "y": "AAE="}
    json.dumps(answer, allow_nan=False)
    assert env(pd.Series([1, 2]))["data"] == {"predictions": [1, 2]}
    assert env(pd.Timestamp("2026-01-02"))["data"] == {"prediction": "2026-01-02T00:00:00"}
    with pytest.raises(modelhub.Unwritable, match="object"):
        env(object())


def test_embeddings_are_bare_predictions():
    assert env(pd.DataFrame({"other": [1], "embedding": ["[[0.5, 1.0]]"]}), "embedding") == {
        "prediction": [[0.5, 1.0]]}
    assert env(pd.DataFrame({"vectors": [[1, 2]]}), "embedding") == {"prediction": [1, 2]}  # the first column
    assert env({"data": {"embeddings": [[1]]}}, "embedding") == {"prediction": [[1]]}
    assert env([1, 2], "embedding")["data"] == {"predictions": [1, 2]}  # nothing where ModelHub looks: enveloped
