"""Which model names may become metric label values.

A model name comes from the client. Put into labels as sent, one 256 KB name grew every
`/metrics` scrape from 1.5 to 29.5 MB, names refused with 403 still made series, and NUL bytes
were written raw. So a label takes only a name configured for an upstream (its exact names in
`upstreams.models`), or, behind a pattern such as `*`, a name an upstream has answered
successfully, up to `MAX_LEARNED` of them; every other name is counted under `other`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

OTHER = "other"
MAX_LEARNED = 64
_PATTERN_CHARS = frozenset("*?[")


class ModelLabels:
    """The model label values of one process (see the module docstring)."""

    __slots__ = ("_known", "_learned")

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._learned = 0

    def configure(self, upstreams: Iterable[Any]) -> None:
        """Take the exact model names of every upstream's configuration."""
        for upstream in upstreams:
            for name in upstream.settings.models:
                if not _PATTERN_CHARS & set(name):
                    self._known.add(name)

    def label(self, model: str, served: bool) -> str:
        """`model` where it may be a label value, else `other`. `served`: an upstream answered
        this request successfully (only then is a name behind a pattern learned)."""
        if not model or model in self._known:
            return model
        if served and self._learned < MAX_LEARNED and model.isprintable():
            self._known.add(model)
            self._learned += 1
            return model
        return OTHER
