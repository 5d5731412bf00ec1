"""The circuit breaker: closed → open after the threshold → half-open after open_s → one
trial; its success closes, its failure opens again."""

from __future__ import annotations

from proxy.routing import CircuitBreaker, UpstreamHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_in_a_row_open_the_circuit_and_a_success_between_resets_them() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, open_s=5.0, clock=clock)
    breaker.failed()
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    breaker.failed()
    assert breaker.state == "closed" and breaker.available()
    breaker.failed()
    assert breaker.state == "open" and not breaker.available()
    assert breaker.opens == 1


def test_open_half_opens_after_open_s_and_lets_one_trial_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, open_s=5.0, clock=clock)
    breaker.failed()
    clock.now += 4.9
    assert breaker.state == "open"
    clock.now += 0.2
    assert breaker.state == "half-open" and breaker.available()
    breaker.attempt()
    assert not breaker.available()  # the trial is in flight
    breaker.failed()
    assert breaker.state == "open" and breaker.opens == 2
    clock.now += 5.0
    breaker.attempt()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.available() and breaker.failures == 0


def test_an_abandoned_trial_lets_the_next_one_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, open_s=1.0, clock=clock)
    breaker.failed()
    clock.now += 1.0
    breaker.attempt()
    assert not breaker.available()
    breaker.abandoned()
    assert breaker.state == "half-open" and breaker.available()


def test_full_follows_max_concurrency_and_zero_is_no_limit() -> None:
    health = UpstreamHealth(max_concurrency=2)
    health.in_flight = 1
    assert not health.full
    health.in_flight = 2
    assert health.full
    assert not UpstreamHealth(max_concurrency=0).full


def test_time_to_first_token_prefers_streams_over_the_health_check() -> None:
    health = UpstreamHealth()
    assert health.expected_ttft_s is None
    health.observe_probe(0.04)
    assert health.expected_ttft_s == 0.04
    health.observe_ttft(0.5)
    health.observe_ttft(1.0)
    assert health.expected_ttft_s == 0.5 + 0.2 * (1.0 - 0.5)


def test_bad_routing_settings_stop_the_start_naming_the_key() -> None:
    import pytest

    from proxy.config import ConfigError, parse_settings

    bad = [
        ({"routing": {"policy": "cheapest"}}, "routing.policy"),
        ({"routing": {"max_attempts": 0}}, "routing.max_attempts"),
        ({"routing": {"models": [{"match": "x", "policy": "fastest"}]}}, "routing.models.0.policy"),
        ({"routing": {"health_path": "health"}}, "routing.health_path"),
        (
            {"upstreams": [{"name": "a", "base_url": "http://a/v1", "max_concurrency": -1}]},
            "upstreams.0.max_concurrency",
        ),
    ]
    for data, key in bad:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_settings(data)
