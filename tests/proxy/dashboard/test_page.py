"""The dashboard in a real browser (Debian's Chromium through Playwright) against a real
`footprint serve` on a seeded month of traffic: what it shows equals `footprint report`, a team
key sees only its own team, hostile names stay text, and the CSV equals the API's."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.proxy.dashboard.conftest import ADMIN_KEY, HOSTILE, Board
from tests.support.processes import REPO_ROOT, ProxyProcess, replica_config

FIGURES = ("energy_j", "co2e_g", "water_ml")


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    tab.dialogs = []  # type: ignore[attr-defined]
    tab.console_errors = []  # type: ignore[attr-defined]
    tab.on("dialog", lambda d: (tab.dialogs.append(d.message), d.dismiss()))
    tab.on(
        "console",
        lambda m: tab.console_errors.append(m.text) if m.type in ("error", "warning") else None,
    )
    tab.on("pageerror", lambda e: tab.console_errors.append(str(e)))
    tab.refused = []  # type: ignore[attr-defined]
    tab.on(
        "response",
        lambda r: (
            tab.refused.append((r.url, r.request.headers.get("authorization")))
            if r.status == 401
            else None
        ),
    )
    yield tab
    context.close()


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(url)
    page.locator("#key").focus()
    page.keyboard.type(key)
    page.keyboard.press("Enter")  # keyboard only: the form submits on Enter


def wait_updated(page: Any) -> None:
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.startsWith('Updated')",
        timeout=30_000,
    )


def chart_sums(page: Any, figure: str) -> dict[str, float]:
    """What one chart draws, per dataset (stack), back in the API's unit."""
    sums: dict[str, float] = page.evaluate(
        """(figure) => {
            const canvas = document.querySelector(`#chart-${figure} canvas`);
            const chart = Chart.getChart(canvas);
            const factor = Number(canvas.dataset.factor);
            const out = {};
            for (const d of chart.data.datasets) {
                out[d.label] = d.data.reduce((a, b) => a + b, 0) * factor;
            }
            return out;
        }""",
        figure,
    )
    return sums


def teams_named(value: Any) -> set[str]:
    """Every value of a "team" member anywhere in parsed JSON."""
    if isinstance(value, list):
        return set().union(*(teams_named(v) for v in value)) if value else set()
    if not isinstance(value, dict):
        return set()
    found = {value["team"]} if isinstance(value.get("team"), str) else set()
    return found.union(*(teams_named(v) for v in value.values()))


