"""Routing through real processes: two fake upstreams in different zones behind
`footprint serve`, a local Electricity Maps-speaking intensity server the test changes
mid-run, upstreams killed -9 and started again."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from meters.intensity import IntensityTable
from tests.proxy.routing.conftest import ADMIN_KEY, proxy_config, upstream_entry
from tests.support.processes import REPO_ROOT
from tests.support.upstream_process import UpstreamProcess

J_PER_KWH = 3_600_000.0


@pytest.fixture
def two_upstreams() -> Any:
    with UpstreamProcess() as first, UpstreamProcess() as second:
        yield first, second


def _footprint_comment(text: str) -> dict[str, Any]:
    for line in text.splitlines():
        if line.startswith(": footprint "):
            return dict(orjson.loads(line[len(": footprint ") :]))
    raise AssertionError(f"no footprint comment in {text!r}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={"FOOTPRINT_ADMIN_KEY": ADMIN_KEY, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def _wait_until(condition: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_lowest_carbon_follows_the_cleaner_zone_and_the_report_shows_carbon_avoided(
    two_upstreams: Any,
    intensity_server: Any,
    intensity_values: dict[str, float],
    gateway: Any,
    tmp_path: Path,
) -> None:
    pl, fr = two_upstreams
    intensity_values.update({"PL": 600.0, "FR": 40.0})
    proxy = gateway(
        proxy_config(
            tmp_path,
            [upstream_entry("pl", pl.url, "PL"), upstream_entry("fr", fr.url, "FR")],
            intensity_server.url,
            policy="lowest-carbon",
        )
    )
    first = proxy.chat(max_tokens=64)
    assert first.status_code == 200, first.text
    assert first.json()["footprint"]["route"] == {
        "policy": "lowest-carbon",
        "upstream": "fr",
        "candidates": 2,
        "attempts": 1,
    }
    assert first.headers["x-footprint-zone"] == "FR"
    row = proxy.row(first.headers["x-request-id"])
    assert row["upstream"] == "fr"
    assert row["route"]["priority_upstream"] == "pl"
    assert row["route"]["worst_co2e_g"] > row["route"]["expected_co2e_g"] > 0
    # Same hardware in both zones: the carbon avoided is this request's facility energy at
    # the priority choice's intensity less at the chosen one's (embodied is the same).
    assert row["co2e_avoided_g"] == pytest.approx(row["energy_j"] / J_PER_KWH * (600 - 40))

    # The grid changes: within one cache period (1 s, plus the decision's 1 s memo) the
    # policy follows the cleaner zone.
    intensity_values.update({"PL": 30.0, "FR": 700.0})
    time.sleep(2.3)
    second = proxy.chat(max_tokens=64)
    assert second.json()["footprint"]["route"]["upstream"] == "pl"
    assert second.headers["x-footprint-grid-gco2e-per-kwh"] == "30"
    assert proxy.row(second.headers["x-request-id"])["co2e_avoided_g"] == 0.0

    report = _cli("report", "--url", proxy.url, "--group-by", "upstream")
    assert report.returncode == 0, report.stderr
    assert "carbon avoided by routing (against the priority choice)" in report.stdout
    avoided = float(report.stdout.rsplit(":", 1)[1].split()[0])
    assert avoided == pytest.approx(row["co2e_avoided_g"], rel=1e-4)


def test_a_full_upstream_is_passed_over(two_upstreams: Any, gateway: Any, tmp_path: Path) -> None:
    a, b = two_upstreams
    proxy = gateway(
        proxy_config(
            tmp_path,
            [
                upstream_entry("a", a.url, "FR", max_concurrency=1),
                upstream_entry("b", b.url, "DE"),
            ],
        )
    )
    slow: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: slow.update(answer=proxy.chat("slow")))
    worker.start()
    _wait_until(lambda: proxy.routing()["a"]["in_flight"] == 1)
    quick = proxy.chat()
    assert quick.status_code == 200
    assert quick.json()["footprint"]["route"]["upstream"] == "b"
    assert "a (full)" in proxy.row(quick.headers["x-request-id"])["route"]["reason"]
    worker.join(timeout=30)
    assert slow["answer"].json()["footprint"]["route"]["upstream"] == "a"
    assert proxy.routing()["a"]["in_flight"] == 0


def test_a_killed_upstream_is_routed_around_and_its_circuit_opens_and_half_opens(
    two_upstreams: Any, gateway: Any, tmp_path: Path
) -> None:
    a, b = two_upstreams
    proxy = gateway(
        proxy_config(
            tmp_path,
            [upstream_entry("a", a.url, "FR"), upstream_entry("b", b.url, "DE")],
            failure_threshold=2,
            open_s=3.0,
        )
    )
    assert (
        proxy.admin.put(
            "/admin/budgets",
            json={"team": proxy.team, "metric": "requests", "limit": 1000, "period": "day"},
        ).status_code
        == 200
    )
    a.kill()

    whole = proxy.chat()
    assert whole.status_code == 200, whole.text
    assert whole.json()["footprint"]["route"] == {
        "policy": "priority",
        "upstream": "b",
        "candidates": 2,
        "attempts": 2,
    }
    stream = proxy.chat(stream=True)
    assert stream.status_code == 200
    assert "data: [DONE]" in stream.text and "error" not in stream.text
    assert _footprint_comment(stream.text)["route"]["attempts"] == 2
    routing = proxy.routing()
    assert routing["a"]["circuit"] == "open"
    assert routing["b"]["circuit"] == "closed"
    metrics = proxy.client.get("/metrics").text
    assert 'footprint_upstream_circuit_state{upstream="a"} 2.0' in metrics

    # The admin API and CLI show it, with the zone's intensity now (the table here).
    assert proxy.client.get("/admin/upstreams").status_code == 401
    shown = {u["name"]: u for u in proxy.admin.get("/admin/upstreams").json()["data"]}
    assert (shown["a"]["circuit"], shown["a"]["in_flight"], shown["a"]["zone"]) == ("open", 0, "FR")
    fr = IntensityTable.shipped().lookup("FR").gco2e_per_kwh
    assert (shown["a"]["gco2e_per_kwh"], shown["a"]["intensity_source"]) == (fr, "table")
    assert shown["a"]["measured"] == []  # estimated upstreams: nothing measured to fit
    cli = _cli("upstreams", "--url", proxy.url)
    assert cli.returncode == 0, cli.stderr
    line_a = next(line for line in cli.stdout.splitlines() if line.startswith("a "))
    assert "open" in line_a.split() and "FR" in line_a.split()

    # Open: the request goes straight to b, no attempt wasted on a.
    third = proxy.chat()
    assert third.json()["footprint"]["route"]["attempts"] == 1
    assert "a (circuit open)" in proxy.row(third.headers["x-request-id"])["route"]["reason"]

    # One row per request, whatever the attempts; one budget charge each.
    ids = [r.headers["x-request-id"] for r in (whole, stream, third)]
    rows = [proxy.row(i) for i in ids]
    assert [r["upstream"] for r in rows] == ["b", "b", "b"]
    assert [r["route"]["attempts"] for r in rows] == [2, 2, 1]
    lines = proxy.admin.get("/admin/budgets", params={"team": proxy.team}).json()["data"]
    assert [line["used"] for line in lines if line["metric"] == "requests"] == [3]

    # After open_s the circuit half-opens; a trial that succeeds closes it.
    _wait_until(lambda: proxy.routing()["a"]["circuit"] == "half-open", timeout_s=10)
    # The same port again; killed by this object (a new one would kill nothing, and the
    # restarted upstream outlived the test).
    restarted = UpstreamProcess(port=a.port).start()
    try:
        trial = proxy.chat()
        assert trial.json()["footprint"]["route"]["upstream"] == "a"
        assert proxy.routing()["a"]["circuit"] == "closed"
    finally:
        restarted.kill()


def test_upstream_errors_are_retried_and_the_client_sees_one_answer(
    two_upstreams: Any, gateway: Any, tmp_path: Path
) -> None:
    a, b = two_upstreams
    proxy = gateway(
        proxy_config(tmp_path, [upstream_entry("a", a.url, "FR"), upstream_entry("b", b.url, "DE")])
    )
    failed = proxy.chat("error500")
    assert failed.status_code == 500
    assert failed.json()["error"]["message"] == "model crashed"
    row = proxy.row(failed.headers["x-request-id"])
    assert (row["upstream"], row["status"], row["route"]["attempts"]) == ("b", 500, 2)

    # A stream that fails after its first byte is the client's: never retried.
    dropped = proxy.chat("drop", stream=True)
    assert dropped.status_code == 200
    row = proxy.row(dropped.headers["x-request-id"])
    assert (row["upstream"], row["cancelled"], row["route"]["attempts"]) == ("a", True, 1)
