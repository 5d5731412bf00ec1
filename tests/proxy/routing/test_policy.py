"""The routing decision, pure: each policy's order, full and open upstreams passed over, the
latency guard."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.routing import Candidate, order_candidates


def _c(name: str, **kw: object) -> Candidate:
    facts: dict[str, object] = {
        "available": True,
        "full": False,
        "in_flight": 0,
        "ttft_s": None,
        "co2e_g": None,
    }
    facts.update(kw)
    return Candidate(name=name, **facts)  # type: ignore[arg-type]


def _names(cands: list[Candidate], order: tuple[int, ...]) -> list[str]:
    return [cands[i].name for i in order]


def test_priority_is_configuration_order() -> None:
    cands = [_c("a"), _c("b"), _c("c")]
    assert _names(cands, order_candidates("priority", cands).order) == ["a", "b", "c"]


def test_full_and_open_upstreams_go_last_full_before_open() -> None:
    cands = [_c("a", available=False), _c("b", full=True), _c("c")]
    ordering = order_candidates("priority", cands)
    assert _names(cands, ordering.order) == ["c", "b", "a"]
    assert "b (full)" in ordering.reason and "a (circuit open)" in ordering.reason


def test_round_robin_turns_through_the_ready_ones() -> None:
    cands = [_c("a"), _c("b"), _c("c", full=True)]
    firsts = [_names(cands, order_candidates("round-robin", cands, t).order)[0] for t in range(4)]
    assert firsts == ["a", "b", "a", "b"]


def test_least_busy_takes_the_fewest_in_flight_ties_by_priority() -> None:
    cands = [_c("a", in_flight=3), _c("b", in_flight=1), _c("c", in_flight=1)]
    assert _names(cands, order_candidates("least-busy", cands).order) == ["b", "c", "a"]


def test_lowest_carbon_takes_the_lowest_expected_unknown_last() -> None:
    cands = [_c("pl", co2e_g=0.5), _c("x"), _c("fr", co2e_g=0.03)]
    ordering = order_candidates("lowest-carbon", cands)
    assert _names(cands, ordering.order) == ["fr", "pl", "x"]
    assert "0.03" in ordering.reason and "worst 0.5" in ordering.reason


def test_the_latency_guard_keeps_a_slow_green_region_back() -> None:
    cands = [_c("near", co2e_g=0.5, ttft_s=0.1), _c("far", co2e_g=0.01, ttft_s=0.9)]
    guarded = order_candidates("lowest-carbon", cands, max_extra_ttft_s=0.5)
    assert _names(cands, guarded.order) == ["near", "far"]
    assert "far (slow)" in guarded.reason
    loose = order_candidates("lowest-carbon", cands, max_extra_ttft_s=1.0)
    assert _names(cands, loose.order) == ["far", "near"]
    off = order_candidates("lowest-carbon", cands)
    assert _names(cands, off.order) == ["far", "near"]


candidate = st.builds(
    Candidate,
    name=st.text(min_size=1, max_size=3),
    available=st.booleans(),
    full=st.booleans(),
    in_flight=st.integers(0, 5),
    ttft_s=st.none() | st.floats(0, 5),
    co2e_g=st.none() | st.floats(0, 10),
)


@given(
    st.sampled_from(["priority", "round-robin", "least-busy", "lowest-carbon"]),
    st.lists(candidate, min_size=1, max_size=10),
    st.integers(0, 100),
    st.floats(0, 2),
)
def test_every_policy_tries_each_candidate_once_ready_ones_first(
    policy: str, cands: list[Candidate], turn: int, guard_s: float
) -> None:
    order = order_candidates(policy, cands, turn, guard_s).order  # type: ignore[arg-type]
    assert sorted(order) == list(range(len(cands)))
    ready = [cands[i].available and not cands[i].full for i in order]
    assert ready == sorted(ready, reverse=True)
