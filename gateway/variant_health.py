"""The data plane's side of variant quarantine: what is in service, outcomes, health checks.

The policy is :class:`gateway.faults.Quarantine`'s; this module applies it to served
variants: it filters a family's candidates, refuses requests pinned to a quarantined
variant, records each run's outcome, logs and counts every change, and schedules the
health checks, which run a canned item of the variant's task through the data plane's own
probe (the variant's real task code, on its backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from gateway.errors import GatewayError, VariantUnavailableError
from gateway.faults import Quarantine, QuarantinePolicy
from gateway.metrics import GatewayMetrics
from gateway.registry import ServedFamily, ServedVariant
from gateway.routing.live import Clock
from gateway.watch import one_line

log = logging.getLogger(__name__)

Probe = Callable[[ServedFamily, ServedVariant], Awaitable[None]]
"""Runs a variant once on a canned input; raises if it fails."""


def is_variant_fault(exc: BaseException) -> bool:
    """Whether a failed run is the variant's own fault.

    Its session or task code raised (ONNX Runtime, a wrong output shape, Triton's INTERNAL);
    not the client's input, shedding, a deadline, or a server that is down.
    """
    if isinstance(exc, GatewayError):
        return exc.http_status == 500
    return isinstance(exc, Exception)


class VariantHealth:
    """Which variants serve, fed by run outcomes, restored by health checks."""

    def __init__(
        self,
        policy: QuarantinePolicy,
        probe: Probe,
        metrics: GatewayMetrics,
        clock: Clock,
    ) -> None:
        """Apply ``policy``; ``probe`` runs the health checks."""
        self.quarantine = Quarantine(policy, clock)
        self._probe = probe
        self._metrics = metrics
        self._clock = clock
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._started: set[str] = set()

    def is_quarantined(self, served: ServedVariant) -> bool:
        """Whether ``served`` is out of routing."""
        return self.quarantine.is_quarantined(served.ref)

    def prepare(self, family: ServedFamily) -> None:
        """Zero a family's fault series the first time it is routed (cheap afterwards)."""
        if family.manifest.family not in self._started:
            self._started.add(family.manifest.family)
            self._metrics.start_faults(family.manifest.family, list(family.variants))

    def in_service(self, family: ServedFamily, ready: list[ServedVariant]) -> list[ServedVariant]:
        """The ready variants a routed request may use (quarantined ones left out)."""
        serving = [v for v in ready if not self.quarantine.is_quarantined(v.ref)]
        return serving or ready  # never empty: the last one is never quarantined anyway

    def check_pinned(self, served: ServedVariant) -> None:
        """Refuse a request pinned to a quarantined variant.

        Raises:
            VariantUnavailableError: It is quarantined (the message says until when).
        """
        if self.quarantine.is_quarantined(served.ref):
            raise VariantUnavailableError(
                f"{served.variant.model_name} {self.quarantine.reason(served.ref)}"
            )

    def succeeded(self, served: ServedVariant) -> None:
        """A run of ``served`` succeeded."""
        self.quarantine.succeeded(served.ref)

    def failed(self, family: ServedFamily, served: ServedVariant, exc: BaseException) -> bool:
        """A run of ``served`` failed; returns whether the failure counts as its fault."""
        if not is_variant_fault(exc):
            return False
        others = [
            v
            for v in family.ready_variants()
            if v.ref != served.ref and not self.quarantine.is_quarantined(v.ref)
        ]
        reason = one_line(exc, 200) or type(exc).__name__
        if self.quarantine.failed(served.ref, reason, may_quarantine=bool(others)):
            model, variant = family.manifest.family, served.variant.name
            log.error(
                "variant %s quarantined after %d failed runs in a row (last: %s); health "
                "check in %g s",
                served.variant.model_name,
                self.quarantine.policy.failures,
                reason,
                self.quarantine.policy.check_after_s,
            )
            self._metrics.variant_quarantines_total.labels(model, variant).inc()
            self._schedule(family, served)
        return True

    def _schedule(self, family: ServedFamily, served: ServedVariant) -> None:
        name = served.variant.model_name
        running = self._checks.get(name)
        if running is None or running.done():
            self._checks[name] = asyncio.get_running_loop().create_task(
                self._check_until_restored(family, served)
            )

    async def _check_until_restored(self, family: ServedFamily, served: ServedVariant) -> None:
        model, variant = family.manifest.family, served.variant.name
        while True:
            check_at = self.quarantine.check_at(served.ref)
            if check_at is None:
                return
            await asyncio.sleep(max(0.0, check_at - self._clock()))
            try:
                await self._probe(family, served)
            except Exception as exc:  # the check failed: the variant stays out, longer
                reason = one_line(exc, 200) or type(exc).__name__
                wait_s = self.quarantine.check_failed(served.ref, reason)
                self._metrics.variant_health_checks_total.labels(model, variant, "failed").inc()
                log.warning(
                    "variant %s failed its health check (%s); next check in %g s",
                    served.variant.model_name,
                    reason,
                    wait_s,
                )
                continue
            self.quarantine.check_passed(served.ref)
            self._metrics.variant_health_checks_total.labels(model, variant, "passed").inc()
            log.warning(
                "variant %s passed its health check and serves again", served.variant.model_name
            )
            return

    async def close(self) -> None:
        """Stop every pending health check."""
        for task in self._checks.values():
            task.cancel()
        for task in self._checks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._checks.clear()
