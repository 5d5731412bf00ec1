"""Calibration of the estimator from measured traffic (methodology §3, last point).

Once an upstream has been measured, its own requests say what a token costs on that model and
hardware better than any published regression. A calibration is the least-squares fit of

    E_gpu ≈ j_out · (α · prompt_tokens + output_tokens)

over the measured requests of one (model, accelerator), with j_out ≥ 0 and α ≥ 0 (J per output
token, and the cost of a prompt token against an output token). Written as
E ≈ x_p · prompt + x_o · output with x_p = α · j_out and x_o = j_out, this is a two-variable
non-negative least-squares problem, solved exactly by checking the unconstrained optimum and
the two one-variable boundaries.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

__all__ = ["Calibration", "Calibrations"]

# Below this many measured requests a fit is too noisy to beat the published regression.
DEFAULT_MIN_SAMPLES = 20
# The most recent samples kept per (model, accelerator): enough for a stable fit, bounded memory.
DEFAULT_MAX_SAMPLES = 2048
# Distinct (model, accelerator) pairs kept; the least recently observed is dropped beyond it.
DEFAULT_MAX_KEYS = 256
# Prompt and output counts whose directions are this close to parallel cannot separate α.
_COLLINEAR_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class Calibration:
    """A fit of J per output token and α for one model on one accelerator."""

    model: str
    accelerator: str
    j_per_output_token: float
    alpha: float
    samples: int
    rms_error_j: float

    @property
    def name(self) -> str:
        """The basis a figure estimated with this fit carries: `calibrated:<model>@<accel>`."""
        return f"calibrated:{self.model}@{self.accelerator}"

    def gpu_energy_j(self, prompt_tokens: int, output_tokens: int) -> float:
        """GPU energy (J, all of the upstream's GPUs) this fit predicts for one request."""
        return self.j_per_output_token * (self.alpha * prompt_tokens + output_tokens)


@dataclass(slots=True)
class _Samples:
    rows: deque[tuple[float, float, float]]
    fit: Calibration | None = None
    fitted: bool = False  # `fit` is up to date with `rows`


class Calibrations:
    """Measured (prompt tokens, output tokens, GPU energy) samples per (model, accelerator), and
    the calibrations fitted from them. Thread-safe: meters observe from their sampler threads or
    the event loop while estimators read fits."""

    def __init__(
        self,
        *,
        min_samples: int = DEFAULT_MIN_SAMPLES,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if min_samples < 2:
            raise ValueError("min_samples must be at least 2: two unknowns are fitted")
        if max_samples < min_samples:
            raise ValueError("max_samples must be at least min_samples")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._min_samples = min_samples
        self._max_samples = max_samples
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._by_key: OrderedDict[tuple[str, str], _Samples] = OrderedDict()

    def observe(
        self,
        model: str,
        accelerator: str,
        prompt_tokens: int,
        output_tokens: int,
        gpu_energy_j: float,
    ) -> None:
        """Record one measured request: its token counts and the GPU energy attributed to it."""
        if prompt_tokens < 0 or output_tokens < 0:
            raise ValueError("token counts cannot be negative")
        if not math.isfinite(gpu_energy_j) or gpu_energy_j < 0:
            raise ValueError(f"gpu_energy_j must be a finite non-negative number: {gpu_energy_j}")
        key = (model, accelerator)
        with self._lock:
            entry = self._by_key.get(key)
            if entry is None:
                entry = _Samples(deque(maxlen=self._max_samples))
                self._by_key[key] = entry
                while len(self._by_key) > self._max_keys:
                    self._by_key.popitem(last=False)
            else:
                self._by_key.move_to_end(key)
            entry.rows.append((float(prompt_tokens), float(output_tokens), float(gpu_energy_j)))
            entry.fitted = False

    def sample_count(self, model: str, accelerator: str) -> int:
        """How many samples are held for (model, accelerator)."""
        with self._lock:
            entry = self._by_key.get((model, accelerator))
            return 0 if entry is None else len(entry.rows)

    def fit(self, model: str, accelerator: str) -> Calibration | None:
        """The calibration for (model, accelerator), or None while there are too few samples,
        or when they cannot tell prompt from output cost (all in the same proportion), or when
        they say an output token costs nothing."""
        with self._lock:
            entry = self._by_key.get((model, accelerator))
            if entry is None or len(entry.rows) < self._min_samples:
                return None
            if not entry.fitted:
                entry.fit = _fit(model, accelerator, list(entry.rows))
                entry.fitted = True
            return entry.fit

    def fitted(self) -> list[Calibration]:
        """Every calibration that can be fitted now (enough samples that separate prompt from
        output cost), most recently observed last."""
        with self._lock:
            keys = list(self._by_key)
        found = (self.fit(model, accelerator) for model, accelerator in keys)
        return [fit for fit in found if fit is not None]


def _fit(
    model: str, accelerator: str, rows: list[tuple[float, float, float]]
) -> Calibration | None:
    spp = spo = soo = spe = soe = see = 0.0
    for prompt, output, energy in rows:
        spp += prompt * prompt
        spo += prompt * output
        soo += output * output
        spe += prompt * energy
        soe += output * energy
        see += energy * energy
    if soo <= 0.0:
        return None
    det = spp * soo - spo * spo
    if spp <= 0.0 or det <= _COLLINEAR_TOLERANCE * spp * soo:
        return None

    def sse(x_p: float, x_o: float) -> float:
        return (
            see
            - 2 * (x_p * spe + x_o * soe)
            + x_p * x_p * spp
            + 2 * x_p * x_o * spo
            + x_o * x_o * soo
        )

    candidates: list[tuple[float, float]] = []
    x_p = (soo * spe - spo * soe) / det
    x_o = (spp * soe - spo * spe) / det
    if x_p >= 0.0 and x_o >= 0.0:
        candidates.append((x_p, x_o))
    else:
        candidates.append((0.0, max(0.0, soe / soo)))
        candidates.append((max(0.0, spe / spp), 0.0))
    best_p, best_o = min(candidates, key=lambda c: sse(*c))
    if best_o <= 0.0:
        return None
    rms = math.sqrt(max(0.0, sse(best_p, best_o)) / len(rows))
    return Calibration(
        model=model,
        accelerator=accelerator,
        j_per_output_token=best_o,
        alpha=best_p / best_o,
        samples=len(rows),
        rms_error_j=rms,
    )
