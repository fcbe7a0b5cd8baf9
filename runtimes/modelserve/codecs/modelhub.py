"""ModelHub's request shapes and answers, for MLflow pyfuncs written for ModelHub (autonomize-model-sdk 1.1.73,
``modelhub/serving/inference_types.py`` and ``base.py``; docs/runtimes/mlflow.md, "ModelHub's request shapes").

A ModelHub request is JSON detected by its keys (``detect``), turned into the DataFrame ModelHub's
``InputTransformer`` hands the pyfunc (``to_frame``), and answered in ModelHub's envelope (``envelope``). Where
ModelHub is plainly broken the shape stays its own and the substance is fixed; each point is marked "ModelHub:"
below and listed in the docs.

Imported by the MLflow runtime only, after pandas; PIL and pypdfium2 (the mlflow extra) are imported when an
image or a PDF arrives.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from io import BytesIO
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import BadRequest, one_line

logger = logging.getLogger("mlserver.modelserve.mlflow")

TUNNEL_INPUT = "modelhub"
"""The one BYTES input of the V2 request that carries a ModelHub body from the front door to the model."""
JSON_BODY = "modelhub/json"
UPLOAD_BODY = "modelhub/upload"
"""The tunnel input's ``content_type``: a JSON body, or a file uploaded as the body."""

TYPES = ("auto", "text", "image", "image_base64", "pdf_bytes", "byte_stream", "ocr_text", "structured", "raw",
         "tabular", "embedding")
"""ModelHub's ``InferenceType`` values."""

STRUCTURED_PATTERNS = (
    {"hcpcs_code", "rate", "start_date", "end_date"},
    {"contract_id", "member_id", "claim_id"},
    {"patient_id", "provider_id", "diagnosis_code"},
    {"source_text", "text_to_be_cited"},
    {"document_uuid", "collection_name", "requested_medication"},
)
"""``InferenceDetector._is_structured_data``: key sets that make a body ``structured``."""

EMBEDDING_KEYS = ("embeddings", "embedding", "prediction", "predictions")
OWN_KEYS = ("parameters", "inference_type")
"""Request fields that are ModelHub's own, not the model's data (kept out of raw and structured frames)."""
PDF_DPI = 200  # pdf2image's default, which ModelHub uses


def _image_kind(raw: bytes) -> bool:
    """``InferenceDetector._detect_binary_content_type``: PNG, JPEG, GIF, BMP or TIFF by magic bytes (8 or more)."""
    if len(raw) < 8:
        return False
    return (raw[:8] == b"\x89PNG\r\n\x1a\n" or raw[:3] == b"\xff\xd8\xff" or raw[:6] in (b"GIF87a", b"GIF89a")
            or raw[:2] == b"BM" or raw[:4] in (b"II*\x00", b"MM\x00*"))


def binary_type(raw: bytes) -> str:
    return "image_base64" if _image_kind(raw) else "byte_stream"


def _check_type(value: Any, where: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in TYPES:
        raise BadRequest(f"{where} {value!r} is not one of ModelHub's inference types: {', '.join(TYPES)}")
    return value.strip().lower()


def detect(data: Mapping[str, Any]) -> str:
    """``InferenceDetector.detect_type``, in its order."""
    if "inference_type" in data:
        given = _check_type(data["inference_type"], "inference_type")
        if given != "auto":  # ModelHub: an explicit "auto" becomes raw; here it means "detect"
            return given
        data = {k: v for k, v in data.items() if k != "inference_type"}
    if isinstance(data.get("texts"), list):
        return "embedding"
    if "data" in data:
        content = data["data"]
        if isinstance(content, (bytes, bytearray)):
            return binary_type(bytes(content))
        if isinstance(content, str) and len(content) > 100:
            if content.startswith(("iVBOR", "/9j/")):
                return "image_base64"
            if content.startswith("JVBER"):
                return "byte_stream"
        if isinstance(content, dict):
            return "structured"
        if isinstance(content, list) and content and all(isinstance(item, dict) for item in content):
            return "tabular"
        return "raw"
    if "byte_stream" in data:
        return "byte_stream"
    if "image_base64" in data:
        return "image_base64"
    if "image" in data or "images" in data:
        return "image"
    if "ocr_text_list" in data:
        return "ocr_text"
    keys = set(data)
    if any(pattern <= keys for pattern in STRUCTURED_PATTERNS):
        return "structured"
    if "text" in data:
        return "text"
    return "raw"


def parse(body: Any, upload: bool, query_type: Optional[str]) -> Tuple[Dict[str, Any], str]:
    """The request's inputs and its inference type. ``body``: the JSON value, or the uploaded bytes."""
    if upload:  # server.py: {"inputs": {"data": raw}, "inference_type": ?inference_type or "byte_stream"}
        inputs: Dict[str, Any] = {"data": body}
        given = query_type if query_type is not None else "byte_stream"
    else:
        if not isinstance(body, dict):
            raise BadRequest(f"a ModelHub request is a JSON object, got {type(body).__name__}")
        if "inputs" in body:  # parse_unified_request: {"inputs": {...}, "inference_type": ...}
            inputs = body["inputs"]
            if not isinstance(inputs, dict):
                raise BadRequest(f"'inputs' must be a JSON object of ModelHub fields (or a V2 list of tensors), "
                                 f"got {type(inputs).__name__}")
            given = body.get("inference_type", query_type)
        else:  # the legacy form: the whole body is the inputs
            inputs, given = body, query_type
    if given is None:
        return inputs, detect(inputs)
    kind = _check_type(given, "inference_type")
    return inputs, detect(inputs) if kind == "auto" else kind


# -- the DataFrame the pyfunc gets (InputTransformer.transform) ------------------------------------------------
def decode_bytes(content: Any) -> bytes:
    """``InputTransformer.decode_input_data``: bytes as they are; text as hex, else base64."""
    if isinstance(content, (bytes, bytearray)):
        return bytes(content)
    if isinstance(content, str):
        try:
            return bytes.fromhex(content)
        except ValueError:
            try:
                return base64.b64decode(content)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"Failed to decode data as hex or base64: {exc}") from None
    raise ValueError(f"Unsupported data type: {type(content)}")


