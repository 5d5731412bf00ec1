"""The server's own limits on a real `footprint serve`: header size and body read time
(issue 11, defects 6 and 15)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.support.fake_upstream import UpstreamLog, make_upstream
from tests.support.processes import ProxyProcess, replica_config
from tests.support.servers import ServerThread

BODY = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture(scope="module")
def upstream_log() -> UpstreamLog:
    return UpstreamLog()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, upstream_log: UpstreamLog
) -> Iterator[ProxyProcess]:
    workdir = tmp_path_factory.mktemp("limits")
    with ServerThread(make_upstream(upstream_log)) as upstream:
        config = replica_config(
            upstream.url,
            f"sqlite:///{workdir / 'ledger.db'}",
            auth="none",
            server={"body_read_timeout_s": 1.0, "max_header_bytes": 16 * 1024},
        )
        with ProxyProcess("limits", config, workdir) as running:
            yield running


def _read_all(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data + b"<still open>"
    return data


def test_headers_over_the_limit_are_431_and_never_reach_the_ledger(
    proxy: ProxyProcess, upstream_log: UpstreamLog
) -> None:
    calls = len(upstream_log.requests)
    answer = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        content=BODY,
        headers={"content-type": "application/json", "x-request-id": "r" * 200_000},
        timeout=30.0,
    )
    assert answer.status_code == 431
    assert answer.json()["error"]["code"] == "headers_too_large"
    assert len(upstream_log.requests) == calls
    # Within the limit, all is as before.
    ok = httpx.post(f"{proxy.url}/v1/chat/completions", content=BODY, timeout=30.0)
    assert ok.status_code == 200


def test_a_body_that_does_not_arrive_in_time_is_408_and_the_connection_closed(
    proxy: ProxyProcess, upstream_log: UpstreamLog
) -> None:
    calls = len(upstream_log.requests)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(BODY)
    )
    slow = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.sendall(head + BODY[:10])  # then nothing more
        slow.append(sock)
    started = time.monotonic()
    try:
        answers = [_read_all(sock, 30.0) for sock in slow]
    finally:
        for sock in slow:
            sock.close()
    assert time.monotonic() - started < 30
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert not answer.endswith(b"<still open>")
        assert b'"code":"request_timeout"' in answer
    assert len(upstream_log.requests) == calls


def test_a_405_names_every_method_the_path_has(proxy: ProxyProcess) -> None:
    """Defect 17: the Allow header listed the first route's methods only."""
    answer = httpx.request("PATCH", f"{proxy.url}/admin/teams", timeout=30.0)
    assert answer.status_code == 405
    allowed = {m.strip() for m in answer.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert answer.json()["error"]["type"] == "invalid_request_error"
    chat = httpx.get(f"{proxy.url}/v1/chat/completions", timeout=30.0)
    assert chat.status_code == 405
    assert chat.headers["allow"] == "POST"
