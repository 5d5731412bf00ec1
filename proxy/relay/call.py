"""The state of one relayed request, as declared types.

A `Call` is made when the request arrives. What the request asks for is fixed once it has been
checked and routed (`Asked`, frozen); what its answer brought grows while it runs (`Tally`, the
one mutable part). Telemetry, the ledger row and the footprint read the call through the
properties below, never through anything untyped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from proxy.upstreams import Upstream

if TYPE_CHECKING:
    from proxy.budgets import Admission
    from proxy.relay.attempts import Attempts
    from proxy.relay.facts import Endpoint
    from proxy.telemetry import RequestTelemetry


@dataclass(frozen=True, slots=True)
class Asked:
    """What a checked request asks for, and the upstream that will serve it."""

    model: str
    upstream: Upstream
    stream: bool
    client_wants_usage: bool
    prompt_text: str
    max_tokens: int
    choices: int = 1  # completions generated (n, or best_of where larger)


@dataclass(slots=True)
class Tally:
    """What the answer brought, counted while it is relayed."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_counted: bool = False
    status: int = 200
    cancelled: bool = False
    error: str | None = None
    upstream_s: float = 0.0
    first_chunk_s: float | None = None
    response_model: str | None = None
    response_id: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    overhead_ms: float = 0.0
    # The upstream's own usage object, whole (cached and reasoning token details included).
    usage: dict[str, object] | None = None


class Call:
    """One relayed request: arrival facts, who asks (after auth), what it asks (after checks),
    and the tally of its answer."""

    __slots__ = (
        "asked",
        "attempts",
        "claimed",
        "client_id",
        "key_id",
        "meter_closed",
        "model",
        "rate",
        "received_at",
        "request_id",
        "settled",
        "spec",
        "started",
        "tally",
        "team",
        "telemetry",
        "trace_id",
    )

    def __init__(
        self, request_id: str, spec: Endpoint, started: float, received_at: datetime
    ) -> None:
        self.request_id = request_id
        self.spec = spec
        self.started = started  # perf_counter seconds
        self.received_at = received_at
        # Who asks (set by authentication) and for which model (set once the body is read):
        # telemetry names them on a refusal that comes before routing.
        self.team = "default"
        self.key_id: str | None = None
        self.model = ""
        self.asked: Asked | None = None
        self.tally = Tally()
        self.trace_id: str | None = None  # written by telemetry's `begin`
        self.telemetry: RequestTelemetry | None = None
        self.settled = False  # the budget reservation has been settled
        self.attempts: Attempts | None = None  # set once routed: the route plan and its tries
        self.client_id = False  # the request id is the client's own x-request-id
        self.claimed = False  # that id is claimed as in flight (see Budgets.claim)
        self.meter_closed = False
        self.rate: Admission | None = None  # the rate limits it was admitted under, if any

    def need(self) -> Asked:
        """`asked`, for the steps that run only after routing."""
        if self.asked is None:
            raise AssertionError(f"request {self.request_id} was not routed")
        return self.asked

    # ---- what telemetry reads (proxy.telemetry.core.TracedCall) ------------------------

    @property
    def endpoint(self) -> str:
        return self.spec.name

    @property
    def upstream(self) -> Upstream | None:
        return self.asked.upstream if self.asked is not None else None

    @property
    def stream(self) -> bool:
        return self.asked.stream if self.asked is not None else False

    @property
    def max_tokens(self) -> int:
        return self.asked.max_tokens if self.asked is not None else 0

    @property
    def prompt_tokens(self) -> int:
        return self.tally.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.tally.completion_tokens

    @property
    def status(self) -> int:
        return self.tally.status

    @property
    def cancelled(self) -> bool:
        return self.tally.cancelled

    @property
    def error(self) -> str | None:
        return self.tally.error

    @property
    def first_chunk_s(self) -> float | None:
        return self.tally.first_chunk_s

    @property
    def response_model(self) -> str | None:
        return self.tally.response_model

    @property
    def finish_reasons(self) -> list[str]:
        return self.tally.finish_reasons

    @property
    def route_attributes(self) -> dict[str, object]:
        """The routing decision's span attributes; empty where no policy chose."""
        attempts = self.attempts
        return attempts.span_attributes() if attempts is not None else {}
