"""MLflow's wire protocol: request fields, error codes and the JSON shapes of its entities.

Errors answer as MLflow's server does, `{"error_code": ..., "message": ...}` with the
HTTP status the client maps back to an `MlflowException` of that code. Non-finite metric
values travel as protobuf's JSON does: the strings "NaN", "Infinity", "-Infinity".
"""

from __future__ import annotations

import math
from typing import Any

# error code -> HTTP status, as in mlflow.protos.databricks_pb2 and MLflow's server
STATUS_OF = {
    "INVALID_PARAMETER_VALUE": 400,
    "BAD_REQUEST": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "INVALID_STATE": 400,
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "TEMPORARILY_UNAVAILABLE": 503,
    "INTERNAL_ERROR": 500,
}


class MlflowError(Exception):
    """An answer in MLflow's error shape."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return STATUS_OF.get(self.code, 500)

    def body(self) -> dict[str, str]:
        return {"error_code": self.code, "message": self.message}


def invalid(message: str) -> MlflowError:
    return MlflowError("INVALID_PARAMETER_VALUE", message)


def not_found(message: str) -> MlflowError:
    return MlflowError("RESOURCE_DOES_NOT_EXIST", message)


def field(body: dict[str, Any], name: str, *aliases: str, required: bool = False, default: Any = None) -> Any:
    """A request field (MLflow's old names, e.g. run_uuid for run_id, as aliases)."""
    for key in (name, *aliases):
        value = body.get(key)
        if value is not None and value != "":
            return value
    if required:
        raise invalid(f"Missing value for required parameter '{name}'.")
    return default


def text(body: dict[str, Any], name: str, *aliases: str, required: bool = False, default: str | None = None) -> str | None:
    value = field(body, name, *aliases, required=required, default=default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise invalid(f"Invalid value {value!r} for parameter '{name}': it must be a string.")
    return str(value)


def integer(body: dict[str, Any], name: str, *, required: bool = False, default: int | None = None) -> int | None:
    value = field(body, name, required=required, default=default)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise invalid(f"Invalid value {value!r} for parameter '{name}': it must be an integer.") from None


def number(value: Any, what: str) -> float:
    """A double as MLflow's JSON carries it (a number, or "NaN"/"Infinity"/"-Infinity")."""
    if isinstance(value, bool):
        raise invalid(f"Invalid value {value!r} for {what}: it must be a number.")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise invalid(f"Invalid value {value!r} for {what}: it must be a number.")


def json_double(x: float) -> float | str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def key_values(mapping: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in mapping.items()]


def metric_json(key: str, value: float, timestamp: int, step: int) -> dict[str, Any]:
    return {"key": key, "value": json_double(value), "timestamp": timestamp, "step": step}
