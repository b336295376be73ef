"""Authentication and TLS assembled for one gateway: what each server gets, and the watcher.

The service asks this module for the gRPC interceptors and credentials, the HTTP app wrapped
in its access guard and uvicorn's TLS options, and runs :meth:`Security.watch`, which
re-reads the key file and the TLS files when they change (rotation without a restart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from starlette.types import ASGIApp

from gateway.auth import AccessPolicy, KeyFileSource, access_policy
from gateway.config import GatewaySettings
from gateway.grpc.guard import AccessInterceptor
from gateway.http.guard import AccessGuard
from gateway.metrics import GatewayMetrics
from gateway.tls import TLSSource, tls_source
from gateway.watch import Reloadable, watch_files


@dataclass
class Security:
    """The access policy, the key file and TLS files behind it, and how often to re-read them."""

    policy: AccessPolicy
    keys: KeyFileSource | None = None
    tls: TLSSource | None = None
    reload_interval_s: float = 0.0
    metrics: GatewayMetrics | None = None

    @classmethod
    def from_settings(
        cls, settings: GatewaySettings, metrics: GatewayMetrics | None = None
    ) -> Security:
        """Read the key file and TLS files the settings name.

        Raises:
            ValueError: One of them is missing or invalid.
        """
        policy, keys = access_policy(settings)
        policy.metrics = metrics
        return cls(policy, keys, tls_source(settings), settings.secrets_reload_interval_s, metrics)

    def grpc_interceptors(self) -> tuple[grpc.aio.ServerInterceptor, ...]:
        """The gRPC server's interceptors (none while authentication is off)."""
        return (AccessInterceptor(self.policy),) if self.policy.enabled else ()

    def grpc_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials of the gRPC port (None: plaintext)."""
        return self.tls.grpc_credentials() if self.tls is not None else None

    def http_app(self, app: ASGIApp) -> ASGIApp:
        """``app`` behind the access guard (as it is while authentication is off)."""
        return AccessGuard(app, self.policy) if self.policy.enabled else app

    def uvicorn_options(self) -> dict[str, Any]:
        """The ``uvicorn.Config`` options for TLS (none for plaintext)."""
        tls = self.tls
        if tls is None:
            return {}
        return {"ssl_context_factory": lambda config, default: tls.server_context()}

    def _sources(self) -> list[tuple[str, Reloadable]]:
        sources: list[tuple[str, Reloadable]] = []
        if self.keys is not None:
            sources.append(("keys", self.keys))
        if self.tls is not None:
            sources.append(("tls", self.tls))
        return sources

    def _count(self, kind: str, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.secret_reloads_total.labels(kind, "loaded" if ok else "failed").inc()

    async def watch(self) -> None:
        """Re-read changed key and TLS files every ``reload_interval_s`` until cancelled."""
        sources = self._sources()
        if sources and self.reload_interval_s > 0:
            await watch_files(sources, self.reload_interval_s, self._count)
