"""The types the endpoint table is made of: what a whole answer or one stream event says, and
one `Endpoint` entry. Pure data; the readers that fill them live in one module per API family
(`chat.py`, …) and the table itself in `endpoints.py`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response

from proxy.errors import ProxyError
from proxy.ledger import Endpoint as EndpointName

Body = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts an upstream reported (None: it did not say), and its usage object whole."""

    prompt_tokens: int | None
    completion_tokens: int | None
    whole: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class AnswerFacts:
    """What a whole (non-streamed) answer says about itself."""

    usage: TokenUsage | None
    output_tokens: int  # counted from the answer's text, for when usage does not say
    model: str | None
    finish_reasons: tuple[str, ...]
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What one streamed event says. `text_tokens` are counted from its delta text; `usage`,
    where the event carries it, is cumulative for the request so far."""

    text_tokens: int = 0
    usage: TokenUsage | None = None
    model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    response_id: str | None = None
    error: bool = False  # the upstream reported an error in the stream
    hold: bool = False  # kept back: the footprint is added to it when the stream closes
    terminal: bool = False  # the API's own last event (a stream ending without one was cut)


NOTHING = EventFacts()


@dataclass(frozen=True, slots=True)
class Held:
    """An event kept back until the footprint is known: its bytes and its parsed payload."""

    raw: bytes
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """Everything a stream's closing events are made from."""

    request_id: str
    model: str
    created_s: int
    held: tuple[Held, ...]  # the events kept back, in their order
    upstream_done: bool  # the upstream's stream ended with `data: [DONE]`
    client_wants_usage: bool
    prompt_tokens: int
    completion_tokens: int
    usage: Mapping[str, object] | None  # the upstream's usage object whole, if it sent one
    footprint: Mapping[str, object]
    broke_off: ProxyError | None  # set when the stream was cut before its end


@dataclass(frozen=True, slots=True)
class ErrorShape:
    """How an API family writes the proxy's own errors: as a whole answer (`body`), and as
    the events that end a stream which cannot be finished (`event`, then `last`). A stream
    cut by its upstream is closed by the endpoint's `close_stream` instead."""

    body: Callable[[ProxyError], dict[str, object]]
    event: Callable[[ProxyError], bytes]
    last: bytes = b""

    def response(self, error: ProxyError, extra_headers: Mapping[str, str]) -> Response:
        """`error` as a whole answer, with its own headers and `extra_headers`."""
        return Response(
            orjson.dumps(self.body(error)),
            status_code=error.status_code,
            media_type="application/json",
            headers={**error.headers, **extra_headers},
        )


def bearer_credential(headers: Mapping[str, str]) -> str | None:
    """The caller's key as OpenAI clients send it: `Authorization: Bearer <key>`."""
    return headers.get("authorization")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One relayed endpoint: one entry of `ENDPOINTS`.

    - `route`: the proxy's path; `path`: the upstream's, under its base URL.
    - `operation`: the GenAI semantic-convention operation name (span name, metrics).
    - `check`: raises `InvalidRequest` for a body this endpoint must refuse (the model field
      is checked before it, for every endpoint).
    - `prompt_text`: the text the request sends as its prompt (worst case, token counting).
    - `read_answer` / `read_event`: usage and tokens from a whole answer / one stream event;
      `read_event` is None for an endpoint that never streams.
    - `prepare_stream`: rewrites a streaming body in place (e.g. asks for usage) and says
      whether the client itself asked for the usage it will get.
    - `close_stream`: the closing events, where the footprint goes in a stream.
    - `errors`: the error shape of this API family.
    - `cap_fields`: the body fields that cap output tokens, for the budget's worst case.
    - `credential`: the caller's key, as an `Authorization` header value, from the request.
    - `forwarded_headers`: request headers passed on to the upstream besides the common ones.
    """

    name: EndpointName
    route: str
    path: str
    operation: str
    check: Callable[[Body], None]
    prompt_text: Callable[[Body], str]
    read_answer: Callable[[Body], AnswerFacts]
    read_event: Callable[[Body], EventFacts] | None
    prepare_stream: Callable[[dict[str, Any]], bool]
    close_stream: Callable[[StreamEnd], list[bytes]]
    errors: ErrorShape
    cap_fields: tuple[str, ...] = ()  # where the body sets its output-token cap, first wins
    generates: bool = True  # False: the answer has no output tokens (embeddings)
    credential: Callable[[Mapping[str, str]], str | None] = bearer_credential
    forwarded_headers: tuple[str, ...] = ()  # request headers this API's upstream needs too

    @property
    def streams(self) -> bool:
        return self.read_event is not None
