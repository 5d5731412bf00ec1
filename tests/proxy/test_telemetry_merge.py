"""Prometheus texts of several workers merged into one `/metrics` answer."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from proxy.telemetry.merge import merge


def _worker(requests: float, seconds: float, info: float = 1.0) -> bytes:
    return f"""# HELP target_info Target metadata
# TYPE target_info gauge
target_info{{service_name="footprint"}} {info}
# HELP footprint_requests_total Requests
# TYPE footprint_requests_total counter
footprint_requests_total{{team="a",model="m"}} {requests}
# HELP footprint_duration_seconds Duration
# TYPE footprint_duration_seconds histogram
footprint_duration_seconds_bucket{{le="0.5"}} {requests}
footprint_duration_seconds_bucket{{le="+Inf"}} {requests}
footprint_duration_seconds_count {requests}
footprint_duration_seconds_sum {seconds}
""".encode()


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_and_histograms_are_summed_and_gauges_taken_once() -> None:
    merged = _samples(merge([_worker(3, 0.25), _worker(4, 1.5)]))

    assert merged[("footprint_requests_total", (("model", "m"), ("team", "a")))] == 7
    assert merged[("footprint_duration_seconds_bucket", (("le", "0.5"),))] == 7
    assert merged[("footprint_duration_seconds_count", ())] == 7
    assert merged[("footprint_duration_seconds_sum", ())] == 1.75
    assert merged[("target_info", (("service_name", "footprint"),))] == 1


def test_one_worker_merged_is_itself_and_none_is_empty() -> None:
    assert _samples(merge([_worker(5, 2.0)])) == _samples(_worker(5, 2.0))
    assert merge([]) == b""


def test_label_values_with_quotes_and_newlines_survive() -> None:
    text = b'# TYPE x_total counter\nx_total{team="a\\"b\\nc"} 1.0\n'
    assert _samples(merge([text, text])) == {("x_total", (("team", 'a"b\nc'),)): 2.0}


def test_the_gpus_own_readings_are_taken_once_not_per_worker() -> None:
    gpu = b"""# HELP hw_energy_joules_total Energy consumed by the component
# TYPE hw_energy_joules_total counter
hw_energy_joules_total{hw_id="gpu0"} 5000.0
"""
    assert _samples(merge([gpu, gpu])) == {("hw_energy_joules_total", (("hw_id", "gpu0"),)): 5000.0}
