"""One log line per outage per minute: a source that fails on every tick (a missing GPU
library, an unreachable exporter) is logged at once, then once per interval with a count of
the failures in between, and once more when it answers again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

FAILURE_LOG_INTERVAL_S = 60.0


class OutageLog:
    """Rate-limited failure logging for one thing that is read on a tick (`what`)."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval_s: float = FAILURE_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._interval_s = interval_s
        self._clock = clock
        self._logged_s: float | None = None  # when the current outage was last logged
        self._unlogged = 0  # failures since then

    def failed(self, message: str, *, exc_info: bool = False) -> None:
        """One failed read: logged if it starts an outage or the interval has passed."""
        now_s = self._clock()
        last_s = self._logged_s
        if last_s is not None and now_s - last_s < self._interval_s:
            self._unlogged += 1
            return
        if last_s is None:
            self._logger.warning(
                "%s failed: %s (logged again once a minute while it fails)",
                self._what,
                message,
                exc_info=exc_info,
            )
        else:
            self._logger.warning(
                "%s still failing: %s (%d more failed read(s) in the last %.0f s)",
                self._what,
                message,
                self._unlogged + 1,
                now_s - last_s,
            )
        self._logged_s, self._unlogged = now_s, 0

    def succeeded(self) -> None:
        """One good read: ends an outage, saying how many failures went unlogged."""
        if self._logged_s is None:
            return
        self._logger.warning(
            "%s answers again (%d failed read(s) since last logged)", self._what, self._unlogged
        )
        self._logged_s, self._unlogged = None, 0
