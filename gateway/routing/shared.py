"""Live load shared by the gateway's worker processes, in one memory-mapped file.

Each worker owns one row of cells per variant: requests in flight, jobs queued, and its
service-time learning (measured / profiled ratio and sample count). A worker writes only
its own row, so no cell has two writers and no lock is needed on the request path; readers
sum (or weigh) the rows of every worker, so each routing decision sees the whole gateway.
Variant names map to columns through a small name table in the same file, claimed under a
file lock (names are added only when the registry loads a variant).

With one worker the table lives in private memory: the same code, nothing shared.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.routing.service_time import Learning, Measured

MAX_VARIANTS = 512
"""Columns of the table: variants (of every family) the gateway can count."""
NAME_BYTES = 128
"""Longest variant model name, in UTF-8 bytes."""
IN_FLIGHT, QUEUED, SAMPLES, RATIO, TAIL, AT = range(6)
_FIELDS = 6
_CELL = 8  # float64


def table_bytes(workers: int) -> int:
    """Size of the file for ``workers`` rows."""
    return MAX_VARIANTS * NAME_BYTES + workers * MAX_VARIANTS * _FIELDS * _CELL


class SharedTable:
    """The cells of every worker, read and written through one memory map.

    Args:
        workers: Rows in the table.
        worker: This process's row.
        path: The file shared by every worker (created by the supervisor); None keeps the
            table in private memory (a single worker).
    """

    def __init__(self, workers: int = 1, worker: int = 0, path: Path | None = None) -> None:
        """Map the table."""
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} out of range for {workers} workers")
        self.workers = workers
        self.worker = worker
        self.path = path
        size = table_bytes(workers)
        if path is None:
            self._map: mmap.mmap = mmap.mmap(-1, size)
            self._lock_fd: int | None = None
        else:
            fd = os.open(path, os.O_RDWR)
            try:
                self._map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            self._lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._names = memoryview(self._map)[: MAX_VARIANTS * NAME_BYTES]
        self._cells = memoryview(self._map)[MAX_VARIANTS * NAME_BYTES :].cast("d")
        self._columns: dict[str, int | None] = {}
        self._row = MAX_VARIANTS * _FIELDS
        self._thread_lock = threading.Lock()

    @staticmethod
    def create(path: Path, workers: int) -> None:
        """Create the zeroed file for ``workers`` rows (the supervisor, before forking)."""
        with open(path, "wb") as f:
            f.truncate(table_bytes(workers))

    @contextmanager
    def _claiming(self) -> Iterator[None]:
        with self._thread_lock:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def column(self, name: str) -> int | None:
        """The column of a variant, claimed on first use; None when the table is full."""
        known = self._columns.get(name, -1)
        if known != -1:
            return known
        encoded = name.encode("utf-8")[:NAME_BYTES]
        padded = encoded.ljust(NAME_BYTES, b"\0")
        with self._claiming():
            found: int | None = None
            for i in range(MAX_VARIANTS):
                slot = self._names[i * NAME_BYTES : (i + 1) * NAME_BYTES]
                if bytes(slot) == padded:
                    found = i
                    break
                if slot[0] == 0:
                    slot[:] = padded
                    found = i
                    break
        self._columns[name] = found
        return found

    def _at(self, worker: int, column: int, field: int) -> int:
        return (worker * MAX_VARIANTS + column) * _FIELDS + field

    # -- this worker's row ---------------------------------------------------------------

    def add(self, column: int | None, field: int, delta: float) -> None:
        """Add ``delta`` to one of this worker's cells."""
        if column is not None:
            self._cells[self._at(self.worker, column, field)] += delta

    def set(self, column: int | None, field: int, value: float) -> None:
        """Set one of this worker's cells."""
        if column is not None:
            self._cells[self._at(self.worker, column, field)] = value

    def own(self, column: int | None, field: int) -> float:
        """One of this worker's cells."""
        if column is None:
            return 0.0
        return self._cells[self._at(self.worker, column, field)]

    # -- every worker --------------------------------------------------------------------

    def total(self, column: int | None, field: int) -> float:
        """A cell summed over every worker."""
        if column is None:
            return 0.0
        if self.workers == 1:
            return self._cells[self._at(0, column, field)]
        return sum(self.rows(column, field))

    def rows(self, column: int | None, field: int) -> list[float]:
        """A cell of each worker, in worker order."""
        if column is None:
            return [0.0] * self.workers
        # One strided view: worker w's cell is a whole row of cells further on.
        cells = self._cells[self._at(0, column, field) :: self._row].tolist()
        return [float(c) for c in cells]

    def names(self) -> list[tuple[str, int]]:
        """Every claimed variant name with its column."""
        out = []
        for i in range(MAX_VARIANTS):
            raw = bytes(self._names[i * NAME_BYTES : (i + 1) * NAME_BYTES]).rstrip(b"\0")
            if not raw:
                break
            out.append((raw.decode("utf-8", errors="replace"), i))
        return out

    def clear_worker(self, worker: int) -> None:
        """Zero a worker's load cells (its process ended; its learning is kept)."""
        for column in range(MAX_VARIANTS):
            for field in (IN_FLIGHT, QUEUED):
                self._cells[self._at(worker, column, field)] = 0.0


class SharedLearning(Learning):
    """A variant's measurements in the workers' table: every worker learns from all runs."""

    def __init__(self, table: SharedTable, column: int | None) -> None:
        """Keep the measurements in ``column`` of ``table`` (None: this process only)."""
        super().__init__()
        self.table = table
        self.column = column

    def read(self) -> Measured:
        """Every worker's measurements, weighted by their sample counts."""
        if self.column is None:
            return super().read()
        if self.table.workers == 1:
            return self.own()
        counts = self.table.rows(self.column, SAMPLES)
        total = sum(counts)
        if total <= 0:
            return Measured()
        ratios = self.table.rows(self.column, RATIO)
        tails = self.table.rows(self.column, TAIL)
        return Measured(
            ratio=sum(c * r for c, r in zip(counts, ratios, strict=True)) / total,
            tail=sum(c * t for c, t in zip(counts, tails, strict=True)) / total,
            samples=int(total),
            at_s=max(self.table.rows(self.column, AT)),
        )

    def own(self) -> Measured:
        """This worker's measurements."""
        if self.column is None:
            return super().own()
        samples = int(self.table.own(self.column, SAMPLES))
        if samples == 0:
            return Measured()
        return Measured(
            self.table.own(self.column, RATIO),
            self.table.own(self.column, TAIL),
            samples,
            self.table.own(self.column, AT),
        )

    def write(self, measured: Measured) -> None:
        """Publish this worker's measurements (the count last, so a reader sees a pair)."""
        if self.column is None:
            super().write(measured)
            return
        self.table.set(self.column, RATIO, measured.ratio)
        self.table.set(self.column, TAIL, measured.tail)
        self.table.set(self.column, AT, measured.at_s)
        self.table.set(self.column, SAMPLES, measured.samples)
