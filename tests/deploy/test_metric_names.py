"""Every metric the Grafana dashboard and the alert rules query is one a running proxy exports,
with the labels they match on: start the proxy, send requests, scrape /metrics, compare."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import parse_settings
from tests.deploy.conftest import DEPLOY
from tests.deploy.promql import (
    Selector,
    dashboard_queries,
    dashboard_variables,
    parse,
    selectors,
)
from tests.meters.fake_pynvml import FakeNvml
from tests.proxy.conftest import start_proxy  # noqa: F401  (fixture)
from tests.support.fake_upstream import UpstreamLog, make_upstream
from tests.support.servers import ServerThread, free_port

DASHBOARD = json.loads((DEPLOY / "grafana/dashboards/footprint.json").read_text())
RULES = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
# Series Prometheus makes itself for every target.
PROMETHEUS_OWN = {"up": frozenset({"job", "instance"})}


def _rule_queries() -> list[str]:
    return [rule["expr"] for group in RULES["groups"] for rule in group["rules"]]


def test_the_extractor_finds_names_and_matchers() -> None:
    found = selectors(
        'sum by (le) (rate(a_bucket{x="1", y=~"$team"}[$__rate_interval])) '
        "/ on (z) group_left b * 3.6e6 > bool 0 and count(c offset 5m)"
    )
    assert found == [
        Selector("a_bucket", frozenset({"x", "y"})),
        Selector("b", frozenset()),
        Selector("c", frozenset()),
    ]
    with pytest.raises(ValueError):
        parse("sum(rate(x[5m])")


def test_dashboard_and_rules_query_something() -> None:
    assert len(dashboard_queries(DASHBOARD)) >= 20
    assert len(_rule_queries()) >= 5


@pytest.fixture
def upstream() -> Iterator[ServerThread]:
    with ServerThread(make_upstream(UpstreamLog(), delay_s=3.0)) as server:
        yield server


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def exported(
    start_proxy: Callable[..., ServerThread],  # noqa: F811
    upstream: ServerThread,
    tmp_path: Path,
) -> dict[str, set[str]]:
    """Sample name -> label names, from a proxy that has served, failed and streamed."""
    settings = parse_settings(
        {
            "server": {"auth": "none"},
            "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.db'}"},
            "metering": {"tick_s": 0.05},
            "upstreams": [
                {
                    "name": "gpu",
                    "base_url": f"{upstream.url}/v1",
                    "models": ["echo", "error500"],
                    "meter": {"kind": "nvml", "gpus": [0]},
                    "hardware": {"active_params_b": 8.0, "total_params_b": 8.0},
                },
                {
                    "name": "gone",
                    "base_url": f"http://127.0.0.1:{free_port()}/v1",
                    "models": ["gone"],
                    "connect_timeout_s": 1.0,
                    "meter": {"kind": "estimate"},
                    "hardware": {"active_params_b": 8.0},
                },
            ],
        }
    )
    fake = FakeNvml(idle_w=60.0, w_per_request=2.0, j_per_token=0.5, j_per_prompt_token=0.05)
    proxy = start_proxy(settings, nvml=fake.module)
    chat = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16}
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        assert client.post("/v1/chat/completions", json={**chat, "model": "echo"}).is_success
        streamed = client.post(
            "/v1/chat/completions",
            json={
                **chat,
                "model": "echo",
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        assert streamed.is_success and "[DONE]" in streamed.text
        assert (
            client.post("/v1/chat/completions", json={**chat, "model": "error500"}).status_code
            == 500
        )
        assert (
            client.post("/v1/chat/completions", json={**chat, "model": "gone"}).status_code == 502
        )

        def scrape() -> dict[str, set[str]]:
            response = client.get("/metrics")
            assert response.status_code == 200
            names: dict[str, set[str]] = {}
            for family in text_string_to_metric_families(response.text):
                for sample in family.samples:
                    names.setdefault(sample.name, set()).update(sample.labels)
            return names

        # The meter's observable series appear once it has read the (fake) GPU.
        _wait_for(lambda: "hw_energy_joules_total" in scrape(), "the GPU meter's series")
        return scrape()


def _check(used: list[Selector], exported: dict[str, set[str]], where: str) -> list[str]:
    problems = []
    for selector in used:
        available = exported.get(selector.metric)
        if available is None:
            available = set(PROMETHEUS_OWN.get(selector.metric, ()))
            if selector.metric not in PROMETHEUS_OWN:
                problems.append(f"{where}: {selector.metric} is not exported")
                continue
        missing = selector.labels - available
        if missing:
            problems.append(f"{where}: {selector.metric} has no label {sorted(missing)}")
    return problems


def test_dashboard_queries_only_exported_metrics_and_labels(
    exported: dict[str, set[str]],
) -> None:
    problems: list[str] = []
    for expr in dashboard_queries(DASHBOARD):
        problems += _check(selectors(expr), exported, expr[:60])
    problems += _check(dashboard_variables(DASHBOARD), exported, "template variables")
    assert not problems, "\n".join(problems)


def test_alert_rules_query_only_exported_metrics_and_labels(
    exported: dict[str, set[str]],
) -> None:
    problems: list[str] = []
    for group in RULES["groups"]:
        for rule in group["rules"]:
            problems += _check(selectors(rule["expr"]), exported, rule["alert"])
    assert not problems, "\n".join(problems)


def test_the_comparison_would_catch_a_wrong_name(exported: dict[str, set[str]]) -> None:
    wrong = selectors('sum(rate(footprint_energy_joules{team="a"}[5m])) + footprint_water_ml_total')
    assert len(_check(wrong, exported, "x")) == 2
    assert _check(selectors('footprint_energy_joules_total{tean="a"}'), exported, "x")
