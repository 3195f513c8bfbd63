"""The one error tree: every error runstream raises on purpose derives from RunstreamError.

- InputError: something a caller sent cannot be taken (a logging call's value, an
  event off the wire). Raised at once, at the edge; never retried.
- ApiError: an answer of the api, carrying its HTTP status. The api maps it to that
  status; the client raises it when the api answered with an error.
- StorageError: ClickHouse failed. `transient` says whether the same call can succeed
  later (a server away, a timeout, too many parts); the processor retries only those,
  so a deterministic failure (a bad statement, a schema mismatch, a bug) stops the
  batch loudly instead of becoming an endless retry loop.
- ServiceError: a local service (the development broker, the key store) cannot run.
"""

from __future__ import annotations


class RunstreamError(Exception):
    """Base of every error runstream raises on purpose."""


class InputError(RunstreamError, ValueError):
    """Input that cannot be taken; the message says what and why."""


class ApiError(RunstreamError):
    """An api answer that is an error; `status` is its HTTP status."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def detail(self) -> str:
        return str(self)


class BadRequest(ApiError, ValueError):
    status = 400


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError, LookupError):
    status = 404


class PayloadTooLarge(ApiError):
    status = 413


class Unavailable(ApiError):
    """A dependency (Kafka, ClickHouse) is away; the same request can be retried."""

    status = 503


class StorageError(RunstreamError):
    """A ClickHouse call failed; `transient` tells whether retrying the same call can help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class ServiceError(RunstreamError, RuntimeError):
    """A local service runstream manages cannot start or answer."""
