"""Error types that carry an HTTP status, so every failure reaches the user as one clear line."""

from fastapi import status
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


def one_line(exc: BaseException) -> str:
    """The exception as a single line: its type and first message line, never a traceback."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    name = type(exc).__name__
    return f"{name}: {msg}" if msg else name
