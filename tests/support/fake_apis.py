"""The test upstream's Responses and Messages APIs, spoken the way vLLM speaks them.

- `POST /v1/responses`: a response of `words` words (`w0 w1 …`); streamed, the typed events
  vLLM sends (`event: response.created` … `response.completed`, each with `sequence_number`,
  no `[DONE]`), with usage in `response.completed` (`input_tokens`, `output_tokens`, their
  details). With `tools` and no tool output in the input yet, the answer is one
  `function_call` of the first tool (`{"city": "Seoul"}`): a tool-using turn. Model
  `nousage`: no usage anywhere. Stored (unless `store` is false) for
  `GET`/`DELETE /v1/responses/{id}`; an unknown `previous_response_id` is a 404, as in vLLM.
- `POST /v1/messages`: Anthropic's Messages; streamed as vLLM's converter does it
  (`message_start` with input tokens, text blocks, `message_delta` with usage and stop
  reason, `message_stop`, then `data: [DONE]`).

Prompt tokens are the words of the prompt's texts; output tokens are the words generated.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

UPSTREAM_HEADERS = {
    "x-ratelimit-limit-requests": "100",
    "x-ratelimit-remaining-requests": "99",
    "openai-processing-ms": "12",
}


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    if isinstance(value, dict):
        found = [value["text"]] if isinstance(value.get("text"), str) else []
        for key in ("content", "output"):
            found.extend(_texts(value.get(key)))
        return found
    return []


def words_of(*values: Any) -> int:
    return sum(len(t.split()) for v in values for t in _texts(v))


def named(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class ResponsesApi:
    """`/v1/responses` (see the module docstring)."""

    def __init__(self, log: Any, words: int) -> None:
        self.log = log
        self.words = words
        self.stored: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/responses", self.create, methods=["POST"]),
            Route("/v1/responses/{response_id}", self.stored_one, methods=["GET", "DELETE"]),
        ]

    def _output(self, body: dict[str, Any], rid: str) -> list[dict[str, Any]]:
        items = body.get("input") if isinstance(body.get("input"), list) else []
        answered = any(
            isinstance(i, dict) and i.get("type") == "function_call_output" for i in items
        )
        tools = body.get("tools") or []
        if tools and not answered:
            name = tools[0].get("name") or tools[0].get("function", {}).get("name")
            return [
                {
                    "type": "function_call",
                    "id": f"fc_{rid}",
                    "call_id": f"call_{rid}",
                    "name": name,
                    "arguments": '{"city": "Seoul"}',
                    "status": "completed",
                }
            ]
        text = " ".join(f"w{i}" for i in range(self.words))
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return [
            {
                "type": "message",
                "id": f"msg_{rid}",
                "role": "assistant",
                "status": "completed",
                "content": [part],
            }
        ]

    def _response(self, body: dict[str, Any], rid: str, status: str) -> dict[str, Any]:
        output = self._output(body, rid) if status == "completed" else []
        produced = words_of(output) + sum(len(str(o.get("arguments", "")).split()) for o in output)
        response: dict[str, Any] = {
            "id": rid,
            "object": "response",
            "created_at": 0,
            "model": body.get("model"),
            "status": status,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": body.get("tools") or [],
            "previous_response_id": body.get("previous_response_id"),
            "store": body.get("store", True),
            "usage": None,
        }
        if status == "completed" and body.get("model") != "nousage":
            prompt = words_of(body.get("input"), body.get("instructions"))
            response["usage"] = {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": produced,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + produced,
            }
        return response

    async def create(self, request: Request) -> Response:
        body = await request.json()
        self.log.requests.append(body)
        self.log.headers.append(dict(request.headers))
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            error = {
                "message": f"Response with id '{previous}' not found.",
                "type": "invalid_request_error",
                "param": "previous_response_id",
                "code": None,
            }
            return JSONResponse({"error": error}, status_code=404)
        rid = f"resp_{next(self._ids)}"
        final = self._response(body, rid, "completed")
        if final["store"]:
            self.stored[rid] = final
        if not body.get("stream"):
            return JSONResponse(final, headers=UPSTREAM_HEADERS)
        events = list(self._events(body, rid, final))

        async def stream() -> AsyncIterator[bytes]:
            for event in events:
                yield event

        return StreamingResponse(stream(), media_type="text/event-stream", headers=UPSTREAM_HEADERS)

    def _events(self, body: dict[str, Any], rid: str, final: dict[str, Any]) -> Iterator[bytes]:
        seq = itertools.count()
        started = self._response(body, rid, "in_progress")
        for kind in ("response.created", "response.in_progress"):
            yield named(kind, {"type": kind, "response": started, "sequence_number": next(seq)})
        for index, item in enumerate(final["output"]):
            yield from self._item_events(index, item, seq)
        yield named(
            "response.completed",
            {"type": "response.completed", "response": final, "sequence_number": next(seq)},
        )

    def _item_events(self, index: int, item: dict[str, Any], seq: Iterator[int]) -> Iterator[bytes]:
        def ev(kind: str, **fields: Any) -> bytes:
            return named(kind, {"type": kind, **fields, "sequence_number": next(seq)})

        empty = {**item, "status": "in_progress"}
        if item["type"] == "function_call":
            yield ev(
                "response.output_item.added", output_index=index, item={**empty, "arguments": ""}
            )
            yield ev(
                "response.function_call_arguments.delta",
                output_index=index,
                item_id=item["id"],
                delta=item["arguments"],
            )
            yield ev(
                "response.function_call_arguments.done",
                output_index=index,
                item_id=item["id"],
                arguments=item["arguments"],
            )
            yield ev("response.output_item.done", output_index=index, item=item)
            return
        yield ev("response.output_item.added", output_index=index, item={**empty, "content": []})
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"output_index": index, "item_id": item["id"], "content_index": 0}
        yield ev("response.content_part.added", **where, part=part)
        text = item["content"][0]["text"]
        for i, word in enumerate(text.split(" ")):
            yield ev(
                "response.output_text.delta", **where, delta=(" " if i else "") + word, logprobs=[]
            )
        yield ev("response.output_text.done", **where, text=text, logprobs=[])
        yield ev("response.content_part.done", **where, part={**part, "text": text})
        yield ev("response.output_item.done", output_index=index, item=item)

    async def stored_one(self, request: Request) -> Response:
        rid = request.path_params["response_id"]
        self.log.headers.append(dict(request.headers))
        found = self.stored.get(rid)
        if found is None:
            error = {
                "message": f"Response with id '{rid}' not found.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
            return JSONResponse({"error": error}, status_code=404)
        if request.method == "DELETE":
            del self.stored[rid]
            return JSONResponse({"id": rid, "object": "response", "deleted": True})
        return JSONResponse(found, headers=UPSTREAM_HEADERS)


class MessagesApi:
    """`/v1/messages` (see the module docstring)."""

    def __init__(self, log: Any, words: int) -> None:
        self.log = log
        self.words = words
        self._ids = itertools.count(1)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/messages", self.create, methods=["POST"]),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
        ]

    async def count_tokens(self, request: Request) -> Response:
        body = await request.json()
        self.log.requests.append(body)
        self.log.headers.append(dict(request.headers))
        return JSONResponse({"input_tokens": words_of(body.get("system"), body.get("messages"))})

    async def create(self, request: Request) -> Response:
        body = await request.json()
        self.log.requests.append(body)
        self.log.headers.append(dict(request.headers))
        mid = f"msg_{next(self._ids)}"
        model = body.get("model")
        prompt = words_of(body.get("system"), body.get("messages"))
        text = " ".join(f"w{i}" for i in range(self.words))
        usage = {"input_tokens": prompt, "output_tokens": self.words}
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": usage,
                },
                headers=UPSTREAM_HEADERS,
            )
        start = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": 0},
        }
        events = [named("message_start", {"type": "message_start", "message": start})]
        events.append(
            named(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        )
        for i, word in enumerate(text.split(" ")):
            delta = {"type": "text_delta", "text": (" " if i else "") + word}
            events.append(
                named(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
            )
        events.append(named("content_block_stop", {"type": "content_block_stop", "index": 0}))
        events.append(
            named(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": usage,
                },
            )
        )
        events.append(named("message_stop", {"type": "message_stop"}))
        events.append(b"data: [DONE]\n\n")

        async def stream() -> AsyncIterator[bytes]:
            for event in events:
                yield event

        return StreamingResponse(stream(), media_type="text/event-stream", headers=UPSTREAM_HEADERS)