def _open_image(raw: bytes, what: str):
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow comes with the mlflow extra
        raise BadRequest("images need Pillow on the server (pip install 'modelserve[mlflow]')") from None
    try:
        img = Image.open(BytesIO(raw))
        img.load()
        return img
    except Exception as exc:
        raise BadRequest(f"{what} is not an image Pillow can read ({one_line(exc)})") from None


def png_base64(img) -> str:
    """``InputTransformer.pil_image_to_base64_str``."""
    out = BytesIO()
    img.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("utf-8")


def pdf_pages(raw: bytes, page_numbers: Optional[List[int]]) -> List[str]:
    """The PDF's pages (``page_numbers``: 1-based, out-of-range ones skipped as ModelHub does) as base64 PNGs,
    rendered at pdf2image's 200 dpi by pdfium (ModelHub: poppler through pdf2image, a system binary)."""
    try:
        import pypdfium2 as pdfium
    except ImportError:  # pragma: no cover - pypdfium2 comes with the mlflow extra
        raise BadRequest("PDFs need pypdfium2 on the server (pip install 'modelserve[mlflow]')") from None
    try:
        doc = pdfium.PdfDocument(raw)
    except Exception as exc:
        raise BadRequest(f"the PDF cannot be read ({one_line(exc)})") from None
    try:
        count = len(doc)
        wanted = list(range(1, count + 1))
        if page_numbers:
            wanted = [p for p in page_numbers if isinstance(p, int) and 1 <= p <= count]
            skipped = [p for p in page_numbers if p not in wanted]
            if skipped:
                logger.warning("PDF pages %s out of range (1-%d): skipped", skipped, count)
        return [png_base64(doc[p - 1].render(scale=PDF_DPI / 72).to_pil()) for p in wanted]
    finally:
        doc.close()


def _rows(columns: Dict[str, list]):
    import pandas as pd

    try:
        frame = pd.DataFrame(columns)
    except ValueError as exc:
        raise BadRequest(f"the request's fields do not make a table: {one_line(exc)}") from None
    return frame


def _page_numbers(inputs: Mapping[str, Any]) -> Optional[List[int]]:
    pages = inputs.get("page_numbers")
    if pages is None:
        return None
    if not isinstance(pages, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in pages):
        raise BadRequest(f"'page_numbers' must be a list of page numbers (1-based), got {pages!r}"[:300])
    return pages


def _byte_stream(inputs: Mapping[str, Any], meta: Dict[str, Any]):
    content = inputs.get("data", inputs.get("byte_stream"))
    if content is None:
        raise BadRequest("a byte_stream request needs 'data' (or 'byte_stream'): the file as hex or base64 text, "
                         "or uploaded as the body (Content-Type application/octet-stream)")
    pages = _page_numbers(inputs)
    extra = {"page_numbers": [pages]} if pages else {}
    try:
        raw = decode_bytes(content)
    except ValueError as exc:  # ModelHub hands the model what came, with the reason in the metadata
        meta["decode_error"] = str(exc)
        return _rows({"data": [content.hex() if isinstance(content, bytes) else content], **extra})
    if _image_kind(raw):
        meta.update(pdf_processed=False, detected_as_image=True)
        return _rows({"data": [content], **extra})
    if raw[:4] == b"%PDF":
        images = pdf_pages(raw, pages)
        meta.update(pdf_processed=True, num_pages=len(images))
        return _rows({"data": [content], "images": [images], "decoded_bytes": [raw.hex()], **extra})
    # ModelHub tries pdf2image on any other bytes too and falls back to this when it fails
    meta["pdf_processed"] = False
    return _rows({"data": [content], "decoded_bytes": [raw.hex()], **extra})


