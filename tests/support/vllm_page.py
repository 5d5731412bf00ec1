"""A vLLM /metrics page in the real text format, of about the size a production server serves.

`vllm_page(models=…, prompt=…, generation=…, running=…)` writes the three engine metrics
Footprint reads, per model and engine, among the histograms and gauges vLLM publishes beside
them (names and label sets as in `vllm/v1/metrics/loggers.py`), padded with more histogram
series until the page is `target_bytes` long.
"""

from __future__ import annotations

HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
    "vllm:iteration_tokens_total",
)
BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)


def vllm_page(
    *,
    models: dict[str, tuple[float, float, float]],
    target_bytes: int = 0,
) -> str:
    """models: name -> (prompt tokens total, generation tokens total, requests running)."""
    lines: list[str] = []
    families = [
        ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", 2),
        ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", None),
        ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", None),
        ("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", 0),
        ("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", 1),
    ]
    for name, kind, help_text, index in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for model, values in models.items():
            value = values[index] if index is not None else 0.0
            lines.append(f'{name}{{engine="0",model_name="{model}"}} {float(value)}')
        if kind == "counter":
            created = name.removesuffix("_total") + "_created"
            for model in models:
                lines.append(f'{created}{{engine="0",model_name="{model}"}} 1.7e+09')
    round_ = 0
    while True:
        for name in HISTOGRAMS:
            series = f"{name}" if round_ == 0 else f"{name}_{round_}"
            lines.append(f"# HELP {series} Histogram.")
            lines.append(f"# TYPE {series} histogram")
            for model in models:
                labels = f'engine="0",model_name="{model}"'
                for bound in BUCKETS:
                    lines.append(f'{series}_bucket{{{labels},le="{bound}"}} 42.0')
                lines.append(f'{series}_bucket{{{labels},le="+Inf"}} 42.0')
                lines.append(f"{series}_count{{{labels}}} 42.0")
                lines.append(f"{series}_sum{{{labels}}} 12.5")
        round_ += 1
        if sum(len(line) + 1 for line in lines) >= target_bytes:
            break
    return "\n".join(lines) + "\n"
