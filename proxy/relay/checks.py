"""Request checks shared by the endpoints' `check` functions: each raises `InvalidRequest`
naming the field, before anything is reserved, recorded or sent.

Every client-chosen value that reaches the ledger, a header or a metric is bounded here, to
what the ledger can store (`request_id` and `model` are VARCHAR(200), token counts 32-bit
integers), so a row that could not be written is refused with a 400 before the upstream
works, instead of failing after it did.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from types import UnionType

from proxy.errors import InvalidRequest
from proxy.relay.facts import Body

# The ledger's integer columns are 32-bit (PostgreSQL INTEGER).
MAX_COUNT = 2**31 - 1
# OpenAI's own bound on `n`; `best_of` the same.
MAX_CHOICES = 128
MAX_REQUEST_ID_CHARS = 128
MAX_MODEL_CHARS = 200
# Free-text identifiers the upstream gets (OpenAI's `user`, `safety_identifier`): bounded so
# that no single field carries an unbounded payload into logs and upstream headers.
MAX_IDENTIFIER_CHARS = 256
_IDENTIFIERS = ("user", "safety_identifier", "prompt_cache_key")
# Visible ASCII, no spaces: what a request id can be in a header, a log line and a URL.
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def valid_request_id(value: str) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


def request_id_of(headers: Mapping[str, str]) -> str:
    """The client's `x-request-id` when it is a valid one, else a new id (for the routes that
    record nothing, where a duplicate does no harm)."""
    own = headers.get("x-request-id")
    return own if own and valid_request_id(own) else f"req-{uuid.uuid4().hex}"


def check_request_id(value: str) -> str:
    """A client's own `x-request-id`: 1-128 visible ASCII characters."""
    if not _REQUEST_ID.fullmatch(value):
        raise InvalidRequest(
            f"x-request-id must be 1 to {MAX_REQUEST_ID_CHARS} visible ASCII characters "
            "(no spaces)",
            param="x-request-id",
        )
    return value


def require_model(body: Body) -> str:
    """The `model` every relayed endpoint needs: a name of at most 200 characters without
    control characters."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if len(model) > MAX_MODEL_CHARS or _CONTROL.search(model):
        raise InvalidRequest(
            f"'model' must be at most {MAX_MODEL_CHARS} characters, without control characters",
            param="model",
        )
    check_identifiers(body)
    return model


def check_identifiers(body: Body) -> None:
    for name in _IDENTIFIERS:
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_IDENTIFIER_CHARS):
            raise InvalidRequest(
                f"{name!r} must be a string of at most {MAX_IDENTIFIER_CHARS} characters",
                param=name,
            )


def require(body: Body, name: str) -> object:
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"missing required parameter: {name!r}", param=name)
    return value


def check_text_or_list(body: Body, name: str) -> None:
    value = require(body, name)
    if not isinstance(value, str | list):
        raise InvalidRequest(f"{name!r} must be a string or an array", param=name)


def check_objects(body: Body, name: str, what: str) -> None:
    """`name` is a non-empty array of objects (chat's and Messages' `messages`)."""
    value = require(body, name)
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"{name!r} must be a non-empty array", param=name)
    if not all(isinstance(item, dict) for item in value):
        raise InvalidRequest(f"each {what} must be an object", param=name)


def check_optional(body: Body, name: str, kind: type | UnionType, what: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise InvalidRequest(f"{name!r} must be {what}", param=name)


def check_counts(body: Body, *names: str) -> None:
    """Each of `names`, where present, is an integer from 0 to 2**31 - 1 (`n` and `best_of`:
    to 128)."""
    for name in names:
        count = body.get(name)
        if count is None:
            continue
        top = MAX_CHOICES if name in ("n", "best_of") else MAX_COUNT
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= top:
            raise InvalidRequest(f"{name!r} must be an integer from 0 to {top}", param=name)


def choices(body: Body) -> int:
    """How many completions the upstream generates for the request: `n`, or `best_of` where
    it asks for more (Completions generates best_of and returns n)."""
    most = 1
    for name in ("n", "best_of"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > most:
            most = value
    return most


def check_stream_flags(body: Body) -> None:
    check_optional(body, "stream", bool, "a boolean")
    check_optional(body, "stream_options", dict, "an object")


def max_tokens(body: Body, default: int, *names: str) -> int:
    """The output-token cap the request sets (the first of `names` present), else `default`."""
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default
