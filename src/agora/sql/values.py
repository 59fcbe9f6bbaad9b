"""SQL values in JSON and CSV: integers stay integers, NULL is null, and a blob is
``{"$base64": "..."}`` (the same object is accepted as a parameter)."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from agora.core.errors import InvalidInput


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode()}
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def row_to_json(row: tuple) -> list[Any]:
    return [to_json(v) for v in row]


def from_json(value: Any, where: str = "params") -> Any:
    if value is None or isinstance(value, (int, float, str)):
        return int(value) if isinstance(value, bool) else value
    if isinstance(value, dict) and set(value) == {"$base64"} and isinstance(value["$base64"], str):
        try:
            return base64.b64decode(value["$base64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{where}: $base64 is not valid base64") from None
    raise InvalidInput(f"{where}: a parameter is a number, a string, true/false, null or {{\"$base64\": ...}}")


def to_csv(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value
