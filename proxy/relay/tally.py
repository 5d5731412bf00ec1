"""The stream tally: pure. Reads each upstream SSE event through its endpoint's `read_event`,
says whether to pass it on, and counts the answer: output tokens per event (the upstream's
per-chunk usage where it reports one, else the event's delta text), usage, model, finish
reasons, whether the stream reached its own end. No socket, no clock, no meter: the read loop
(`stream.py`) does the I/O and hands the meter the tokens each event brought.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from proxy import sse
from proxy.relay.call import Tally
from proxy.relay.facts import NOTHING, Endpoint, EventFacts, Held, TokenUsage


@dataclass(frozen=True, slots=True)
class Step:
    """What to do with one event: pass its bytes on or not, and the output tokens it brought."""

    pass_on: bool
    new_tokens: int = 0


_PASS = Step(True)
_KEEP_BACK = Step(False)


class StreamTally:
    """The running count of one stream (see the module docstring)."""

    __slots__ = ("_read", "done", "finished", "held", "metered", "tally", "usage_seen")

    def __init__(self, spec: Endpoint, tally: Tally) -> None:
        if spec.read_event is None:
            raise ValueError(f"endpoint {spec.name} does not stream")
        self._read = spec.read_event
        self.tally = tally
        self.finished = False  # the stream reached its own end ([DONE] or a terminal event)
        self.usage_seen = False
        self.done = False  # the upstream wrote `data: [DONE]`
        self.held: list[Held] = []
        self.metered = 0  # output tokens reported to the meter so far

    def feed(self, event: bytes) -> Step:
        data = sse.event_data(event)
        if data is None:
            return _PASS  # upstream comments and pings pass through
        if data == sse.DONE:
            self.finished = self.done = True
            return _KEEP_BACK  # the closing events write it again, last
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return _PASS
        if not isinstance(payload, dict):
            return _PASS
        facts = self._read(payload)
        if facts is NOTHING:
            return _PASS
        new_tokens = self._take(facts)
        if facts.terminal:
            self.finished = True
        if facts.hold:
            self.held.append(Held(event, payload))
            return Step(False, new_tokens)
        return Step(True, new_tokens) if new_tokens else _PASS

    def _take(self, facts: EventFacts) -> int:
        tally = self.tally
        if facts.error:
            tally.error = "upstream_stream_error"
        if tally.response_model is None and facts.model is not None:
            tally.response_model = facts.model
        if tally.response_id is None and facts.response_id is not None:
            tally.response_id = facts.response_id
        tally.finish_reasons.extend(facts.finish_reasons)
        if facts.usage is None:
            self.metered += facts.text_tokens
            tally.completion_tokens = max(tally.completion_tokens, self.metered)
            return facts.text_tokens
        return self._take_usage(facts.usage)

    def _take_usage(self, usage: TokenUsage) -> int:
        """Usage is cumulative: the tokens it adds are those beyond what was metered."""
        tally = self.tally
        self.usage_seen = True
        whole = {k: v for k, v in usage.whole.items() if v is not None}
        tally.usage = {**(tally.usage or {}), **whole}
        if usage.prompt_tokens is not None:
            tally.prompt_tokens = usage.prompt_tokens
        reported = usage.completion_tokens
        if not reported:
            return 0
        new_tokens = max(0, reported - self.metered)
        self.metered += new_tokens
        tally.completion_tokens = reported
        return new_tokens

    def cut_off(self, rest: bytes) -> bool:
        """Whether the stream ended before its end: no end seen, or half an event left."""
        return not self.finished or bool(rest.strip())
