"""A fast fake OpenAI upstream for the proxy benchmark (not a test double: a load target).

Raw asyncio protocol + httptools parser on uvloop, so that one core serves several thousand
requests per second and the upstream is never what limits a proxy under test.

    POST …/chat/completions, …/completions  non-streaming: one JSON answer with usage
                                             streaming: `--chunks` SSE chunks `--gap-ms` apart,
                                             the usage chunk when `stream_options.include_usage`,
                                             then `data: [DONE]`
    GET  …/models                            one model
    anything else                            404 in OpenAI's error shape

Run: python bench/fake_upstream.py --port 9100 [--chunks 16] [--gap-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httptools
import orjson

MODEL = "bench-model"
_ANSWER_TOKENS = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]


def _whole_answer(model: str, created: int) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(_ANSWER_TOKENS)},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": len(_ANSWER_TOKENS),
                "total_tokens": 12 + len(_ANSWER_TOKENS),
            },
        }
    )


def _chunk(model: str, created: int, index: int, last: bool) -> bytes:
    delta: dict[str, Any] = {"content": _ANSWER_TOKENS[index % len(_ANSWER_TOKENS)]}
    if index == 0:
        delta["role"] = "assistant"
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if last else None}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _usage_chunk(model: str, created: int, chunks: int) -> bytes:
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks},
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _head(status: int, content_type: bytes, length: int | None) -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 400: b"Bad Request"}.get(status, b"OK")
    lines = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"content-type: " + content_type,
        b"x-request-id: upstream",
    ]
    if length is None:
        lines.append(b"transfer-encoding: chunked")
        lines.append(b"cache-control: no-cache")
    else:
        lines.append(b"content-length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FakeOpenAI(asyncio.Protocol):
    """One connection; HTTP/1.1 keep-alive, requests answered in order."""

    def __init__(self, chunks: int, gap_s: float) -> None:
        self.chunks = chunks
        self.gap_s = gap_s
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.queue: list[tuple[bytes, bytes, bytes]] = []
        self.streaming: asyncio.Task[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(_head(400, b"text/plain", 0))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.queue.append((self.parser.get_method(), self.url, b"".join(self.body)))
        if self.streaming is None:
            self._drain()

    # answering
    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _drain(self) -> None:
        while self.queue and self.streaming is None:
            method, url, body = self.queue.pop(0)
            self._answer(method, url, body)

    def _answer(self, method: bytes, url: bytes, body: bytes) -> None:
        path = url.split(b"?", 1)[0]
        created = int(time.time())
        if method == b"GET" and path.endswith(b"/models"):
            data = orjson.dumps(
                {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
            )
            self._send(_head(200, b"application/json", len(data)) + data)
            return
        if method != b"POST" or not (
            path.endswith(b"/chat/completions") or path.endswith(b"/completions")
        ):
            data = orjson.dumps(
                {"error": {"message": "no such route", "type": "invalid_request_error"}}
            )
            self._send(_head(404, b"application/json", len(data)) + data)
            return
        try:
            request = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            request = {}
        model = request.get("model") if isinstance(request.get("model"), str) else MODEL
        if request.get("stream") is True:
            options = request.get("stream_options")
            usage = isinstance(options, dict) and bool(options.get("include_usage"))
            self.streaming = asyncio.get_running_loop().create_task(
                self._stream(model, created, usage)
            )
            return
        data = _whole_answer(model, created)
        self._send(_head(200, b"application/json", len(data)) + data)

    async def _stream(self, model: str, created: int, usage: bool) -> None:
        try:
            self._send(_head(200, b"text/event-stream", None))
            for index in range(self.chunks):
                if index:
                    await asyncio.sleep(self.gap_s)
                self._send(_chunked(_chunk(model, created, index, index == self.chunks - 1)))
            if usage:
                self._send(_chunked(_usage_chunk(model, created, self.chunks)))
            self._send(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        finally:
            self.streaming = None
        self._drain()


async def serve(host: str, port: int, chunks: int, gap_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FakeOpenAI(chunks, gap_s), host, port, backlog=4096, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # the benchmark still runs, only slower
        asyncio.run(serve(args.host, args.port, args.chunks, args.gap_ms / 1000.0))
    else:
        uvloop.run(serve(args.host, args.port, args.chunks, args.gap_ms / 1000.0))


if __name__ == "__main__":
    main()
