"""The error tree: one base, statuses that travel with api errors, input errors that stay ValueErrors."""

from __future__ import annotations

import pytest

from runstream import errors
from runstream.api.sql_guard import QueryRefused
from runstream.ingest.query import QueryError
from runstream.ingest.values import InvalidInput, check_name
from runstream.kafka_broker import BrokerError
from runstream.keys import KeyStoreError


def test_every_purposeful_error_derives_from_one_base() -> None:
    for cls in (InvalidInput, QueryRefused, QueryError, BrokerError, KeyStoreError, errors.StorageError, errors.NotFound):
        assert issubclass(cls, errors.RunstreamError), cls


def test_api_errors_carry_their_http_status() -> None:
    assert errors.NotFound("x").status == 404
    assert errors.BadRequest("x").status == 400
    assert errors.Forbidden("x").status == 403
    assert errors.PayloadTooLarge("x").status == 413
    assert errors.Unavailable("x").status == 503
    assert QueryRefused("only SELECT queries are allowed", 403).status == 403
    assert QueryRefused("empty query").status == 400
    assert QueryError(429, "busy").status == 429 and isinstance(QueryError(429, "busy"), errors.ApiError)


def test_input_errors_stay_value_errors() -> None:
    with pytest.raises(ValueError):
        check_name("")
    with pytest.raises(errors.InputError):
        check_name("x" * 10_000)
    assert issubclass(errors.NotFound, LookupError)  # callers that caught LookupError still do


def test_storage_errors_say_whether_a_retry_can_help() -> None:
    assert errors.StorageError("server away", transient=True).transient
    assert not errors.StorageError("syntax error", transient=False).transient
