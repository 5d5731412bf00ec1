"""A simulated inference engine on one GPU, whose true energy per request is known.

Power model: `idle_w` always, plus an impulse of `j_per_token` per output token and
`j_per_prompt_token` per prompt token at the moment the engine produces them (a prompt's tokens
with the request's first output token, as vLLM counts them). The engine's counters move the
same way: `vllm:prompt_tokens_total`, `vllm:generation_tokens_total` and
`vllm:num_requests_running`, and the GPU's cumulative energy is published as DCGM's
`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` in mJ, optionally only every `counter_step_s` (DCGM's
exporter collects about once a second), in the real Prometheus text format.

Ground truth, as in `tests/meters/fake_pynvml.py`: a token's work is taken to have happened
evenly since the request's previous token (since its start, for the first), so each request
has a dynamic power at every instant; the idle power drawn while requests are in flight is
split among them in proportion to it. Idle power with nothing in flight is idle. So
Σ truth + idle = the counter, and a request that did not pass the proxy still has a truth.

Time is given by the caller (`clock`), so unit tests drive it by hand and the HTTP server by
the monotonic clock. Thread-safe: the server's handlers and the test read it concurrently.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MJ_PER_J = 1000.0


@dataclass
class _Request:
    start_s: float
    prompt_tokens: int
    token_times_s: list[float] = field(default_factory=list)  # one entry per chunk
    token_counts: list[int] = field(default_factory=list)
    end_s: float | None = None


class EngineSim:
    """One GPU, one engine; see the module docstring."""

    def __init__(
        self,
        *,
        idle_w: float = 100.0,
        j_per_token: float = 1.0,
        j_per_prompt_token: float = 0.1,
        counter_step_s: float = 0.0,
        model: str = "sim",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_w = idle_w
        self.j_per_token = j_per_token
        self.j_per_prompt_token = j_per_prompt_token
        self.counter_step_s = counter_step_s
        self.model = model
        self.clock = clock
        self._lock = threading.Lock()
        self._t0 = clock()
        self._impulse_j = 0.0
        self._prompt_total = 0
        self._generation_total = 0
        self._requests: dict[str, _Request] = {}
        self.metrics_reads = 0

    # -- the workload ---------------------------------------------------------------------

    def started(self, request_id: str, prompt_tokens: int) -> None:
        """A request reached the engine now."""
        with self._lock:
            self._requests[request_id] = _Request(self.clock(), prompt_tokens)

    def token(self, request_id: str, count: int = 1) -> None:
        """The engine produced `count` output tokens of the request now."""
        with self._lock:
            request = self._requests[request_id]
            now_s = self.clock()
            if not request.token_times_s:
                self._prompt_total += request.prompt_tokens
                self._impulse_j += self.j_per_prompt_token * request.prompt_tokens
            request.token_times_s.append(now_s)
            request.token_counts.append(count)
            self._generation_total += count
            self._impulse_j += self.j_per_token * count

    def ended(self, request_id: str) -> None:
        """The request left the engine now."""
        with self._lock:
            self._requests[request_id].end_s = self.clock()

    @property
    def impulse_j(self) -> float:
        """Every token's energy so far (the counter less its idle power)."""
        with self._lock:
            return self._impulse_j

    # -- what the server publishes --------------------------------------------------------

    def energy_j(self, at_s: float | None = None) -> float:
        """Cumulative GPU energy now (J), as the GPU's own counter would hold it."""
        with self._lock:
            now_s = self.clock() if at_s is None else at_s
            return self.idle_w * (now_s - self._t0) + self._impulse_j

    def metrics_text(self) -> str:
        """The /metrics page: DCGM's energy counter and vLLM's three engine metrics."""
        with self._lock:
            self.metrics_reads += 1
            now_s = self.clock()
            running = sum(1 for r in self._requests.values() if r.end_s is None)
            prompt, generation = self._prompt_total, self._generation_total
            energy_j = self.idle_w * (now_s - self._t0) + self._impulse_j
            if self.counter_step_s > 0:
                # The exporter's value is the one it collected at its last step.
                steps = int((now_s - self._t0) / self.counter_step_s)
                step_s = self._t0 + steps * self.counter_step_s
                energy_j = self.idle_w * (step_s - self._t0) + self._impulse_before(step_s)
        labels = f'model_name="{self.model}",engine="0"'
        return (
            "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot "
            "(in mJ).\n"
            "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n"
            f'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{gpu="0",UUID="GPU-sim",'
            f'modelName="NVIDIA H100 80GB HBM3",Hostname="sim"}} {int(energy_j * MJ_PER_J)}\n'
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{labels}}} {float(running)}\n"
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f"vllm:prompt_tokens_total{{{labels}}} {float(prompt)}\n"
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f"vllm:generation_tokens_total{{{labels}}} {float(generation)}\n"
        )

    def _impulse_before(self, at_s: float) -> float:
        total = 0.0
        for request in self._requests.values():
            times = request.token_times_s
            if times and times[0] <= at_s:
                total += self.j_per_prompt_token * request.prompt_tokens
            total += self.j_per_token * sum(
                request.token_counts[: bisect.bisect_right(times, at_s)]
            )
        return total

    # -- ground truth ---------------------------------------------------------------------

    def truth(self, at_s: float | None = None) -> tuple[dict[str, float], float, float]:
        """(true energy per request, idle energy, total energy) from the start to `at_s`."""
        with self._lock:
            end_s = self.clock() if at_s is None else at_s
            # Each request's dynamic power: piecewise constant between its chunks.
            pieces: dict[str, list[tuple[float, float, float]]] = {}
            for rid, request in self._requests.items():
                previous_s = request.start_s
                rows = []
                for index, token_s in enumerate(request.token_times_s):
                    if token_s > end_s:
                        break
                    work_j = self.j_per_token * request.token_counts[index]
                    if index == 0:
                        work_j += self.j_per_prompt_token * request.prompt_tokens
                    rows.append((previous_s, token_s, work_j))
                    previous_s = token_s
                pieces[rid] = rows
            dynamic = {rid: sum(w for _, _, w in rows) for rid, rows in pieces.items()}
            # The idle power of each span between breakpoints goes to the requests whose work
            # spans it, by their dynamic power there.
            points = {self._t0, end_s}
            for rows in pieces.values():
                for a, b, _ in rows:
                    points.update((a, b))
            edges = sorted(p for p in points if self._t0 <= p <= end_s)
            spans = len(edges) - 1
            densities: list[dict[str, float]] = [{} for _ in range(max(spans, 0))]
            for rid, rows in pieces.items():
                for a, b, work_j in rows:
                    if b <= a:
                        continue
                    density = work_j / (b - a)
                    for k in range(bisect.bisect_left(edges, a), bisect.bisect_left(edges, b)):
                        densities[k][rid] = densities[k].get(rid, 0.0) + density
            baseline = dict.fromkeys(pieces, 0.0)
            idle_j = 0.0
            for k in range(max(spans, 0)):
                span_j = self.idle_w * (edges[k + 1] - edges[k])
                here = densities[k]
                if not here:
                    idle_j += span_j
                    continue
                total_density = sum(here.values())
                for rid, density in here.items():
                    baseline[rid] += span_j * density / total_density
            truth = {rid: dynamic[rid] + baseline[rid] for rid in pieces}
            total_j = self.idle_w * (end_s - self._t0) + sum(dynamic.values())
            return truth, idle_j, total_j
