"""Load generator for the proxy benchmark: open loop at a fixed rate, and closed-loop streaming.

Open loop (phase b): request i is *scheduled* at start + i/rate and sent then whether or not
earlier answers have come back (a new keep-alive connection is opened when none is idle), and
its latency is measured from the scheduled time, not from when it actually left. A server that
stalls therefore shows its stall in every request that should have been sent meanwhile: no
coordinated omission (Gil Tene's term; wrk2 and HdrHistogram do the same).

Streaming (phase c): `--concurrency` workers each send a streaming request, read it to the end,
and send the next one. Time to first token (first bytes that carry a `"content"` delta) and the
total time are measured from the moment the request is written.

The HTTP/1.1 client is a few lines over asyncio streams (on uvloop when available) so that the
generator costs little CPU on the core it shares with the fake upstream.

    python bench/loadgen.py open   --url http://127.0.0.1:9201/v1/chat/completions --rate 100
    python bench/loadgen.py stream --url http://127.0.0.1:9201/v1/chat/completions --concurrency 16

Both print one JSON object (latencies in milliseconds) on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MODEL = "bench-model"
MESSAGES = [{"role": "user", "content": "Hello, how are you today?"}]


def request_body(stream: bool) -> bytes:
    """The benchmark's request: a short chat; streaming asks for usage, so every path relays
    the same chunks (Footprint always asks its upstream for it)."""
    body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


def percentile_ms(values_s: list[float], q: float) -> float | None:
    """Nearest-rank percentile of `values_s` (seconds), in milliseconds."""
    if not values_s:
        return None
    ordered = sorted(values_s)
    rank = max(0, min(len(ordered) - 1, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return round(ordered[rank] * 1000.0, 3)


class HttpError(Exception):
    pass


@dataclass
class Target:
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/")

    def head(self, length: int) -> bytes:
        return (
            f"POST {self.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\nauthorization: Bearer sk-bench\r\n"
            f"content-length: {length}\r\n\r\n"
        ).encode()


@dataclass
class Answer:
    status: int
    first_token_s: float | None  # perf_counter time the first content delta arrived
    done_s: float
    body_bytes: int


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, target: Target) -> Connection:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    async def exchange(self, target: Target, body: bytes) -> tuple[Answer, bool]:
        """One request; returns the answer and whether the connection may be reused."""
        self.writer.write(target.head(len(body)) + body)
        reader = self.reader
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length: int | None = None
        chunked = False
        keep_alive = True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
            elif name == b"connection" and value == b"close":
                keep_alive = False
        first_token: float | None = None
        received = 0
        if chunked:
            tail = b""
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                data = await reader.readexactly(size + 2)
                received += size
                if first_token is None:
                    # an SSE event may straddle two chunks; keep a short tail to look across
                    window = tail + data
                    if b'"content"' in window:
                        first_token = time.perf_counter()
                    tail = window[-16:]
        elif length is not None:
            data = await reader.readexactly(length)
            received = length
            if b'"content"' in data:
                first_token = time.perf_counter()
        else:
            data = await reader.read()
            received = len(data)
            keep_alive = False
        return Answer(status, first_token, time.perf_counter(), received), keep_alive


@dataclass
class Pool:
    """Idle keep-alive connections; a request that finds none opens a new one (open loop)."""

    target: Target
    idle: list[Connection] = field(default_factory=list)
    opened: int = 0

    async def send(self, body: bytes) -> Answer:
        connection = self.idle.pop() if self.idle else None
        if connection is None:
            connection = await Connection.open(self.target)
            self.opened += 1
        try:
            answer, reusable = await connection.exchange(self.target, body)
        except BaseException:
            connection.close()
            raise
        if reusable:
            self.idle.append(connection)
        else:
            connection.close()
        return answer

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


async def open_loop(
    url: str, rate: float, duration_s: float, timeout_s: float = 15.0
) -> dict[str, Any]:
    """Send `rate` requests per second for `duration_s`, each timed from its scheduled time."""
    pool = Pool(Target.parse(url))
    body = request_body(stream=False)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    total = int(rate * duration_s)

    async def one(scheduled: float) -> None:
        try:
            answer = await asyncio.wait_for(pool.send(body), timeout_s)
        except TimeoutError:
            errors["timeout"] = errors.get("timeout", 0) + 1
            return
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        if answer.status != 200:
            errors[f"http_{answer.status}"] = errors.get(f"http_{answer.status}", 0) + 1
            return
        latencies.append(answer.done_s - scheduled)

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.05
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    pool.close()
    return {
        "phase": "open_loop",
        "rate_per_s": rate,
        "duration_s": duration_s,
        "sent": total,
        "ok": len(latencies),
        "errors": errors,
        "connections_opened": pool.opened,
        "p50_ms": percentile_ms(latencies, 50),
        "p90_ms": percentile_ms(latencies, 90),
        "p99_ms": percentile_ms(latencies, 99),
        "max_ms": percentile_ms(latencies, 100),
    }


async def streaming(
    url: str, concurrency: int, duration_s: float, timeout_s: float = 15.0
) -> dict[str, Any]:
    """`concurrency` workers, each streaming one request after another for `duration_s`."""
    target = Target.parse(url)
    body = request_body(stream=True)
    first_tokens: list[float] = []
    totals: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        pool = Pool(target)
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                answer = await asyncio.wait_for(pool.send(body), timeout_s)
            except TimeoutError:
                errors["timeout"] = errors.get("timeout", 0) + 1
                continue
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.05)
                continue
            if answer.status != 200 or answer.first_token_s is None:
                key = f"http_{answer.status}" if answer.status != 200 else "no_content"
                errors[key] = errors.get(key, 0) + 1
                continue
            first_tokens.append(answer.first_token_s - sent)
            totals.append(answer.done_s - sent)
        pool.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "phase": "streaming",
        "concurrency": concurrency,
        "duration_s": duration_s,
        "ok": len(totals),
        "errors": errors,
        "ttfb_p50_ms": percentile_ms(first_tokens, 50),
        "ttfb_p99_ms": percentile_ms(first_tokens, 99),
        "total_p50_ms": percentile_ms(totals, 50),
        "total_p99_ms": percentile_ms(totals, 99),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="open-loop and streaming load for the bench")
    commands = parser.add_subparsers(dest="command", required=True)
    fixed = commands.add_parser("open", help="fixed request rate, latency from schedule")
    fixed.add_argument("--url", required=True)
    fixed.add_argument("--rate", type=float, required=True, help="requests per second")
    fixed.add_argument("--duration", type=float, default=10.0, help="seconds")
    stream = commands.add_parser("stream", help="concurrent streaming requests")
    stream.add_argument("--url", required=True)
    stream.add_argument("--concurrency", type=int, default=16)
    stream.add_argument("--duration", type=float, default=10.0, help="seconds")
    args = parser.parse_args(argv)
    if args.command == "open":
        job = open_loop(args.url, args.rate, args.duration)
    else:
        job = streaming(args.url, args.concurrency, args.duration)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(job)
    else:
        result = uvloop.run(job)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