def _image_base64(inputs: Mapping[str, Any], meta: Dict[str, Any]):
    content = inputs.get("data", inputs.get("image_base64"))
    if isinstance(content, (bytes, bytearray)):  # an upload
        b64 = png_base64(_open_image(bytes(content), "the upload"))  # ModelHub: a non-image passes as bytes
        meta.update(num_images=1, images_processed=True)
        return _rows({"data": [b64], "processed_images": [[b64]]})
    if content is None:
        raise BadRequest("an image_base64 request needs 'data' (or 'image_base64'): base64 text or a list of it")
    if isinstance(content, list):
        meta.update(num_images=len(content), images_processed=False)
        return _rows({"data": content})
    meta.update(num_images=1, images_processed=False)
    return _rows({"data": [content]})


def _image(inputs: Mapping[str, Any]):
    if "image" in inputs:
        images = [inputs["image"]]
    elif "images" in inputs:
        images = inputs["images"]
        if not isinstance(images, list):
            raise BadRequest(f"'images' must be a list, got {type(images).__name__}")
    elif "data" in inputs:  # ModelHub: an ?inference_type=image upload reaches the model as an empty frame
        data = inputs["data"]
        if isinstance(data, (bytes, bytearray)):
            _open_image(bytes(data), "the upload")
            data = base64.b64encode(bytes(data)).decode("ascii")
        images = data if isinstance(data, list) else [data]
    else:
        raise BadRequest("an image request needs 'image', 'images' or 'data'")
    return _rows({"image": images})


def _ocr_text(inputs: Mapping[str, Any]):
    if "ocr_text_list" not in inputs:
        raise BadRequest("an ocr_text request needs 'ocr_text_list' (and optionally 'page_number_list')")
    texts = inputs["ocr_text_list"]
    columns = {"ocr_text": texts if isinstance(texts, list) else [texts]}
    if "page_number_list" in inputs:
        pages = inputs["page_number_list"]
        pages = pages if isinstance(pages, list) else [pages]
        if len(pages) != len(columns["ocr_text"]):
            raise BadRequest(f"'page_number_list' has {len(pages)} entries for {len(columns['ocr_text'])} "
                             "texts in 'ocr_text_list'")
        columns["page_number"] = pages
    return _rows(columns)


def _record(inputs: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in inputs.items() if k not in OWN_KEYS}


def _structured(inputs: Mapping[str, Any]):
    import pandas as pd

    if "data" in inputs:
        return pd.DataFrame([_record(inputs)])
    row = {}
    for key, value in _record(inputs).items():
        if key == "text" and isinstance(value, list):  # multimodal content: its text parts, joined
            parts = [i.get("text", "") for i in value if isinstance(i, dict) and i.get("type") == "text"]
            row[key] = " ".join(parts) if parts else ""
        else:
            row[key] = value
    return pd.DataFrame([row])


def to_frame(inputs: Mapping[str, Any], kind: str) -> Tuple[Any, Dict[str, Any]]:
    """``InputTransformer.transform``: the DataFrame for inference type ``kind`` and the answer's metadata."""
    import pandas as pd

    if kind == "pdf_bytes":  # ModelHub has the type but no branch for it (it becomes raw): a byte stream
        kind = "byte_stream"
    meta: Dict[str, Any] = {"inference_type": kind}
    if kind == "text":
        if "data" in inputs:
            frame = _rows({"text": [inputs["data"]]})
        elif "text" in inputs:
            frame = _rows({"text": [inputs["text"]]})
        else:
            frame = _rows({"text": [str(dict(inputs))]})
    elif kind == "byte_stream":
        frame = _byte_stream(inputs, meta)
    elif kind == "image_base64":
        frame = _image_base64(inputs, meta)
    elif kind == "image":
        frame = _image(inputs)
    elif kind == "ocr_text":
        frame = _ocr_text(inputs)
    elif kind == "tabular":
        if "data" not in inputs:
            raise BadRequest("a tabular request needs 'data': a list of records (objects)")
        table = inputs["data"]
        try:
            frame = pd.DataFrame(table) if isinstance(table, list) else pd.DataFrame([table])
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"'data' is not a table: {one_line(exc)}") from None
    elif kind == "embedding":
        frame = _rows({"texts": [inputs.get("texts", [])]})
        if "model_name" in inputs:
            meta["model_name"] = inputs["model_name"]
    elif kind == "structured":
        frame = _structured(inputs)
    else:  # raw
        frame = pd.DataFrame([_record(inputs)])
    if "parameters" in inputs:
        meta["parameters"] = inputs["parameters"]
    if len(frame) == 0 or len(frame.columns) == 0:  # ModelHub hands the model the empty frame
        raise BadRequest(f"the {kind} request gives the model no data (an empty table)")
    return frame, meta


