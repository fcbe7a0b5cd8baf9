"""Error types that carry an HTTP status, so every failure reaches the user as one clear line."""

from __future__ import annotations

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
        super().__init__(f"model '{model}' failed to load: {msg}", 422)  # starlette 1.x renamed its constant

    def __reduce__(self):  # crosses MLServer's worker processes intact
        return (type(self), (self.model, self.reason))


class NotServed(MLServerError):
    """501: a route of the protocol that this model does not serve (KServe V1 ``:explain``)."""

    def __init__(self, msg: str):
        super().__init__(msg, status.HTTP_501_NOT_IMPLEMENTED)

    def __reduce__(self):
        return (type(self), (str(self),))


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


def first_line(exc: BaseException) -> str:
    """The first non-empty line of the exception's message (its type's name when it has none)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


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
