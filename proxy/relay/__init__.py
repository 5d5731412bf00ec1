"""The relay: one client request relayed to its upstream, metered, recorded and settled.

The path: authenticate → read and check (the endpoint's entry) → route → reserve the budget's
worst case → send → pass the answer back (whole, or the upstream's own SSE bytes as they come,
counted by the pure stream tally) → finish: meter closes → footprint → ledger row durable →
budget settled → telemetry ends → the last bytes (the footprint) leave.

Modules, one job each:

- `endpoints`: the table, one `Endpoint` per relayed endpoint (`facts` has the types). The
  readers, checks and stream closers of each API family: `chat` (Chat Completions,
  Completions, Embeddings), `responses` (OpenAI's Responses API), `messages` (Anthropic's
  Messages API). Adding an endpoint is one entry there (its route follows from the table)
  and its tests.
- `attach`: where the footprint goes (a member appended to the upstream's JSON bytes).
- `stored`: `GET`/`DELETE /v1/responses/{id}` at the upstream that made the response;
  `counting`: `POST /v1/messages/count_tokens`. Neither is metered.
- `embeddings`: the derived energy of an estimated embeddings request.
- `call`: `Call`, the typed state of one request: `Asked` (frozen, once routed) and `Tally`
  (what the answer brought).
- `intake`: the body read within its limit; `checks`: the field checks endpoints share.
- `send`: the upstream request's headers (`upstream_headers`, the one place they are made),
  sending it, reading the answer, upstream failures as the proxy's errors.
- `tally`: `StreamTally`, pure: per event, pass it on or hold it, and the tokens it brought.
- `stream` / `whole`: the streamed and the whole answer.
- `finish`: `Finisher.finish` and the footprint as the client sees it.

Seams other parts rely on (keep them stable):

- The meter: `track = upstream.meter.open(request_id, model)`, then `track.first_token(
  prompt_tokens)` once, `track.output_tokens(count)` per event with the *tokens* that event
  brought (the upstream's cumulative usage where a chunk carries one, else its delta text by
  the rule of thumb), and `await track.close(prompt_tokens=, output_tokens=, cancelled=,
  latency_s=)` in `Finisher.finish`.
- Telemetry reads a `Call` through `proxy.telemetry.core.TracedCall`'s declared fields.
- The ledger row is made by `finish.ledger_record`, the footprint object by
  `finish.footprint_object`: one place each.
- Each endpoint's request checks are its entry's `check` function; request headers for the
  upstream are made by `send.upstream_headers` alone.
"""

from proxy.relay.call import Asked, Call, Tally
from proxy.relay.endpoints import ENDPOINTS
from proxy.relay.facts import Endpoint
from proxy.relay.relay import Relay
from proxy.relay.tally import StreamTally

__all__ = ["ENDPOINTS", "Asked", "Call", "Endpoint", "Relay", "StreamTally", "Tally"]
