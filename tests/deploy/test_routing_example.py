"""deploy/routing/two-regions.toml: it loads, and its model group is two upstreams in two
zones routed by carbon, other models by priority."""

from __future__ import annotations

from pathlib import Path

from proxy.config import load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "routing" / "two-regions.toml"


def test_the_two_region_example_is_a_lowest_carbon_model_group() -> None:
    settings = load_settings(EXAMPLE, environ={})
    serving = [u for u in settings.upstreams if "llama-3.1-8b-instruct" in u.models]
    assert [(u.name, u.zone) for u in serving] == [("vllm-paris", "FR"), ("vllm-warsaw", "PL")]
    assert all(u.max_concurrency > 0 for u in serving)
    assert settings.routing.policy_for("llama-3.1-8b-instruct") == "lowest-carbon"
    assert settings.routing.policy_for("qwen2.5-0.5b") == "priority"
    assert settings.intensity.provider == "electricitymaps"
