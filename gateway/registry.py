"""The served models: manifests read from the repository, their variants loaded in a backend.

Readers take :attr:`Registry.snapshot`, an immutable view that is replaced in one assignment
when a manifest changes, so a request never sees half a reload. On a change the new
manifest is validated, every published variant's graph is checked against the manifest's
hash and loaded (unchanged graphs are kept), and only then is the snapshot swapped; graphs
that left are unloaded after a grace period, so requests already running on them finish.
A manifest that fails validation leaves the family as it was (or, if it was never loaded,
marks it unavailable with the reason).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from gateway.backends.base import Backend, GraphFile, ModelRef
from gateway.backends.runtimes import runtimes_of
from gateway.errors import GatewayError
from gateway.layout import VERSION as VERSION
from gateway.layout import graph_model_name, sha256_file
from gateway.manifest import (
    MANIFEST_SUFFIX,
    FamilyManifest,
    Variant,
    find_manifests,
    load_manifest,
)
from gateway.metrics import GatewayMetrics
from gateway.taskio import TaskIO, task_io
from gateway.watch import FileSignature, file_signature, one_line

log = logging.getLogger(__name__)

Signature = FileSignature


@dataclass(frozen=True)
class ServedVariant:
    """A published variant and whether it can serve.

    Attributes:
        variant: Its manifest entry.
        ref: The graph the backend runs for it.
        io: Its task wire contract over its own assets (None when unavailable).
        error: Why it cannot serve, or None when it is ready.
    """

    variant: Variant
    ref: ModelRef
    io: TaskIO | None
    error: str | None = None

    @property
    def ready(self) -> bool:
        """Loaded and servable."""
        return self.error is None and self.io is not None


@dataclass(frozen=True)
class ServedFamily:
    """One family's manifest and its published variants, as currently served.

    Attributes:
        manifest: The validated manifest.
        variants: Published variants by variant name.
        warning: Set when a later manifest failed to load and this one stayed in service.
    """

    manifest: FamilyManifest
    variants: Mapping[str, ServedVariant]
    warning: str | None = None

    def ready_variants(self) -> list[ServedVariant]:
        """The variants that can serve now."""
        return [v for v in self.variants.values() if v.ready]


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of everything served.

    Attributes:
        families: Served families by name.
        broken: Families whose manifest never loaded, with the reason.
        loaded: False until the first scan of the repository has finished.
    """

    families: Mapping[str, ServedFamily] = field(default_factory=dict)
    broken: Mapping[str, str] = field(default_factory=dict)
    loaded: bool = False

    def refs(self) -> Iterator[ModelRef]:
        """Every graph this snapshot serves."""
        for family in self.families.values():
            for served in family.variants.values():
                if served.ready:
                    yield served.ref


def _family_of(path: Path) -> str:
    return path.name[: -len(MANIFEST_SUFFIX)]


