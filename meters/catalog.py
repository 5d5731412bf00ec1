"""EcoLogits' model catalogue: what the estimator knows about a model by its name.

Parameter counts (a published range kept as its bounds), and the provider's measured speed
(tokens per second, time to first token) where EcoLogits has one. Only this module and
`meters.estimate` read the `ecologits` package.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meters.constants import ecologits_version

__all__ = ["ModelCatalog", "ModelSpec", "catalog_source"]


def catalog_source() -> str:
    """The label of the installed EcoLogits catalogue, e.g. `ecologits-0.11.3:models.json`."""
    return f"ecologits-{ecologits_version()}:models.json"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the estimator needs to know about a model."""

    name: str
    active_params_b: float
    total_params_b: float
    tokens_per_s: float | None = None  # the provider's measured output speed, when known
    ttft_s: float | None = None  # the provider's measured time to first token, when known
    source: str = ""
    # Where the parameter counts are published as a range ([min, max], EcoLogits' estimates of
    # closed models): the bounds; the counts above are then the range's midpoints.
    active_range_b: tuple[float, float] | None = None
    total_range_b: tuple[float, float] | None = None

    @property
    def ranged(self) -> bool:
        """Whether the parameter counts are a range rather than one published figure."""
        return self.active_range_b is not None or self.total_range_b is not None

    def bound(self, which: int) -> ModelSpec:
        """The spec at the range's low (0) or high (1) end, as EcoLogits evaluates it."""
        active = self.active_range_b or (self.active_params_b, self.active_params_b)
        total = self.total_range_b or (self.total_params_b, self.total_params_b)
        return ModelSpec(
            self.name,
            active[which],
            total[which],
            tokens_per_s=self.tokens_per_s,
            ttft_s=self.ttft_s,
            source=self.source,
        )


class ModelCatalog:
    """Parameter counts of known models, looked up leniently by name: case does not matter,
    and an organisation or provider prefix (`openai/`, `meta-llama/`) may be present or not."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._by_key: dict[str, ModelSpec] = {}
        for spec in specs:
            for key in _keys_for(spec.name):
                self._by_key.setdefault(key, spec)

    @classmethod
    def from_ecologits(cls) -> ModelCatalog:
        """The catalogue shipped with the installed `ecologits` package (`data/models.json`),
        with the provider's measured speed (tokens/s, time to first token) where it has one. A
        parameter count published as a range keeps its bounds (`active_range_b`,
        `total_range_b`); the central counts are the midpoints."""
        from ecologits.model_repository import ParametersMoE, models

        label = catalog_source()
        specs: list[ModelSpec] = []
        for model in models.list_models():
            params = model.architecture.parameters
            if isinstance(params, ParametersMoE):
                total, active = _bounds(params.total), _bounds(params.active)
            else:
                total = active = _bounds(params)
            deployment = model.deployment
            specs.append(
                ModelSpec(
                    name=model.name,
                    active_params_b=(active[0] + active[1]) / 2.0,
                    total_params_b=(total[0] + total[1]) / 2.0,
                    tokens_per_s=deployment.tps if deployment else None,
                    ttft_s=deployment.ttft if deployment else None,
                    source=f"{label}:{model.provider.value}/{model.name}",
                    active_range_b=active if active[0] != active[1] else None,
                    total_range_b=total if total[0] != total[1] else None,
                )
            )
        return cls(specs)

    def specs(self) -> list[ModelSpec]:
        """Every model the catalogue knows, once each."""
        unique: dict[int, ModelSpec] = {}
        for spec in self._by_key.values():
            unique.setdefault(id(spec), spec)
        return list(unique.values())

    def lookup(self, model: str) -> ModelSpec | None:
        """The spec of `model`, or None when the catalogue does not know it."""
        for key in _keys_for(model):
            spec = self._by_key.get(key)
            if spec is not None:
                return spec
        return None


def _bounds(value: Any) -> tuple[float, float]:
    if hasattr(value, "min") and hasattr(value, "max"):
        return float(value.min), float(value.max)
    return float(value), float(value)


def _keys_for(name: str) -> list[str]:
    """The names a model may be asked for by: as given, without its prefix, and (for Meta's
    models, renamed on Hugging Face) without the `meta-` of `Meta-Llama-…`."""
    full = name.strip().lower()
    keys = [full]
    base = full.rsplit("/", 1)[-1]
    if base not in keys:
        keys.append(base)
    if base.startswith("meta-llama-"):
        keys.append(base.removeprefix("meta-"))
    return keys
