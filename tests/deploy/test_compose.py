"""The Compose stack and the files it mounts: they exist, parse, and agree with each other."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from proxy.config import load_settings
from tests.deploy.conftest import DEPLOY, ROOT, tool

COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def _interpolate_defaults(text: str, environ: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}, innermost first."""
    pattern = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^{}]*))?\}")
    while True:
        match = pattern.search(text)
        if match is None:
            return text
        name, op, arg = match.groups()
        if name in environ:
            value = environ[name]
        elif op == ":-":
            value = arg
        else:
            raise AssertionError(f"{name} is required: {arg}")
        text = text[: match.start()] + value + text[match.end() :]


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/", "$")):
            mounts.append((source, target))
    return mounts


def _mounted(service: str, target: str) -> Path:
    for source, mount_target in _bind_mounts(SERVICES[service]):
        if mount_target == target:
            return (DEPLOY / source).resolve()
    raise AssertionError(f"{service} mounts nothing at {target}")


def test_compose_has_the_stack_and_two_proxy_replicas() -> None:
    assert {
        "footprint",
        "postgres",
        "redis",
        "otel-collector",
        "prometheus",
        "grafana",
        "llama-cpp",
        "vllm",
        "dcgm-exporter",
    } <= set(SERVICES)
    assert SERVICES["footprint"]["deploy"]["replicas"] >= 2
    assert SERVICES["llama-cpp"]["profiles"] == ["cpu"]
    assert SERVICES["vllm"]["profiles"] == ["gpu"]
    assert SERVICES["dcgm-exporter"]["profiles"] == ["gpu"]


def test_every_file_a_service_mounts_or_builds_from_exists() -> None:
    checked = 0
    for name, service in SERVICES.items():
        for source, _target in _bind_mounts(service):
            if source.startswith("$"):
                continue  # the model directory, on the user's machine
            assert (DEPLOY / source).exists(), f"{name}: {source} is missing"
            checked += 1
        if "build" in service:
            context = DEPLOY / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file(), name
    assert checked >= 8


def test_gpu_profile_traces_vllm_and_samples_dcgm_every_second() -> None:
    vllm = SERVICES["vllm"]["command"]
    endpoint = vllm[vllm.index("--otlp-traces-endpoint") + 1]
    assert urlsplit(endpoint).hostname == "otel-collector"
    dcgm = SERVICES["dcgm-exporter"]["command"]
    assert dcgm[dcgm.index("-c") + 1] == "1000"
    counters = _mounted("dcgm-exporter", dcgm[dcgm.index("-f") + 1])
    fields = [
        line.split(",")[0].strip()
        for line in counters.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" in fields


def test_compose_footprint_toml_loads_and_points_at_compose_services() -> None:
    config = _mounted("footprint", "/etc/footprint/footprint.toml")
    environ = {
        k: _interpolate_defaults(v, {"POSTGRES_PASSWORD": "pw", "FOOTPRINT_ADMIN_KEY": "k"})
        for k, v in SERVICES["footprint"]["environment"].items()
    }
    settings = load_settings(config, environ=environ)
    assert settings.ledger.url == "postgresql://footprint:pw@postgres:5432/footprint"
    assert environ[settings.server.admin_key_env] == "k"
    urls = [settings.ledger.url, settings.budgets.redis_url, settings.telemetry.otlp_endpoint]
    urls += [u.base_url for u in settings.upstreams] + [u.meter.url for u in settings.upstreams]
    for url in filter(None, urls):
        assert urlsplit(url).hostname in SERVICES, url
    ports = {u.name: urlsplit(u.base_url).port for u in settings.upstreams}
    assert ports == {"llama-cpp": 8000, "vllm": 8000}
    served = SERVICES["llama-cpp"]["command"]
    assert settings.upstreams[0].models == [served[served.index("--alias") + 1]]
    served = SERVICES["vllm"]["command"]
    assert settings.upstreams[1].models == [served[served.index("--served-model-name") + 1]]
    assert {u.meter.kind for u in settings.upstreams} == {"estimate", "prometheus"}


def test_load_balancer_sends_traffic_to_the_proxy_service() -> None:
    conf = _mounted("lb", "/etc/nginx/nginx.conf").read_text()
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.MULTILINE)
    assert servers == [("footprint", "8080")]
    assert "proxy_buffering off" in conf  # streams must not wait for the end


def test_prometheus_scrapes_the_replicas_and_loads_the_alert_rules() -> None:
    config = yaml.safe_load(_mounted("prometheus", "/etc/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (dns,) = jobs["footprint"]["dns_sd_configs"]
    assert dns["names"] == ["footprint"] and dns["port"] == 8080
    rules_glob = config["rule_files"][0]
    mounted_rules = [
        target
        for _source, target in _bind_mounts(SERVICES["prometheus"])
        if Path(target).match(rules_glob)
    ]
    assert mounted_rules, "no alert rule file is mounted where rule_files looks"
    for target in mounted_rules:
        rules = yaml.safe_load(_mounted("prometheus", target).read_text())
        assert rules["groups"][0]["rules"]
    assert jobs["dcgm"]["static_configs"][0]["targets"] == ["dcgm-exporter:9400"]


def test_grafana_provisions_the_dashboard_with_its_data_source() -> None:
    providers = yaml.safe_load(
        _mounted("grafana", "/etc/grafana/provisioning/dashboards/footprint.yaml").read_text()
    )["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    dashboard_files = [
        (source, target)
        for source, target in _bind_mounts(SERVICES["grafana"])
        if target.startswith(dashboards_dir + "/") and target.endswith(".json")
    ]
    assert dashboard_files
    datasources = yaml.safe_load(
        _mounted("grafana", "/etc/grafana/provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"]
    uids = {d["uid"] for d in datasources}
    assert datasources[0]["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / dashboard_files[0][0]).read_text())
    used = {panel["datasource"]["uid"] for panel in dashboard["panels"] if "datasource" in panel}
    assert used == uids


def test_collector_pipelines_use_only_what_it_defines() -> None:
    config = yaml.safe_load(_mounted("otel-collector", "/etc/otelcol/config.yaml").read_text())
    for name, pipeline in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{name}: {component} is not defined"
    receiver = config["receivers"]["otlp"]["protocols"]
    assert receiver["http"]["endpoint"].endswith(":4318")  # the proxy's OTLP/HTTP
    assert receiver["grpc"]["endpoint"].endswith(":4317")  # vLLM's OTLP/gRPC
    assert config["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0] in SERVICES


def test_yamllint_passes() -> None:
    result = subprocess.run(
        [tool("yamllint"), "--strict", "-c", str(ROOT / ".yamllint"), "deploy", ".yamllint"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_would_catch_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("key: value\nkey: again\n")
    result = subprocess.run(
        [tool("yamllint"), "--strict", "-c", str(ROOT / ".yamllint"), str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and "duplication" in result.stdout
