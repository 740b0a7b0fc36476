"""Link shaping: a token bucket that holds every copy through one link to the link's rate.

All concurrent copies through a link share one ``TokenBucket``, so N parallel
copies together get the link rate, not N times it. ``consume`` *reserves*
bytes under a lock and then sleeps outside it: the balance may go negative,
and each caller waits until its own bytes are paid for. Because the refill is
computed from the clock rather than from how long a caller slept, oversleeping
and time spent on disk I/O are credited back (up to the burst), so the
long-run rate stays on target instead of drifting low.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Iterable

BITS_PER_BYTE = 8
# idle credit a bucket may bank: small, so that a transfer of >= 1 s measures within ~2 % of the rate
DEFAULT_BURST_S = 0.02
# copies are fed through a shaped link in slices this long, so progress and fairness stay smooth at low rates
SLICE_S = 0.05
MIN_SLICE_BYTES = 4096


def mbps_to_bytes_per_s(rate_mbps: float) -> float:
    """Megabits per second (1 Mbps = 1e6 bit/s, as network links are quoted) to bytes per second."""
    return rate_mbps * 1e6 / BITS_PER_BYTE


class TokenBucket:
    """Caps the byte rate of everything that consumes from it, across threads.

    rate_mbps: the link rate in megabits per second (1e6 bit/s).
    burst_bytes: the most idle credit the bucket banks; default 20 ms worth of the rate.
    A single ``consume`` may ask for more than the burst: it just waits longer.
    """

    def __init__(
        self,
        rate_mbps: float,
        burst_bytes: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not (isinstance(rate_mbps, (int, float)) and math.isfinite(rate_mbps) and rate_mbps > 0):
            raise ValueError(f"rate_mbps must be a positive number of megabits per second, got {rate_mbps!r}")
        self.rate_mbps = float(rate_mbps)
        self.rate_bytes_per_s = mbps_to_bytes_per_s(self.rate_mbps)
        if burst_bytes is None:
            burst_bytes = max(1, int(self.rate_bytes_per_s * DEFAULT_BURST_S))
        if burst_bytes <= 0:
            raise ValueError(f"burst_bytes must be positive, got {burst_bytes!r}")
        self.burst_bytes = int(burst_bytes)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        # start empty: a first transfer then measures exactly at the rate, not rate plus a burst
        self._tokens = 0.0
        self._last = clock()

    def reserve(self, nbytes: int) -> float:
        """Debit `nbytes` now; return the seconds the caller must wait before sending them."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst_bytes), self._tokens + (now - self._last) * self.rate_bytes_per_s)
            self._last = now
            self._tokens -= nbytes
            return max(0.0, -self._tokens / self.rate_bytes_per_s)

    def consume(self, nbytes: int) -> float:
        """Block until `nbytes` may go; return the seconds waited."""
        wait_s = self.reserve(nbytes)
        if wait_s > 0:
            self._sleep(wait_s)
        return wait_s

    def __repr__(self) -> str:
        return f"TokenBucket(rate_mbps={self.rate_mbps:g}, burst_bytes={self.burst_bytes})"


def consume_all(buckets: Iterable[TokenBucket], nbytes: int, sleep: Callable[[float], None] = time.sleep) -> float:
    """Pass `nbytes` through several buckets (link and endpoint) at once: wait for the slowest, not their sum."""
    wait_s = max((b.reserve(nbytes) for b in buckets), default=0.0)
    if wait_s > 0:
        sleep(wait_s)
    return wait_s


def shaped_chunk_bytes(buckets: Iterable[TokenBucket], chunk_bytes: int) -> int:
    """The slice size for a copy through `buckets`: ~SLICE_S at the slowest rate, at most `chunk_bytes`."""
    rates = [b.rate_bytes_per_s for b in buckets]
    if not rates:
        return chunk_bytes
    return max(1, min(chunk_bytes, max(MIN_SLICE_BYTES, int(min(rates) * SLICE_S))))