class Registry:
    """Reads the repository's manifests and keeps their variants loaded in a backend."""

    def __init__(
        self,
        repository: Path,
        backend: Backend,
        metrics: GatewayMetrics | None = None,
        unload_grace_s: float = 60.0,
    ) -> None:
        """Serve the manifests under ``repository`` through ``backend`` (nothing loads yet).

        Args:
            repository: The Triton model repository.
            backend: Runs the variants' graphs.
            metrics: Receives per-variant gauges and reload counts.
            unload_grace_s: How long a replaced graph stays loaded for requests still on it.
        """
        self.repository = repository
        self.backend = backend
        self.metrics = metrics
        self.unload_grace_s = unload_grace_s
        self._snapshot = Snapshot()
        self._signatures: dict[Path, Signature] = {}
        self._lock = asyncio.Lock()
        self._pending_unloads: set[asyncio.TimerHandle] = set()
        self._unloaded: set[str] = set()
        """Families unloaded through the admin API: left out until loaded again."""

    @property
    def snapshot(self) -> Snapshot:
        """The current view; replaced atomically on reload."""
        return self._snapshot

    async def refresh(self) -> bool:
        """Reload manifests that appeared, changed or disappeared since the last call.

        Returns:
            True if the snapshot was replaced.
        """
        async with self._lock:
            return await self._refresh()

    async def unload(self, family: str) -> bool:
        """Stop serving ``family`` until :meth:`load` (admin); False if it is not served.

        Its graphs are released after the grace period, so requests on them finish.
        """
        async with self._lock:
            if family not in self._snapshot.families and family not in self._snapshot.broken:
                return False
            self._unloaded.add(family)
            await self._refresh()
            log.warning("registry: %s unloaded (admin); it stays out until loaded", family)
            return True

    async def load(self, family: str) -> None:
        """Read ``family``'s manifest again now, and serve it again if it was unloaded."""
        async with self._lock:
            self._unloaded.discard(family)
            self._signatures = {
                p: s for p, s in self._signatures.items() if _family_of(p) != family
            }
            await self._refresh()

    async def _refresh(self) -> bool:
        paths = find_manifests(self.repository) if self.repository.is_dir() else []
        paths = [p for p in paths if _family_of(p) not in self._unloaded]
        signatures = {p: s for p in paths if (s := file_signature(p)) is not None}
        changed = [p for p, s in signatures.items() if self._signatures.get(p) != s]
        removed = [p for p in self._signatures if p not in signatures]
        if self._snapshot.loaded and not changed and not removed:
            return False
        old = self._snapshot
        families = dict(old.families)
        broken = dict(old.broken)
        for path in removed:
            families.pop(_family_of(path), None)
            broken.pop(_family_of(path), None)
        for path in changed:
            name = _family_of(path)
            try:
                manifest = load_manifest(path)
                if manifest.family != name:
                    raise ValueError(f"file is named for '{name}' but holds '{manifest.family}'")
            except (ValidationError, ValueError, OSError) as exc:
                reason = f"invalid manifest {path.name}: {one_line(exc)}"
                log.error("%s", reason)
                self._count("failed")
                if name in families:
                    families[name] = ServedFamily(
                        families[name].manifest, families[name].variants, warning=reason
                    )
                else:
                    broken[name] = reason
                continue
            families[name] = await self._load_family(manifest, families.get(name))
            broken.pop(name, None)
            self._count("loaded")
        new = Snapshot(families, broken, loaded=True)
        self._snapshot = new
        self._signatures = signatures
        self._retire(set(old.refs()) - set(new.refs()))
        log.info(
            "registry: %d families (%s), %d broken",
            len(families),
            ", ".join(sorted(families)),
            len(broken),
        )
        return True

    async def _load_family(
        self, manifest: FamilyManifest, old: ServedFamily | None
    ) -> ServedFamily:
        loaded = await asyncio.gather(
            *(self._load_variant(manifest, v, old) for v in manifest.published())
        )
        return ServedFamily(manifest, {s.variant.name: s for s in loaded})

    async def _load_variant(
        self, manifest: FamilyManifest, variant: Variant, old: ServedFamily | None
    ) -> ServedVariant:
        ref = self._ref(manifest, variant)
        version_dir = ref.graph_path.parent
        previous = old.variants.get(variant.name) if old else None
        if previous is not None and previous.ready and previous.ref == ref:
            return ServedVariant(variant, ref, previous.io)
        loop = asyncio.get_running_loop()
        try:
            runtimes = runtimes_of(self.backend)
            if variant.runtime not in runtimes:
                raise ValueError(
                    f"runtime '{variant.runtime}' is not served by the {_kind(self.backend)} "
                    f"backend, which runs {', '.join(sorted(runtimes))} graphs"
                    + (" (serve it with --backend triton)" if variant.runtime == "tensorrt" else "")
                )
            for graph in ref.graph_files():  # every graph checked before any loads
                relative = graph.path.relative_to(self.repository).as_posix()
                if not graph.path.is_file():
                    raise ValueError(f"graph file {relative} is missing")
                if graph.sha256 and (
                    await loop.run_in_executor(None, sha256_file, graph.path) != graph.sha256
                ):
                    raise ValueError(f"graph file {relative} does not match the manifest's sha256")
            io = await loop.run_in_executor(None, task_io, manifest.task, version_dir)
            await self.backend.load(ref)
        except (ValueError, OSError, GatewayError) as exc:
            reason = one_line(exc)
            log.error("%s: not servable: %s", variant.model_name, reason)
            return ServedVariant(variant, ref, None, error=reason)
        return ServedVariant(variant, ref, io)

    def _ref(self, manifest: FamilyManifest, variant: Variant) -> ModelRef:
        """What the backend loads for ``variant``: its graph, or all of its graphs."""

        def file(graph: str) -> GraphFile:
            path = variant.graph_path(self.repository, graph)
            relative = path.relative_to(self.repository).as_posix()
            sha = next((a.sha256 for a in variant.artifacts if a.path == relative), "")
            return GraphFile(graph, graph_model_name(variant.model_name, graph), path, sha)

        files = [file(g) for g in manifest.graph_names()]
        return ModelRef(
            variant.model_name,
            files[0].path,
            files[0].sha256,
            manifest.max_batch_size,
            variant.gpu_memory_bytes,
            tuple(files) if manifest.graphs else (),
        )

    def _retire(self, refs: set[ModelRef]) -> None:
        """Unload graphs no longer served, once requests already on them had time to end."""
        if not refs:
            return
        loop = asyncio.get_running_loop()

        def unload() -> None:
            self._pending_unloads.discard(handle)
            for ref in refs:
                loop.create_task(self.backend.unload(ref))

        handle = loop.call_later(self.unload_grace_s, unload)
        self._pending_unloads.add(handle)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.registry_reloads_total.labels(outcome).inc()

    async def watch(self, interval_s: float) -> None:
        """Check for manifest changes every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:  # a bad reload must never stop the watcher
                log.exception("registry refresh failed")

    async def close(self) -> None:
        """Cancel pending unloads; the backend's own close releases the graphs.

        Nothing is unloaded here: a Triton server may serve other gateways, and the
        embedded backend releases everything when it closes.
        """
        for handle in self._pending_unloads:
            handle.cancel()
        self._pending_unloads.clear()


def _kind(backend: Backend) -> str:
    """A backend's kind in words: ``EmbeddedBackend`` → ``embedded``."""
    return type(backend).__name__.removesuffix("Backend").lower() or "configured"
