"""Request parameters checked one by one: numbers (which MLServer's gRPC carries as text) and the
OpenAI sampling fields that V2 generation requests map onto."""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List

from ..errors import BadRequest


def number(name: str, value: Any, kind: type, low: Any = None, high: Any = None, low_open: bool = False) -> Any:
    """Parameter ``name`` as ``kind`` (int or float) within [low, high] (``low_open``: (low, high]), or a 400."""
    if isinstance(value, str):  # MLServer's gRPC parameters carry no floats: "0.7" is how they travel
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise BadRequest(f"parameter '{name}' must be {'an integer' if kind is int else 'a finite number'}, "
                         f"got {value!r}")
    value = kind(value)
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else '∞'}]"
        raise BadRequest(f"parameter '{name}' is {value}; allowed range {rng}")
    return value


# name -> (kind, low, high, low_open)
SAMPLING = {
    "temperature": (float, 0, None, False),
    "top_p": (float, 0, 1, True),
    "top_k": (int, -1, None, False),
    "min_p": (float, 0, 1, False),
    "seed": (int, 0, None, False),
    "presence_penalty": (float, -2, 2, False),
    "frequency_penalty": (float, -2, 2, False),
    "repetition_penalty": (float, 0, None, True),
}


def check_names(params: Dict[str, Any], allowed: Iterable[str]) -> None:
    """Unknown generation parameters, and ones without a value, are a 400 naming them."""
    allowed = tuple(allowed)
    unknown = [k for k in params if k not in allowed]
    if unknown:
        raise BadRequest(f"unknown generation parameter '{unknown[0]}' (allowed: {', '.join(allowed)})")
    empty = [k for k in allowed if k in params and params[k] is None and k != "stop"]
    if empty:  # what a float sent over MLServer's gRPC becomes
        raise BadRequest(f"parameter '{empty[0]}' has no value (over gRPC, send a float as a string, e.g. \"0.7\")")


def sampling_body(params: Dict[str, Any], default_max: int, cap: int, extra: Iterable[str] = ()) -> Dict[str, Any]:
    """V2 request parameters as OpenAI completion fields, each checked; unknown names are a 400.

    ``max_tokens`` (alias ``max_new_tokens``) defaults to ``default_max`` and may not exceed ``cap``.
    Names in ``extra`` are left for the caller.
    """
    check_names(params, ("max_tokens", "max_new_tokens", "min_tokens", "ignore_eos", "stop", *SAMPLING, *extra))
    body: Dict[str, Any] = {}
    if params.get("max_tokens") is not None and params.get("max_new_tokens") is not None:
        raise BadRequest("give 'max_tokens' or 'max_new_tokens', not both")
    limit = params.get("max_tokens", params.get("max_new_tokens"))
    name = "max_tokens" if params.get("max_tokens") is not None else "max_new_tokens"
    body["max_tokens"] = number(name, limit, int, 1, cap) if limit is not None else default_max
    for key, (kind, low, high, low_open) in SAMPLING.items():
        if params.get(key) is not None:
            body[key] = number(key, params[key], kind, low, high, low_open)
    if params.get("min_tokens") is not None:
        body["min_tokens"] = number("min_tokens", params["min_tokens"], int, 0, body["max_tokens"])
    if params.get("ignore_eos") is not None:
        if not isinstance(params["ignore_eos"], bool):
            raise BadRequest(f"parameter 'ignore_eos' must be true or false, got {params['ignore_eos']!r}")
        body["ignore_eos"] = params["ignore_eos"]
    if params.get("stop") is not None:
        body["stop"] = stop_strings(params["stop"])
    return body


def stop_strings(stop: Any) -> List[str]:
    """Parameter ``stop``: a string or a list of non-empty strings, as a list."""
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest(f"parameter 'stop' must be a string or a list of non-empty strings, got {stop!r}")
    return stop
