"""Error types that carry an HTTP status, so every failure reaches the user as one clear line."""

from __future__ import annotations

import struct

from fastapi import HTTPException, status
from mlserver.errors import MLServerError


class BadRequest(MLServerError):
    """The request does not fit the model (shape, datatype, missing input, unknown output)."""

    def __init__(self, msg: str, status_code: int = status.HTTP_400_BAD_REQUEST):
        super().__init__(msg, status_code)


class ModelLoadError(MLServerError):
    """The model cannot be loaded: bad option, missing or corrupt file, unsupported URI."""

    def __init__(self, model: str, msg: str):
        self.model, self.reason = model, msg
        super().__init__(f"model '{model}' failed to load: {msg}", status.HTTP_422_UNPROCESSABLE_ENTITY)

    def __reduce__(self):  # crosses MLServer's worker processes intact
        return (type(self), (self.model, self.reason))


class InternalError(MLServerError):
    """An unexpected failure inside the model call, reported without a traceback."""

    def __init__(self, msg: str):
        super().__init__(msg, status.HTTP_500_INTERNAL_SERVER_ERROR)

    def __reduce__(self):
        return (type(self), (str(self),))


class RequestTimeout(MLServerError):
    """504: the request ran past the model's ``request_timeout`` and its awaited work was cancelled."""

    def __init__(self, msg: str):
        super().__init__(msg, status.HTTP_504_GATEWAY_TIMEOUT)

    def __reduce__(self):
        return (type(self), (str(self),))


def one_line(exc: BaseException) -> str:
    """The exception as a single line: its type and first message line, never a traceback."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    name = type(exc).__name__
    return f"{name}: {msg}" if msg else name


class Unavailable(HTTPException, MLServerError):
    """503 with ``Retry-After``: the model's engine is (re)starting or has failed.

    FastAPI's HTTPException comes first in the method order, so the response carries the
    ``Retry-After`` header (as ``{"detail": ...}``); ``status_code`` stays for MLServer's gRPC side.
    """

    def __init__(self, msg: str, retry_after: int | None = None):
        headers = {"Retry-After": str(max(1, int(retry_after)))} if retry_after is not None else None
        HTTPException.__init__(self, status.HTTP_503_SERVICE_UNAVAILABLE, detail=msg, headers=headers)
        self.args = (msg,)
        self.retry_after = retry_after

    def __str__(self) -> str:
        return str(self.detail)

    def __reduce__(self):
        return (type(self), (str(self.detail), self.retry_after))


def _map_grpc_statuses() -> None:
    """MLServer 1.7.1's gRPC side maps only 400/404/422/500 and answers any other status UNKNOWN: add
    503 -> UNAVAILABLE and 504 -> DEADLINE_EXCEEDED, the codes gRPC clients retry or report as such."""
    try:
        import grpc
        from mlserver.grpc.utils import STATUS_CODE_MAPPING
    except ImportError:  # pragma: no cover - grpcio is one of MLServer's own requirements
        return
    STATUS_CODE_MAPPING.setdefault(status.HTTP_503_SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    STATUS_CODE_MAPPING.setdefault(status.HTTP_504_GATEWAY_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED)


def _check_raw_contents() -> None:
    """MLServer 1.7.1 unpacks gRPC ``raw_input_contents`` before any model code runs; a buffer whose length
    does not fit its input's datatype and shape, or fewer buffers than inputs, raised ``struct.error`` or
    ``IndexError`` there and was answered INTERNAL. Both are the client's mistake: INVALID_ARGUMENT."""
    try:
        from mlserver.grpc import converters
    except ImportError:  # pragma: no cover
        return
    original = converters.inject_raw
    if getattr(original, "modelserve_checked", False):
        return

    def inject_raw(elems, raw_contents):
        try:
            return original(elems, raw_contents)
        except (struct.error, IndexError) as exc:
            raise BadRequest("raw_input_contents do not fit the inputs (one buffer per input without data, "
                             f"of its datatype's size times its shape): {exc}") from None

    inject_raw.modelserve_checked = True  # type: ignore[attr-defined]
    converters.inject_raw = inject_raw


_map_grpc_statuses()
_check_raw_contents()