def report(board: Board, *extra: str) -> dict[str, Any]:
    """`footprint report --format json` for the seeded month, as an operator would run it."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy.cli",
            "report",
            "--url",
            board.url,
            "--from",
            board.start,
            "--to",
            board.end,
            "--format",
            "json",
            *extra,
        ],
        env={**os.environ, "FOOTPRINT_ADMIN_KEY": ADMIN_KEY, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_the_admin_sees_every_team_and_the_charts_total_the_report(
    board: Board, page: Any, artifacts: Path
) -> None:
    sign_in(page, board.page_url(bucket="day", group="team"), ADMIN_KEY)
    wait_updated(page)
    by_team = {r["team"]: r for r in report(board, "--group-by", "team")["data"]}
    assert set(by_team) == {"aurora", "borealis", HOSTILE}
    for figure in FIGURES:
        drawn = chart_sums(page, figure)
        assert set(drawn) == set(by_team)
        for team, row in by_team.items():
            assert drawn[team] == pytest.approx(row[figure], rel=1e-9)
        total = float(page.locator(f"#totals [data-metric={figure}]").get_attribute("data-value"))
        assert total == pytest.approx(sum(r[figure] for r in by_team.values()), rel=1e-9)
    requests = float(page.locator("#totals [data-metric=requests]").get_attribute("data-value"))
    assert requests == sum(r["requests"] for r in by_team.values()) == 3000
    assert "every team" in page.locator("#who").text_content()
    assert page.locator("#idle").is_visible()
    assert page.locator("#idle-list").get_by_text("gpu-east").count() == 1
    assert page.locator("#budget-list tbody tr").count() == 3
    page.screenshot(path=str(artifacts / "admin-by-team.png"), full_page=True)
    page.locator("#group").select_option("model")
    page.wait_for_function(
        "() => Chart.getChart(document.querySelector('#chart-energy_j canvas'))"
        ".data.datasets.some(d => d.label === 'gemma-3-27b')"
    )
    by_model = {r["model"]: r for r in report(board, "--group-by", "model")["data"]}
    drawn = chart_sums(page, "co2e_g")
    assert drawn == pytest.approx({m: r["co2e_g"] for m, r in by_model.items()}, rel=1e-9)
    page.screenshot(path=str(artifacts / "admin-by-model.png"), full_page=True)
    # Nothing refused by the page's own CSP, no script error. The one 401 is the page asking,
    # without a key, whether this proxy needs one (auth = "none" would let it in).
    assert [m for m in page.console_errors if "status of 401" not in m] == []
    assert page.refused == [(f"{board.url}/v1/footprint/me", None)]


def test_a_team_key_never_sees_another_team(board: Board, page: Any, artifacts: Path) -> None:
    bodies: list[str] = []
    urls: list[str] = []

    def keep(response: Any) -> None:
        urls.append(response.url)
        if "/v1/" in response.url:
            bodies.append(response.text())

    page.on("response", keep)
    sign_in(page, board.page_url(bucket="day", group="team"), board.seeded.keys["aurora"])
    wait_updated(page)
    mine = report(board, "--group-by", "team", "--team", "aurora")["data"][0]
    drawn = chart_sums(page, "energy_j")
    assert drawn == pytest.approx({"aurora": mine["energy_j"]}, rel=1e-9)
    page.locator("#group").select_option("upstream")
    wait_updated(page)
    page.locator("#group").select_option("model")
    page.wait_for_function(
        "() => Chart.getChart(document.querySelector('#chart-energy_j canvas'))"
        ".data.datasets.length === 3"
    )
    wait_updated(page)
    page.screenshot(path=str(artifacts / "team-aurora.png"), full_page=True)
    # No other team's name in the page or in any answer it received; every team an answer
    # names is aurora (the hostile name is also a model of aurora's, so it may appear).
    assert "borealis" not in page.content()
    assert bodies and not any("borealis" in body for body in bodies)
    assert teams_named([json.loads(b) for b in bodies]) == {"aurora"}
    assert "Signed in as team aurora" in page.locator("#who").text_content()
    assert not page.locator("#idle").is_visible()  # idle is no team's: not offered
    assert {
        page.locator("#budget-list tbody tr").nth(i).locator("td").first.text_content()
        for i in range(2)
    } == {"co2e_g per UTC month", "requests per UTC day"}
    # The key is sent as a header only: never in a URL, localStorage or the proxy's log.
    key = board.seeded.keys["aurora"]
    assert not any(key in u for u in urls) and key not in page.url
    assert page.evaluate("localStorage.length") == 0
    assert key not in board.proxy.log_tail(1_000_000)


def test_a_wrong_key_gets_a_clear_message(board: Board, page: Any) -> None:
    sign_in(page, board.page_url(), "fp-this-is-not-a-key")
    message = page.locator("#sign-in-error")
    message.wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('#sign-in-error').textContent !== ''")
    assert "That key was refused" in message.text_content()
    assert not page.locator("#board").is_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_hostile_names_render_as_text_and_run_nothing(board: Board, page: Any) -> None:
    sign_in(page, board.page_url(bucket="month", group="team"), ADMIN_KEY)
    wait_updated(page)
    page.locator("#chart-energy_j details summary").click()
    assert page.locator("#chart-energy_j table").get_by_text(HOSTILE, exact=True).count() == 1
    assert page.locator("#top-list").get_by_text(HOSTILE, exact=True).count() >= 1
    page.locator("#group").select_option("model")
    page.wait_for_function(
        "(name) => [...document.querySelectorAll('#chart-energy_j th')]"
        ".some(th => th.textContent === name)",
        arg=HOSTILE,
    )
    assert page.locator("img").count() == 0
    assert page.dialogs == []


def test_the_csv_download_equals_the_api(board: Board, page: Any, artifacts: Path) -> None:
    sign_in(page, board.page_url(bucket="day", group="model"), ADMIN_KEY)
    wait_updated(page)
    with (
        page.expect_request(lambda r: "format=csv" in r.url) as asked,
        page.expect_download() as download,
    ):
        page.locator("#csv").click()
    saved = artifacts / "series.csv"
    download.value.save_as(saved)
    query = {k: v[0] for k, v in parse_qs(urlsplit(asked.value.url).query).items()}
    assert query["bucket"] == "day" and query["group_by"] == "model"
    assert query["from"].startswith(board.start) and query["to"].startswith(board.end)
    api = httpx.get(
        f"{board.url}/v1/footprint/usage/series",
        params=query,
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert saved.read_text() == api.text
    rows = list(csv.DictReader(io.StringIO(api.text)))
    assert sum(int(r["requests"]) for r in rows) == 3000


def test_a_top_request_opens_its_record_and_its_trace(board: Board, page: Any) -> None:
    sign_in(page, board.page_url(), ADMIN_KEY)
    wait_updated(page)
    first = page.locator("#top-list a", has_text="request").first
    assert first.get_attribute("href").startswith("/v1/footprint/requests/seed-")
    first.click()
    page.locator("#record pre").wait_for()
    record = json.loads(page.locator("#record pre").text_content())
    assert record["object"] == "footprint.request"
    trace = page.locator("#top-list a", has_text="trace").first
    trace.click()
    page.wait_for_function(
        "() => document.querySelector('#record pre')?.textContent.includes('footprint.trace')"
    )
    assert json.loads(page.locator("#record pre").text_content())["object"] == "footprint.trace"


def test_the_page_refreshes_itself_and_pauses_when_hidden(board: Board, page: Any) -> None:
    sign_in(page, board.page_url(), ADMIN_KEY)
    wait_updated(page)
    with page.expect_request(lambda r: "/usage/series" in r.url, timeout=30_000):
        pass  # a refresh comes by itself
    page.evaluate(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    page.wait_for_timeout(1_000)  # let a refresh already under way finish
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    page.wait_for_timeout(11_000)  # two refresh periods
    assert [u for u in seen if "/v1/" in u] == []


def test_the_page_is_served_with_a_strict_policy(board: Board) -> None:
    got = httpx.get(f"{board.url}/dashboard")
    policy = got.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "default-src 'none'" in policy
    assert got.headers["x-content-type-options"] == "nosniff"
    script = httpx.get(f"{board.url}/dashboard/static/dashboard.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{board.url}/dashboard/static/..%2Fapp.py").status_code == 404


def test_the_page_reads_on_a_phone(board: Board, browser: Any, artifacts: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone = context.new_page()
    try:
        sign_in(phone, board.page_url(bucket="day", group="team"), ADMIN_KEY)
        wait_updated(phone)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # nothing wider than the screen; wide tables scroll inside
        phone.screenshot(path=str(artifacts / "phone.png"), full_page=True)
    finally:
        context.close()


def test_a_proxy_without_keys_opens_without_one(board: Board, page: Any, tmp_path: Path) -> None:
    config = replica_config("http://127.0.0.1:9", board.seeded.url, auth="none")
    with ProxyProcess("open", config, tmp_path) as open_proxy:
        page.goto(f"{open_proxy.url}/dashboard#from={board.start}&to={board.end}")
        wait_updated(page)
        assert 'auth = "none"' in page.locator("#who").text_content()
        assert not page.locator("#sign-out").is_visible()
        # Team "default" sent nothing in the seeded month; no other team is shown.
        assert page.locator("#totals [data-metric=requests]").get_attribute("data-value") == "0"
        assert "aurora" not in page.content()


def test_the_other_traffic_account_gets_a_column_when_the_api_carries_it(
    board: Board, page: Any
) -> None:
    page.goto(f"{board.url}/dashboard")
    headers: list[str] = page.evaluate(
        """async () => {
            const views = await import('/dashboard/static/views.js');
            const node = document.createElement('div');
            const idle = [{upstream: 'gpu-east', energy_j: 10, co2e_g: 1, water_ml: 1,
                           other_energy_j: 2500}];
            views.renderIdle(node, idle, [{upstream: 'gpu-east', energy_j: 99}]);
            const cells = [...node.querySelectorAll('tbody td')].map(td => td.textContent);
            const heads = [...node.querySelectorAll('th[scope=col]')].map(th => th.textContent);
            views.renderIdle(node, [{...idle[0], other_energy_j: undefined}], []);
            const without = [...node.querySelectorAll('th[scope=col]')].length;
            return [...heads, '|', ...cells, '|', String(without)];
        }"""
    )
    assert headers[:4] == ["upstream", "requests' energy", "idle energy", "other traffic's energy"]
    assert headers[headers.index("|") + 1 : headers.index("|") + 4] == ["99 J", "10 J", "2.5 kJ"]
    assert headers[-1] == "5"  # without other_energy_j: no such column
