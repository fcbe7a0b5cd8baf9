"""The request checks every runtime shares, one wording each: the body, the datatype of a tensor, "exactly one
input", requested outputs against the offered ones, "no parameters"."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence, Tuple

from mlserver.types import InferenceRequest, RequestInput

from ..errors import BadRequest


def parse_json(body: bytes) -> Any:
    """A request body parsed by us, so a missing Content-Type or bad JSON is a clear 400."""
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def request_parameters(payload: InferenceRequest) -> dict:
    """The request's own ``parameters`` (pydantic extras), without MLServer's content_type and headers, which
    MLServer 1.7.1 declares as fields and so never appear here.

    Values are kept as sent, None included: a float sent over MLServer's gRPC arrives as None, and a
    runtime must say so rather than silently ignore it.
    """
    params = payload.parameters
    return dict(params.model_extra or {}) if params is not None else {}


def datatype_of(tensor: Any) -> str:
    """A V2 tensor's datatype as its name (``"FP32"``), whether pydantic kept the enum or the string."""
    return str(getattr(tensor.datatype, "value", tensor.datatype))


def one_input(payload: InferenceRequest, takes: str) -> RequestInput:
    """The request's only input; ``takes`` says what it must be (``"one input tensor of texts"``)."""
    if not payload.inputs:
        raise BadRequest(f"the request has no inputs: this model takes {takes}")
    if len(payload.inputs) > 1:
        names = ", ".join(i.name for i in payload.inputs)
        raise BadRequest(f"this model takes {takes}, got {len(payload.inputs)} inputs ({names})")
    return payload.inputs[0]


def wanted_outputs(payload: InferenceRequest, offered: Sequence[str], default: Iterable[str]) -> Tuple[str, ...]:
    """The outputs the request asks for (``default`` when it names none), each one the model offers."""
    names = tuple(o.name for o in payload.outputs or ())
    unknown = [n for n in names if n not in offered]
    if unknown:
        raise BadRequest(f"unknown output '{unknown[0]}' (this model offers: {', '.join(offered)})")
    return names or tuple(default)


def no_parameters(payload: InferenceRequest, what: str, allowed: Sequence[str] = ()) -> dict:
    """The request's parameters, refusing any not in ``allowed``: a sent one is a typo, not ignored."""
    params = request_parameters(payload)
    unknown = [k for k in params if k not in allowed]
    if unknown:
        takes = f"takes {', '.join(allowed)}" if allowed else "takes no request parameters"
        raise BadRequest(f"unknown parameter '{unknown[0]}': {what} {takes}")
    return params
