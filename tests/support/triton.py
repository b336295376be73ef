"""The real Triton server of nvidia-pytriton on loopback, serving a python-backend flavour.

``launch_tritons()`` yields a function that starts servers on a flavour directory and stops
them all at the end; ``python_flavour`` writes that directory from a built repository, and
``subset`` links a repository of only some families.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from builders.triton.flavour import write_python_flavour
from builders.triton.server import TritonServer


def python_flavour(
    repository: Path, out_dir: Path, families: tuple[str, ...] | None = None
) -> Path:
    """The python-backend flavour of ``repository`` (what this Triton build can load)."""
    names = write_python_flavour(repository, out_dir, families=families)
    assert names, f"no published ONNX variants in {repository}"
    return out_dir


@contextmanager
def launch_tritons() -> Iterator[Callable[..., TritonServer]]:
    started: list[TritonServer] = []

    def start(flavour: Path, **options: Any) -> TritonServer:
        server = TritonServer(flavour, startup_timeout_s=120, **options)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()


def subset(repo: Path, out: Path, families: tuple[str, ...]) -> Path:
    """A repository of only ``families`` (links into ``repo``)."""
    out.mkdir()
    for family in families:
        (out / f"{family}.manifest.json").symlink_to(repo / f"{family}.manifest.json")
        for variant_dir in repo.glob(f"{family}__*"):
            (out / variant_dir.name).symlink_to(variant_dir)
    return out
