"""Files the gateway re-reads when they change: the API key file and the TLS certificates.

Each source compares a cheap signature (mtime, size, inode, through symlinks, so a
Kubernetes Secret volume's atomic ``..data`` swap counts as a change) and reloads only when
it moved. A reload that fails keeps what was in service; the source logs one line for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

FileSignature = tuple[int, int, int]
"""``(mtime_ns, size, inode)`` of a file, following symlinks."""


def file_signature(path: Path) -> FileSignature | None:
    """The file's signature, or None when it does not exist (or cannot be read)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def one_line(exc: BaseException, limit: int = 500) -> str:
    """An exception's message on one line, at most ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Reloadable(Protocol):
    """Something backed by files that can be re-read."""

    def refresh(self) -> bool | None:
        """Reload if the files changed: True reloaded, False failed, None unchanged."""
        ...


Outcome = Callable[[str, bool], None]
"""Called with a source's name and whether its reload succeeded."""


async def watch_files(
    sources: Sequence[tuple[str, Reloadable]],
    interval_s: float,
    on_outcome: Outcome | None = None,
) -> None:
    """Refresh every source each ``interval_s`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        for name, source in sources:
            try:
                outcome = source.refresh()
            except Exception:  # a bad reload must never stop the watcher
                log.exception("reloading %s failed", name)
                outcome = False
            if outcome is not None and on_outcome is not None:
                on_outcome(name, outcome)
