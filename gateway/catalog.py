"""What the gateway serves, as clients ask about it: names, versions, metadata, the index.

A family name (``vision``) routes across its variants; ``vision__int8`` pins one. Both
transports answer ModelReady, ModelMetadata, ModelConfig, RepositoryIndex and server
metadata from here.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.errors import ModelNotFoundError, VariantUnavailableError
from gateway.manifest import split_model_name
from gateway.registry import VERSION, Registry, ServedFamily
from gateway.taskio import TASK_IO, TensorInfo

ROUTER_PLATFORM = "variant-router"
"""``platform`` reported for a family name, which routes across variants."""
VARIANT_PLATFORM = "onnxruntime_onnx"
"""``platform`` reported for a pinned variant name."""
SERVER_NAME = "variant-gateway"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "parameters")
"""KServe v2 extensions both transports support (and report in server metadata)."""


def server_version() -> str:
    """The installed package version (``0.0.0`` when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass(frozen=True)
class ServerInfo:
    """Server metadata: what ``/v2`` and ServerMetadata answer."""

    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """What ModelMetadata / ModelConfig report for a family or variant name."""

    name: str
    versions: tuple[str, ...]
    platform: str
    task: str
    max_batch_size: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index."""

    name: str
    version: str
    state: str
    reason: str = ""


class Catalog:
    """Names, readiness and metadata of everything a registry serves."""

    def __init__(self, registry: Registry) -> None:
        """Answer from ``registry``'s current snapshot."""
        self.registry = registry
        self.info = ServerInfo(SERVER_NAME, server_version(), EXTENSIONS)

    def resolve(self, name: str, version: str = "") -> tuple[ServedFamily, str | None]:
        """The family a name refers to, and the variant it pins (None: routed).

        Raises:
            ModelNotFoundError: No such family, variant or version.
            VariantUnavailableError: The family's manifest never loaded.
        """
        family_name, variant = split_model_name(name)
        snapshot = self.registry.snapshot
        family = snapshot.families.get(family_name)
        if family is None:
            if family_name in snapshot.broken:
                raise VariantUnavailableError(
                    f"model '{name}' is unavailable: {snapshot.broken[family_name]}"
                )
            served = ", ".join(sorted(snapshot.families)) or "none"
            raise ModelNotFoundError(f"unknown model '{name}'; served models: {served}")
        if version not in ("", VERSION):
            raise ModelNotFoundError(f"model '{name}' has no version '{version}'; it has '1'")
        if variant is not None and variant not in family.variants:
            try:
                entry = family.manifest.variant(variant)
            except KeyError:
                known = ", ".join(family.variants)
                raise ModelNotFoundError(
                    f"unknown variant '{variant}' of '{family_name}'; published: {known}"
                ) from None
            raise ModelNotFoundError(
                f"variant '{variant}' of '{family_name}' is not published: "
                f"{entry.rejection_reason or entry.status}"
            )
        return family, variant

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether ``name`` can serve now.

        Raises:
            ModelNotFoundError: No such model or version.
        """
        try:
            family, variant = self.resolve(name, version)
        except VariantUnavailableError:
            return False
        if variant is not None:
            return family.variants[variant].ready
        return bool(family.ready_variants())

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """Task-level metadata of a family (routed) or a variant (pinned).

        Raises:
            ModelNotFoundError: No such model or version.
            VariantUnavailableError: The family's manifest never loaded.
        """
        family, variant = self.resolve(name, version)
        manifest = family.manifest
        io = TASK_IO[manifest.task]
        parameters = {
            "task": manifest.task,
            "metric": manifest.metric.name,
            "built_at": manifest.built_at,
        }
        if variant is None:
            platform = ROUTER_PLATFORM
            parameters["variants"] = ",".join(family.variants)
        else:
            platform = VARIANT_PLATFORM
            entry = family.variants[variant].variant
            parameters.update(
                quality=f"{entry.quality:g}",
                precision=entry.precision,
                gpu_memory_bytes=str(entry.gpu_memory_bytes),
                size_bytes=str(entry.size_bytes),
            )
        return ModelMetadata(
            name=name,
            versions=(VERSION,),
            platform=platform,
            task=manifest.task,
            max_batch_size=manifest.max_batch_size,
            inputs=io.inputs,
            outputs=io.outputs,
            parameters=parameters,
        )

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every family and variant name with its state."""
        snapshot = self.registry.snapshot
        rows: list[IndexEntry] = []
        for name, family in sorted(snapshot.families.items()):
            state = "READY" if family.ready_variants() else "UNAVAILABLE"
            rows.append(IndexEntry(name, VERSION, state, family.warning or ""))
            for v in family.manifest.variants:
                served = family.variants.get(v.name)
                if served is not None and served.ready:
                    rows.append(IndexEntry(v.model_name, VERSION, "READY"))
                elif served is not None:
                    rows.append(
                        IndexEntry(v.model_name, VERSION, "UNAVAILABLE", served.error or "")
                    )
                else:
                    reason = f"rejected: {v.rejection_reason or 'not published'}"
                    rows.append(IndexEntry(v.model_name, VERSION, "UNAVAILABLE", reason))
        for name, reason in sorted(snapshot.broken.items()):
            rows.append(IndexEntry(name, VERSION, "UNAVAILABLE", reason))
        return [r for r in rows if r.state == "READY"] if ready_only else rows
