"""Request checks shared by the endpoints' `check` functions: each raises `InvalidRequest`
naming the field, before anything is reserved, recorded or sent."""

from __future__ import annotations

from proxy.errors import InvalidRequest
from proxy.relay.facts import Body


def require_model(body: Body) -> str:
    """The `model` every relayed endpoint needs."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    return model


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


def check_optional(body: Body, name: str, kind: type, what: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise InvalidRequest(f"{name!r} must be {what}", param=name)


def check_counts(body: Body, *names: str) -> None:
    """Each of `names`, where present, is a non-negative integer."""
    for name in names:
        count = body.get(name)
        if count is not None and (
            not isinstance(count, int) or isinstance(count, bool) or count < 0
        ):
            raise InvalidRequest(f"{name!r} must be a non-negative integer", param=name)


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
