"""FastAPI's request validation errors on MLServer's app, as one line naming the problem.

FastAPI's own handler answers a 422 whose ``detail`` list echoes the whole input back, and crashes with a
plain-text 500 (``UnicodeDecodeError``) on a body that is not UTF-8; ``mlserver_early.patch_create_app`` gives
MLServer's app ``validation_error`` instead. The body the front door read (``frontdoor.BODY`` in the scope)
lets it say when the whole body is the problem.
"""

from __future__ import annotations

from typing import Any, List, Optional

from .binary_tensors import encode_json
from .frontdoor import BODY, _json_or_none


def _where(loc: Any) -> str:
    parts = [str(p) for p in (loc or ()) if p != "body"]
    return ".".join(parts) if parts else "the body"


def validation_message(errors: List[dict]) -> str:
    """FastAPI's validation errors as one line naming the first problem, never echoing the input back."""
    if not errors:
        return "the body is not a valid request"
    first = errors[0]
    kind, msg = first.get("type", ""), str(first.get("msg", "invalid")).splitlines()[0]
    if kind == "json_invalid":
        why = (first.get("ctx") or {}).get("error")
        text = f"the body is not valid JSON ({why})" if why else "the body is not valid JSON"
    elif kind == "missing":
        where = _where(first.get("loc"))
        text = f"the body has no '{where}'" if where != "the body" else "the body is empty"
    else:
        text = f"{_where(first.get('loc'))}: {msg}"
    more = len(errors) - 1
    return f"invalid request: {text}" + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


async def validation_error(request, exc) -> Any:
    """The handler MLServer's app gets for ``RequestValidationError``: FastAPI's own answers a 422 ``detail`` list
    that echoes the whole input back, and raises ``UnicodeDecodeError`` (a plain-text 500) on a body that is not
    UTF-8."""
    from starlette.responses import Response

    errors = _safe_errors(exc)
    msg = _not_an_object(request, errors) or validation_message(errors)
    return Response(encode_json({"error": msg}), status_code=400, media_type="application/json")


def _not_an_object(request, errors: List[dict]) -> Optional[str]:
    """The whole body is the problem (not JSON, not UTF-8, or JSON of another type): say which."""
    if not errors or tuple(errors[0].get("loc") or ()) != ("body",) or errors[0].get("type") == "missing":
        return None
    raw = request.scope.get(BODY)
    if not isinstance(raw, (bytes, bytearray)):
        return None
    return whole_body_message(bytes(raw), request.headers.get("content-type") or "none")


def whole_body_message(raw: bytes, ctype: str) -> str:
    """Why ``raw`` (sent as ``ctype``) is not a V2 JSON request object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # the body FastAPI's own handler crashed on
        return (f"invalid request: the body is binary data (Content-Type {ctype}), not a JSON request; raw tensors "
                "need the binary tensor extension (an Inference-Header-Content-Length header)")
    value = _json_or_none(raw)
    if value is None and text.strip() not in ("null",):
        return f"invalid request: the body is not JSON (Content-Type {ctype})"
    return f"invalid request: the body must be a JSON object, got {type(value).__name__ if value is not None else 'null'}"


def not_v2_message(raw: bytes, ctype: str, value: Any) -> str:
    """The message MLServer's route gives a body that is not a V2 request (``value``: its JSON, or None), for a
    model that takes nothing else (the front door carried it as a ModelHub body)."""
    if not isinstance(value, dict):
        return whole_body_message(raw, ctype)
    from mlserver.types import InferenceRequest
    from pydantic import ValidationError

    try:
        InferenceRequest.model_validate(value)
    except ValidationError as exc:
        return validation_message([{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_input=False)])
    return "invalid request: the body is not a V2 request"  # pragma: no cover - the front door checked


def _safe_errors(exc) -> List[dict]:
    try:
        return list(exc.errors())
    except Exception:  # pragma: no cover - errors() itself decoding the input
        return []
