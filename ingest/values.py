"""Input checks for logging calls: raise at once, in the caller's thread."""

from __future__ import annotations

import math
import numbers
from typing import Any

from runstream.errors import InputError
from runstream.wire import MAX_NAME, MAX_STRING_VALUE

NONFINITE_TOKEN = {math.inf: "inf", -math.inf: "-inf"}


class InvalidInput(InputError):
    """A logging call got something it cannot log; the message says what."""


def check_name(name: object, what: str = "metric name") -> str:
    if type(name) is not str:
        raise InvalidInput(f"{what} must be a string, got {type(name).__name__}: {name!r}")
    if not name.strip():
        raise InvalidInput(f"{what} must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidInput(f"{what} {name[:40]!r}... is {len(name)} characters long; the limit is {MAX_NAME}")
    if "\x00" in name:
        raise InvalidInput(f"{what} {name!r} must not contain NUL characters")
    return name


def coerce_value(value: Any, name: str) -> float | str:
    """A number as float, or a string; anything else raises InvalidInput."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        if len(value) > MAX_STRING_VALUE:
            raise InvalidInput(f"string value of {name!r} is {len(value)} characters; the limit is {MAX_STRING_VALUE}")
        return value
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:
            raise InvalidInput(f"value of {name!r} is too large for a float64") from None
    item = getattr(value, "item", None)  # numpy scalars, 1-element arrays and tensors
    if callable(item):
        try:
            return coerce_value(item(), name)
        except (ValueError, TypeError, RuntimeError):  # item() refuses more than one element
            pass
    raise InvalidInput(f"value of {name!r} must be a number or a string, got {type(value).__name__}: {value!r:.80}")


def coerce_scalar_text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        text = value if isinstance(value, str) else repr(value)
        if len(text) > MAX_STRING_VALUE:
            raise InvalidInput(f"{what} is longer than {MAX_STRING_VALUE} characters")
        return text
    raise InvalidInput(f"{what} must be a string or number, got {type(value).__name__}")
