"""Per-upstream accounts that several replicas share, in wall-clock buckets (methodology §2b).

Each replica meters the same GPUs, so the energy it measured, the idle part of it and the
engine's work it saw no request for ("other") are facts about the GPUs, not about the replica.
The sampler books every tick's growth of those figures into the UTC bucket (default one
minute) its reading fell in; the proxy writes closed buckets to the ledger keyed by (meter,
bucket), so a second replica writing the same bucket changes nothing: each joule counts once
in the cluster however many replicas read it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

DEFAULT_BUCKET_S = 60.0


@dataclass(slots=True)
class Bucket:
    """What one meter's ticks added in [start_s, start_s + bucket_s) of wall-clock time."""

    start_s: float
    bucket_s: float
    measured_j: float = 0.0
    measured_s: float = 0.0
    idle_j: float = 0.0
    idle_s: float = 0.0
    other_j: float = 0.0
    other_s: float = 0.0

    @property
    def end_s(self) -> float:
        """Wall-clock end of the bucket (seconds since the epoch)."""
        return self.start_s + self.bucket_s


class AccountBook:
    """Buckets of measured, idle and other energy, filled by one sampler, taken by the writer.

    Thread-safe: the sampler thread books, the event loop takes.
    """

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S) -> None:
        if bucket_s <= 0.0:
            raise ValueError(f"bucket_s must be positive, got {bucket_s}")
        self.bucket_s = bucket_s
        self._lock = threading.Lock()
        self._buckets: dict[float, Bucket] = {}

    def book(
        self,
        wall_s: float,
        measured_j: float,
        measured_s: float,
        idle_j: float,
        idle_s: float,
        other_j: float,
        other_s: float,
    ) -> None:
        """Add one tick's growth to the bucket `wall_s` falls in."""
        start_s = math.floor(wall_s / self.bucket_s) * self.bucket_s
        with self._lock:
            bucket = self._buckets.get(start_s)
            if bucket is None:
                bucket = self._buckets[start_s] = Bucket(start_s, self.bucket_s)
            bucket.measured_j += measured_j
            bucket.measured_s += measured_s
            bucket.idle_j += idle_j
            bucket.idle_s += idle_s
            bucket.other_j += other_j
            bucket.other_s += other_s

    def take(self, now_wall_s: float | None = None) -> list[Bucket]:
        """Remove and return the buckets that ended by `now_wall_s` (all of them with None)."""
        with self._lock:
            done = [
                b for b in self._buckets.values() if now_wall_s is None or b.end_s <= now_wall_s
            ]
            for bucket in done:
                del self._buckets[bucket.start_s]
        return sorted(done, key=lambda b: b.start_s)

    def give_back(self, buckets: list[Bucket]) -> None:
        """Put buckets that could not be written back, merged with any booked since."""
        with self._lock:
            for old in buckets:
                bucket = self._buckets.get(old.start_s)
                if bucket is None:
                    self._buckets[old.start_s] = old
                    continue
                for name in ("measured_j", "measured_s", "idle_j", "idle_s", "other_j", "other_s"):
                    setattr(bucket, name, getattr(bucket, name) + getattr(old, name))
