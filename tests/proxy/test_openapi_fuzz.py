"""Property-based fuzzing of Footprint's own HTTP surface on a real `footprint serve` (issue
11): schemathesis on the `/openapi.json` the proxy serves, and hypothesis-made headers and
bodies on the relayed routes. No 5xx; every 4xx in OpenAI's error shape; and no refused
request changes the ledger or a budget."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fake_upstream import make_upstream
from tests.support.processes import ProxyProcess, replica_config
from tests.support.servers import ServerThread

ADMIN_KEY = "admin-" + secrets.token_hex(20)


@dataclass
class Target:
    proxy: ProxyProcess
    ledger: Path
    team: str
    key: str
    admin: httpx.Client
    client: httpx.Client

    def state(self) -> tuple[int, list[tuple[float, float]]]:
        """(request rows, the team's budgets' (used, reserved))."""
        with sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        lines = self.admin.get("/admin/budgets", params={"team": self.team}).json()["data"]
        return rows, [(x["used"], x["reserved"]) for x in lines]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("fuzz")
    ledger = workdir / "ledger.db"
    with ServerThread(make_upstream()) as upstream:
        config = replica_config(upstream.url, f"sqlite:///{ledger}", auth="keys")
        env = {"FOOTPRINT_ADMIN_KEY": ADMIN_KEY}
        with (
            ProxyProcess("fuzz", config, workdir, env) as proxy,
            httpx.Client(
                base_url=proxy.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
            ) as admin,
        ):
            team = "fuzzed"
            assert admin.post("/admin/teams", json={"name": team}).status_code == 201
            key = admin.post("/admin/keys", json={"team": team, "models": ["echo"]}).json()
            for metric in ("requests", "tokens"):
                body = {"team": team, "metric": metric, "period": "total", "limit": 1e9}
                assert admin.put("/admin/budgets", json=body).status_code == 200
            with httpx.Client(
                base_url=proxy.url, headers={"authorization": f"Bearer {key['key']}"}, timeout=30
            ) as client:
                yield Target(proxy, ledger, team, key["key"], admin, client)


def _assert_openai_error(response: httpx.Response | Any) -> None:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and isinstance(error["type"], str)


def test_no_generated_request_is_a_5xx_or_changes_anything_it_refuses(target: Target) -> None:
    """schemathesis makes requests from the document the proxy serves, operation by
    operation (its pytest plugin is driven by hand: hypothesis runs each operation's
    strategy)."""
    api = schemathesis.openapi.from_url(f"{target.proxy.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        if operation.path == "/admin/keys/{key_id}":
            continue  # revoking keys at random would lock the fuzzer out of the rest
        key = ADMIN_KEY if operation.path.startswith("/admin") else target.key
        _fuzz_operation(target, operation, key)


def _fuzz_operation(target: Target, operation: Any, key: str) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        before = target.state()
        headers = {**(case.headers or {}), "authorization": f"Bearer {key}"}
        response = case.call(headers=headers)
        assert response.status_code < 500 or case.path == "/readyz", (
            case.method,
            case.path,
            response.text,
        )
        if 400 <= response.status_code < 500:
            _assert_openai_error(response)
            assert target.state() == before, (case.method, case.path, response.text)

    check()


# Header values an HTTP client can send: tab, visible ASCII, space inside, and every byte
# above 0x7f (which a server sees as latin-1).
_HEADER_BYTES = [9, *range(32, 127), *range(128, 256)]
_VALUES = (
    st.lists(st.sampled_from(_HEADER_BYTES), max_size=300)
    .map(bytes)
    .filter(lambda b: b == b.strip(b" \t"))
)
_HEADERS = st.dictionaries(
    st.sampled_from(
        ["x-request-id", "user-agent", "accept-language", "traceparent", "baggage", "content-type"]
    ),
    _VALUES,
    max_size=4,
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
_BODIES = st.one_of(
    st.fixed_dictionaries(
        {"model": st.sampled_from(["echo", "forbidden", ""]) | st.text(max_size=30)},
        optional={
            "messages": _JSON,
            "max_tokens": st.integers(min_value=-(2**40), max_value=2**40),
            "n": st.integers(min_value=-5, max_value=500),
            "stream": st.booleans() | _JSON,
            "stream_options": _JSON,
            "user": st.text(max_size=400),
        },
    ),
    _JSON,
)


@given(
    headers=_HEADERS,
    body=_BODIES,
    route=st.sampled_from(["chat/completions", "completions", "embeddings"]),
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
def test_made_up_headers_and_bodies_are_answered_never_a_5xx(
    target: Target, headers: dict[str, bytes], body: object, route: str
) -> None:
    before = target.state()
    response = target.client.post(
        f"/v1/{route}", json=body, headers={**headers, "authorization": f"Bearer {target.key}"}
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        _assert_openai_error(response)
        assert target.state() == before
