"""The engine activity source: vLLM's three metrics from a real HTTP endpoint, only those."""

from __future__ import annotations

import pytest

from meters import MeterError
from meters.sources.engine import (
    EngineActivitySource,
    NoEngineCounters,
    parse_engine_page,
)
from tests.meters.fake_pynvml import ManualClock
from tests.meters.test_sources_prometheus import Exporter, exporter  # noqa: F401 (fixture)
from tests.support.vllm_page import vllm_page


def test_a_vllm_page_gives_the_three_engine_figures_summed_over_models() -> None:
    page = vllm_page(models={"llama": (1200, 3400, 3), "qwen": (100, 50, 1)}, target_bytes=100_000)
    assert len(page) >= 100_000
    counters = parse_engine_page(page)
    assert counters is not None
    assert counters.prompt_tokens == 1300.0
    assert counters.generation_tokens == 3450.0
    assert counters.running == 4.0


def test_similar_names_and_comments_are_not_read() -> None:
    page = (
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
        'vllm:generation_tokens_total_extra{a="b"} 99\n'
        'vllm:generation_tokens_created{model_name="m"} 1.7e9\n'
        'vllm:generation_tokens_total{model_name="m",engine="0"} 7.0 1700000000000\n'
        "vllm:prompt_tokens_total 3\n"
    )
    counters = parse_engine_page(page)
    assert counters is not None
    assert (counters.prompt_tokens, counters.generation_tokens, counters.running) == (3, 7, 0)


def test_a_page_without_engine_counters_says_so() -> None:
    assert parse_engine_page('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"} 5\n') is None


def test_a_garbled_value_is_an_error_not_a_zero() -> None:
    with pytest.raises(MeterError):
        parse_engine_page('vllm:generation_tokens_total{model_name="m"} lots\n')
    with pytest.raises(MeterError):
        parse_engine_page("vllm:generation_tokens_total NaN\n")


def test_the_source_reads_cumulative_tokens_and_absorbs_a_server_restart(
    exporter: Exporter,  # noqa: F811
) -> None:
    clock = ManualClock()
    source = EngineActivitySource(exporter.url, clock=clock)
    exporter.body = vllm_page(models={"m": (100, 1000, 2)})
    first = source.read()
    assert (first.prompt_tokens, first.generation_tokens, first.running) == (100, 1000, 2)
    assert first.weight(0.1) == pytest.approx(1010.0)
    exporter.body = vllm_page(models={"m": (150, 1100, 1)})
    clock.advance(0.1)
    second = source.read()
    assert (second.prompt_tokens, second.generation_tokens) == (150, 1100)
    assert second.time_s - first.time_s == pytest.approx(0.1)
    exporter.body = vllm_page(models={"m": (10, 20, 1)})  # restarted: counts from zero again
    third = source.read()
    assert (third.prompt_tokens, third.generation_tokens) == (160, 1120)
    assert source.resets == 1
    source.close()


def test_failures_are_meter_errors(exporter: Exporter) -> None:  # noqa: F811
    source = EngineActivitySource(exporter.url, timeout_s=0.5)
    exporter.body = "llamacpp:tokens_predicted_total 5\n"
    with pytest.raises(NoEngineCounters):
        source.read()
    exporter.status = 503
    with pytest.raises(MeterError, match="HTTP 503"):
        source.read()
    source.close()
    gone = EngineActivitySource("http://127.0.0.1:9/metrics", timeout_s=0.5)
    with pytest.raises(MeterError, match="unreachable"):
        gone.read()
    gone.close()
