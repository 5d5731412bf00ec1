"""The Kubernetes manifests: schema-valid for a pinned Kubernetes version, and consistent with
each other and with the proxy (ports, probes, labels, config file, secrets)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from proxy.config import load_settings
from tests.deploy.conftest import (
    DEPLOY,
    KUBERNETES_VERSION,
    k8s_documents,
    k8s_kind,
    k8s_one,
)

# Kinds from CRDs that kubernetes-validate has no schema for; checked by hand below.
CRD_KINDS = {"ServiceMonitor"}
DOCS = k8s_documents()


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _proxy() -> dict[str, Any]:
    return k8s_one("Deployment", "footprint")


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def test_every_kind_the_issue_asks_for_is_there() -> None:
    kinds = {doc["kind"] for _p, _i, doc in DOCS}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "DaemonSet",
        "ServiceMonitor",
    } <= kinds


@pytest.mark.parametrize(
    "doc",
    [d for _p, _i, d in DOCS if d["kind"] not in CRD_KINDS],
    ids=[f"{p}#{i}" for p, i, d in DOCS if d["kind"] not in CRD_KINDS],
)
def test_manifest_validates_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_a_broken_deployment() -> None:
    broken = copy.deepcopy(_proxy())
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    misspelt = copy.deepcopy(_proxy())
    misspelt["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)


def test_proxy_runs_at_least_two_replicas_spread_over_nodes() -> None:
    spec = _proxy()["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    terms = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert any(
        t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        and _selects(t["podAffinityTerm"]["labelSelector"]["matchLabels"], pod_labels)
        for t in terms
    )
    assert _selects(spec["selector"]["matchLabels"], pod_labels)


def test_proxy_pod_is_locked_down() -> None:
    pod = _proxy()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = _container(_proxy())
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_probes_hit_the_proxys_health_endpoints_on_its_port() -> None:
    container = _container(_proxy())
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    config = _mounted_config()
    assert ports["http"] == config.server.port
    assert config.server.host == "0.0.0.0"


def _mounted_config_path(tmp: Path | None = None) -> tuple[str, str]:
    """(path the container reads, ConfigMap key) for footprint.toml."""
    deployment = _proxy()
    container = _container(deployment)
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume and config_path.startswith(mount["mountPath"] + "/"):
            assert volume["configMap"]["name"] == "footprint-config"
            return config_path, config_path[len(mount["mountPath"]) + 1 :]
    raise AssertionError(f"{config_path} is not on a ConfigMap volume")


def _mounted_config(environ: dict[str, str] | None = None) -> Any:
    import tempfile

    _path, key = _mounted_config_path()
    text = k8s_one("ConfigMap", "footprint-config")["data"][key]
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / key
        file.write_text(text)
        return load_settings(file, environ=environ or {})


def test_configmap_footprint_toml_loads_with_postgresql_and_redis() -> None:
    settings = _mounted_config()
    assert settings.ledger.url.startswith("postgresql://")
    assert settings.budgets.redis_url.startswith("redis://")
    assert settings.upstreams, "the cluster config relays to at least one upstream"
    assert settings.telemetry.otlp_endpoint


def test_secret_backed_environment_overrides_reach_the_settings() -> None:
    env = _container(_proxy())["env"]
    from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert {ref["name"] for ref in from_secret.values()} == {"footprint-secrets"}
    # The names must be ones the settings loader reads: feed them values and see them arrive.
    values = {
        "FOOTPRINT_LEDGER__URL": "postgresql://footprint:s3cret@db.internal:5432/footprint",
        "FOOTPRINT_BUDGETS__REDIS_URL": "redis://:s3cret@cache.internal:6379/1",
    }
    assert set(values) <= set(from_secret)
    settings = _mounted_config(values)
    assert settings.ledger.url == values["FOOTPRINT_LEDGER__URL"]
    assert settings.budgets.redis_url == values["FOOTPRINT_BUDGETS__REDIS_URL"]
    assert _mounted_config({}).server.admin_key_env in from_secret


def test_no_secret_values_are_committed() -> None:
    assert not k8s_kind("Secret")
    readme = (DEPLOY / "README.md").read_text()
    for entry in _container(_proxy())["env"]:
        if "valueFrom" in entry:
            key = entry["valueFrom"]["secretKeyRef"]["key"]
            assert f"--from-literal={key}=" in readme, f"README does not say how to set {key}"
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".yml", ".toml", ".env"}:
            text = path.read_text()
            assert not re.search(r"://[^:/@\s]+:[^@\s${}]+@", text.replace("PASSWORD@", "")), path


def test_service_hpa_pdb_and_network_policy_point_at_the_proxy_pods() -> None:
    deployment = _proxy()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in _container(deployment)["ports"]}
    service = k8s_one("Service", "footprint")
    assert _selects(service["spec"]["selector"], pod_labels)
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    hpa = k8s_one("HorizontalPodAutoscaler", "footprint")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "footprint",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = k8s_one("PodDisruptionBudget", "footprint")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    policy = k8s_one("NetworkPolicy", "footprint")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} <= port_names
    # Egress must let the proxy reach what footprint.toml points it at.
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    settings = _mounted_config()
    needed = [settings.ledger.url, settings.budgets.redis_url, settings.telemetry.otlp_endpoint]
    needed += [u.base_url for u in settings.upstreams]
    needed += [u.meter.url for u in settings.upstreams if u.meter.url]
    from urllib.parse import urlsplit

    for url in needed:
        assert urlsplit(url).port in egress_ports, url
    for resource in (deployment, service, hpa, pdb, policy):
        assert resource["metadata"]["namespace"] == "footprint"


def test_gpu_agent_daemonset_runs_the_same_image_on_gpu_nodes() -> None:
    daemonset = k8s_one("DaemonSet", "footprint-agent")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    container = _container(daemonset)
    assert container["image"] == _container(_proxy())["image"]
    args = container["args"]
    assert args[0] == "agent"
    port = int(args[args.index("--port") + 1])
    assert {p["containerPort"] for p in container["ports"]} == {port}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "nvidia.com/gpu" not in container["resources"].get("requests", {})
    service = k8s_one("Service", "footprint-agent")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert _selects(service["spec"]["selector"], pod_labels)
    # The CLI accepts exactly these arguments.
    from proxy.cli import build_parser

    parsed = build_parser().parse_args(args)
    assert (parsed.command, parsed.port, parsed.host) == ("agent", port, "0.0.0.0")


def test_service_monitors_select_services_and_their_named_ports() -> None:
    monitors = k8s_kind("ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"footprint", "footprint-agent"}
    services = k8s_kind("Service")
    for monitor in monitors:
        spec = monitor["spec"]
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        matched = [
            s
            for s in services
            if s["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
            and _selects(spec["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert len(matched) == 1, monitor["metadata"]["name"]
        port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
