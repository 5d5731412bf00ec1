"""Metric labels take only configured (or served) model names, on a real `footprint serve`
(issue 11, defect 7): refused names make no series, long names cannot grow every scrape, and
no raw control byte reaches `/metrics`."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.fake_upstream import make_upstream
from tests.support.processes import ProxyProcess, replica_config
from tests.support.servers import ServerThread

MESSAGES = [{"role": "user", "content": "hi"}]


def test_client_chosen_model_names_do_not_become_metric_labels(tmp_path: Path) -> None:
    with ServerThread(make_upstream()) as upstream:
        config = replica_config(upstream.url, f"sqlite:///{tmp_path / 'ledger.db'}", auth="none")
        config["upstreams"][0]["models"] = ["echo"]
        with (
            ProxyProcess("labels", config, tmp_path) as proxy,
            httpx.Client(base_url=proxy.url, timeout=30.0) as client,
        ):
            assert (
                client.post(
                    "/v1/chat/completions", json={"model": "echo", "messages": MESSAGES}
                ).status_code
                == 200
            )
            for i in range(30):
                refused = client.post(
                    "/v1/chat/completions", json={"model": f"nosuch-{i}", "messages": MESSAGES}
                )
                assert refused.status_code == 404
            client.post(
                "/v1/chat/completions", json={"model": "bad\u0000name", "messages": MESSAGES}
            )
            client.post("/v1/chat/completions", json={"model": "m" * 100_000, "messages": MESSAGES})
            scrape = client.get("/metrics")
    assert scrape.status_code == 200
    text = scrape.text
    assert 'model="echo"' in text
    assert "nosuch" not in text
    assert "\x00" not in text
    assert "m" * 300 not in text
    assert len(text) < 200_000
