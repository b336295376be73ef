"""Live per-variant statistics: a sliding latency window, in-flight count and error rate.

Fed by the data plane as requests start and finish; read as immutable snapshots by the
selector. Time comes from an injected clock, so tests can move it by hand.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

Clock = Callable[[], float]
"""Monotonic seconds."""

MAX_SAMPLES = 512
"""Newest samples kept per variant, so a busy variant's window stays cheap to summarise."""


@dataclass(frozen=True)
class VariantLive:
    """What is happening on one variant right now.

    Attributes:
        in_flight: Requests admitted to the variant and not yet finished (queued included).
        queue_depth: Graph runs waiting in the backend queue, not yet executing.
        samples: Finished requests inside the window.
        latency_p50_s: Observed median end-to-end latency in the window (None if empty).
        latency_p95_s: Observed p95 end-to-end latency in the window (None if empty).
        last_sample_s: Clock time of the newest sample (None if empty).
        error_rate: Fraction of the window's requests that failed on the backend side.
    """

    in_flight: int = 0
    queue_depth: int = 0
    samples: int = 0
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    last_sample_s: float | None = None
    error_rate: float = 0.0


IDLE = VariantLive()
"""A variant nothing has happened on."""


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile of sorted values, interpolating linearly (numpy's default).

    Cheaper than numpy for the few hundred samples of a window, and it runs per request.
    """
    position = (len(sorted_values) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class _Window:
    def __init__(self) -> None:
        self.samples: deque[tuple[float, float, bool]] = deque(maxlen=MAX_SAMPLES)
        self.in_flight = 0
        self.summary: tuple[int, float | None, float | None, float | None, float] | None = None

    def prune(self, oldest_s: float) -> None:
        while self.samples and self.samples[0][0] < oldest_s:
            self.samples.popleft()
            self.summary = None

    def summarise(self) -> tuple[int, float | None, float | None, float | None, float]:
        if self.summary is None:
            if not self.samples:
                self.summary = (0, None, None, None, 0.0)
            else:
                ok = [lat for _, lat, good in self.samples if good]
                errors = len(self.samples) - len(ok)
                p50: float | None = None
                p95: float | None = None
                if ok:
                    ok.sort()
                    p50, p95 = percentile(ok, 50), percentile(ok, 95)
                self.summary = (
                    len(self.samples),
                    p50,
                    p95,
                    self.samples[-1][0],
                    errors / len(self.samples),
                )
        return self.summary


class LiveStats:
    """Thread-safe live statistics keyed by variant model name (``family__variant``)."""

    def __init__(self, window_s: float, clock: Clock = time.monotonic) -> None:
        """Keep samples younger than ``window_s`` seconds of ``clock``."""
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def _window(self, key: str) -> _Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
        return window

    def begin(self, key: str) -> None:
        """A request was admitted to variant ``key``."""
        with self._lock:
            self._window(key).in_flight += 1

    def end(self, key: str, latency_s: float | None, ok: bool = True) -> None:
        """A request on ``key`` finished.

        Args:
            key: The variant's model name.
            latency_s: Its end-to-end latency; None records no sample (e.g. a client error).
            ok: False when the backend failed, which counts toward the error rate.
        """
        now = self.clock()
        with self._lock:
            window = self._window(key)
            window.in_flight = max(0, window.in_flight - 1)
            if latency_s is not None:
                window.samples.append((now, latency_s, ok))
                window.summary = None

    def in_flight(self, key: str) -> int:
        """Requests currently admitted to ``key``."""
        with self._lock:
            window = self._windows.get(key)
            return window.in_flight if window else 0

    def snapshot(
        self, keys: Iterable[str], queue_depths: Mapping[str, int] | None = None
    ) -> dict[str, VariantLive]:
        """Immutable statistics of ``keys`` at the current clock time.

        Args:
            keys: Variant model names to report.
            queue_depths: Backend queue depth per key, merged into the result.
        """
        oldest_s = self.clock() - self.window_s
        depths = queue_depths or {}
        out: dict[str, VariantLive] = {}
        with self._lock:
            for key in keys:
                window = self._windows.get(key)
                if window is None:
                    out[key] = VariantLive(queue_depth=depths.get(key, 0))
                    continue
                window.prune(oldest_s)
                samples, p50, p95, last_s, error_rate = window.summarise()
                out[key] = VariantLive(
                    in_flight=window.in_flight,
                    queue_depth=depths.get(key, 0),
                    samples=samples,
                    latency_p50_s=p50,
                    latency_p95_s=p95,
                    last_sample_s=last_s,
                    error_rate=error_rate,
                )
        return out