# -- the answer (OutputTransformer.transform) ------------------------------------------------------------------
class Unwritable(Exception):
    """The model's answer holds a value JSON cannot carry."""


def native(value: Any) -> Any:
    """A value of the model's answer as JSON can carry it: numpy and pandas scalars as Python's, NaN and NaT
    as null, bytes as base64 text, arrays and Series as lists (ModelHub fails on NaN, bytes and Series)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, np.generic):
        return native(value.item())
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): native(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [native(v) for v in value]
    if isinstance(value, np.ndarray):
        return [native(v) for v in value.tolist()]
    import pandas as pd

    if isinstance(value, (pd.Series, pd.Index)):
        return [native(v) for v in value.tolist()]
    if isinstance(value, pd.DataFrame):
        return native(value.to_dict(orient="list"))
    if value is pd.NaT:
        return None
    if isinstance(value, (pd.Timestamp, pd.Timedelta)) or hasattr(value, "isoformat"):
        return value.isoformat()
    raise Unwritable(f"the model's answer holds a {type(value).__name__}, which JSON cannot carry")


def _parsed(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _cell(frame, col) -> Any:
    """``OutputTransformer``'s single-row cell: bool, int and float columns as Python's, strings JSON-parsed."""
    import pandas as pd

    value = frame[col].iloc[0]
    dtype = frame[col].dtype
    if pd.api.types.is_bool_dtype(dtype):
        return bool(value)
    if pd.api.types.is_integer_dtype(dtype):
        return int(value)
    if pd.api.types.is_float_dtype(dtype):
        return float(value)
    return _parsed(value)


def _embedding(result: Any) -> Optional[Dict[str, Any]]:
    """ModelHub's bare ``{"prediction": ...}`` answer to an embedding request, None when the result has no
    embeddings where ModelHub looks (then the envelope follows)."""
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        if len(result) == 0 or len(result.columns) == 0:
            return None
        for col in EMBEDDING_KEYS:
            if col in result.columns:
                return {"prediction": _parsed(result[col].iloc[0])}
        return {"prediction": _parsed(result.iloc[0, 0])}
    if isinstance(result, dict):
        for key in EMBEDDING_KEYS:
            if key in result:
                return {"prediction": result[key]}
        inner = result.get("data")
        if isinstance(inner, dict):
            for key in EMBEDDING_KEYS:
                if key in inner:
                    return {"prediction": inner[key]}
    return None


def envelope(result: Any, meta: Dict[str, Any]) -> Dict[str, Any]:
    """ModelHub's answer: ``{"status": 200, "data": ..., "error": null, "metadata": {...}}`` (embeddings: a bare
    ``{"prediction": ...}``), every value made JSON (``native``). ModelHub's ``output_columns`` (the signature's
    outputs) never applies there (it reads ``Schema.outputs``, which mlflow's Schema lacks): all columns go."""
    import pandas as pd

    if meta.get("inference_type") == "embedding":
        bare = _embedding(result)
        if bare is not None:
            return native(bare)
    if isinstance(result, pd.DataFrame):
        if len(result) == 1:
            data: Any = {str(c): _cell(result, c) for c in result.columns}
        else:
            data = {str(c): [_parsed(v) for v in result[c].tolist()] for c in result.columns}
    elif isinstance(result, dict):
        data = result["body"] if "body" in result else result
    elif isinstance(result, (list, np.ndarray, pd.Series)):  # ModelHub: a Series fails to serialize
        data = {"predictions": result}
    else:
        data = {"prediction": result}
    return {"status": 200, "data": native(data), "error": None, "metadata": native(meta)}


def error_body(status: int, msg: str) -> Dict[str, Any]:
    """A failure in ModelHub's envelope, with FastAPI's ``detail`` that ModelHub's own errors carry (ModelHub
    answers every failure 400 with ``"400: ..."`` text; here the status is the real one)."""
    return {"status": status, "data": None, "error": msg, "detail": msg}
