"""Where a request runs: leases, the least busy replica, failover, the embedded fallback.

A request runs on the least busy healthy server holding its variant, its deadline carried as
the gRPC deadline. When that server goes down mid-call, or Triton says the variant is no
longer loaded, the run moves to another replica (or is loaded again, or runs on the fallback
backend) within the same deadline.

Each server has a circuit breaker (``gateway.faults``): errors in a row from a server that
still answers its probes (INTERNAL and the like, unreadable responses) open it, and while it
is open requests go to the other servers or the fallback; a trial request closes it again. A
server that goes down is the health monitor's: it takes it out and back. Where no other
server or fallback could take the request, an open breaker does not stop it (a breaker
steers traffic, it never strands it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from tritonclient.utils import InferenceServerException

from gateway.backends.base import Backend, Lease, ModelRef
from gateway.backends.triton.errors import (
    NOT_LOADED,
    SERVER_DOWN,
    ServerDownError,
    TritonInternalError,
    describe,
    is_server_fault,
    status_of,
    to_gateway_error,
)
from gateway.backends.triton.fleet import Fleet
from gateway.backends.triton.health import HealthMonitor
from gateway.backends.triton.placement import PlacementController
from gateway.backends.triton.replica import Replica
from gateway.backends.triton.telemetry import FALLBACK, TritonTelemetry
from gateway.errors import BackendTimeoutError, VariantUnavailableError
from gateway.faults import BreakerPolicy, BreakerState, CircuitBreaker
from gateway.metrics import GatewayMetrics
from gateway.tasks.base import MAIN_GRAPH, Tensor

log = logging.getLogger(__name__)


class Scheduler:
    """Leases variants where they are resident and runs graphs with failover."""

    def __init__(
        self,
        fleet: Fleet,
        placement: PlacementController,
        health: HealthMonitor,
        telemetry: TritonTelemetry,
        fallback: Backend | None,
        default_timeout_s: float,
        breaker_policy: BreakerPolicy | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        """Schedule onto ``fleet``; ``fallback`` (if any) serves when no server can.

        ``default_timeout_s`` bounds a run that carries no deadline of its own;
        ``breaker_policy`` governs each server's circuit breaker.
        """
        self.fleet = fleet
        self.placement = placement
        self.health = health
        self.telemetry = telemetry
        self.fallback = fallback
        self.default_timeout_s = default_timeout_s
        self._metrics = metrics
        policy = breaker_policy or BreakerPolicy()
        self.breakers = {
            r.url: CircuitBreaker(r.url, policy, fleet.clock, on_change=self._circuit_changed)
            for r in fleet
        }
        if metrics is not None:
            for url in self.breakers:
                metrics.start_circuit(url)

    # -- circuit breakers ------------------------------------------------------------------

    def _circuit_changed(self, url: str, old: BreakerState, new: BreakerState, why: str) -> None:
        if new is BreakerState.OPEN:
            log.warning("Triton %s: circuit open: %s", url, why)
        else:
            log.info("Triton %s: circuit %s: %s", url, new.name.lower().replace("_", "-"), why)
        if self._metrics is not None:
            self._metrics.circuit_state.labels(url).set(new.value)
            if new is BreakerState.OPEN:
                self._metrics.circuit_opens_total.labels(url).inc()

    def _blocked(self) -> frozenset[str]:
        """Servers whose circuit takes no request now."""
        return frozenset(url for url, b in self.breakers.items() if not b.would_allow())

    def _least_busy(self, ref: ModelRef, skip: frozenset[str] = frozenset()) -> Replica | None:
        """The least busy server for ``ref`` whose circuit allows it.

        One whose circuit does not is chosen only when neither another server nor the
        fallback could take the request.
        """
        name = ref.model_name
        replica = self.fleet.least_busy(name, skip | self._blocked())
        if replica is None and not self.fallback_ready(ref):
            replica = self.fleet.least_busy(name, skip)
        return replica

    def _server_failed(self, replica: Replica, reason: str) -> None:
        breaker = self.breakers[replica.url]
        others_closed = any(
            r.healthy and self.breakers[r.url].state is BreakerState.CLOSED
            for r in self.fleet
            if r.url != replica.url
        )
        breaker.failed(reason, may_open=others_closed or self.fallback is not None)

    def fallback_ready(self, ref: ModelRef) -> bool:
        """Whether the fallback backend can run ``ref`` now."""
        return self.fallback is not None and self.fallback.is_ready(ref)

    # -- leases ----------------------------------------------------------------------------

    async def acquire(self, refs: Sequence[ModelRef], timeout_s: float) -> Lease:
        """Lease the first resident of ``refs``, loading one if none is (see the protocol)."""
        if not refs:
            raise ValueError("acquire needs at least one variant")
        deadline = self.fleet.clock() + timeout_s
        while True:
            for ref in refs:
                replica = self._least_busy(ref)
                if replica is not None:
                    replica.lease(ref.model_name)
                    return Lease(ref, replica.url)
            placing = self.placement.place_urgent(refs)
            if self.fallback_ready(refs[0]):
                return Lease(refs[0], "")
            names = ", ".join(r.model_name for r in refs)
            if not self.fleet.any_healthy():
                errors = "; ".join(f"{r.url}: {r.last_error}" for r in self.fleet)
                raise VariantUnavailableError(f"no Triton server is healthy ({errors})")
            if not placing and (error := self.placement.load_error(refs)) is not None:
                raise VariantUnavailableError(f"cannot load {names} on Triton: {error}")
            if not self.placement.explicit:
                raise VariantUnavailableError(f"no Triton server has {names} ready")
            remaining = deadline - self.fleet.clock()
            if remaining <= 0:
                raise BackendTimeoutError(
                    f"none of {names} was loaded on Triton within the request's deadline"
                )
            await self.fleet.wait_change(remaining)

    def release(self, lease: Lease) -> None:
        """End ``lease``; a variant waiting to be evicted may go once its last lease ends."""
        replica = self.fleet.get(lease.holder)
        if replica is not None and replica.release(lease.ref.model_name):
            self.fleet.nudge()

    # -- runs ------------------------------------------------------------------------------

    def _pick(self, ref: ModelRef, tried: set[str], prefer: str) -> Replica | None:
        name = ref.model_name
        preferred = self.fleet.get(prefer)
        if (
            preferred is not None
            and preferred.healthy
            and preferred.url not in tried
            and preferred.runs(name)
            and self.breakers[preferred.url].would_allow()
        ):
            return preferred
        return self._least_busy(ref, skip=frozenset(tried))

    async def run(
        self,
        ref: ModelRef,
        inputs: Mapping[str, Tensor],
        timeout_s: float | None,
        prefer: str,
        graph: str = MAIN_GRAPH,
    ) -> dict[str, Tensor]:
        """Run on ``prefer`` while it serves ``ref``, else the least busy replica, failing over.

        Raises:
            BackendTimeoutError: The deadline passed before a run succeeded.
            VariantUnavailableError: No server holds ``ref`` and none can load it.
        """
        name = ref.model_name
        model = ref.graph_file(graph).model_name
        clock = self.fleet.clock
        deadline = clock() + (self.default_timeout_s if timeout_s is None else timeout_s)
        tried: set[str] = set()
        last: Exception | None = None
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                raise BackendTimeoutError(f"the deadline passed before {name} ran") from last
            replica = self._pick(ref, tried, prefer)
            if replica is None:
                if self.fallback_ready(ref):
                    return await self._run_fallback(ref, inputs, remaining, graph)
                # Nothing holds it now (a server died, or it was evicted between two graph
                # calls of this request): load it again if any server is up, within the
                # deadline.
                placing = self.placement.place_urgent([ref])
                if (
                    not self.placement.explicit
                    or not self.fleet.any_healthy()
                    or (not placing and self.placement.load_error([ref]) is not None)
                ):
                    raise last or VariantUnavailableError(f"no healthy Triton server holds {name}")
                await self.fleet.wait_change(remaining)
                tried.clear()
                continue
            tried.add(replica.url)
            breaker = self.breakers[replica.url]
            breaker.allow()  # claims the trial of a half-open circuit
            try:
                outputs = await replica.infer(name, inputs, remaining, clock(), model)
            except ServerDownError:  # the health monitor's business, not the breaker's
                breaker.undecided()
                last = VariantUnavailableError(f"Triton {replica.url} went down during {name}")
                self.telemetry.run(replica.url, name, "failover")
                continue
            except InferenceServerException as exc:
                if is_server_fault(exc):
                    self._server_failed(replica, describe(exc))
                else:
                    breaker.undecided()
                last = self._failed(replica, name, exc)
                if last is None:
                    raise to_gateway_error(exc, name) from exc
                continue
            except TritonInternalError as exc:  # a response the client could not read
                self._server_failed(replica, str(exc))
                self.telemetry.run(replica.url, name, "error")
                raise
            except BaseException:  # cancelled, or a bug: no verdict on the server
                breaker.undecided()
                raise
            breaker.succeeded()
            self.telemetry.run(replica.url, name, "ok")
            return outputs

    def _failed(
        self, replica: Replica, name: str, exc: InferenceServerException
    ) -> Exception | None:
        """Act on a failed run: the error to fail over with, or None if it is final."""
        status = status_of(exc)
        if status in SERVER_DOWN:
            self.health.mark_down(replica, describe(exc))
        elif status in NOT_LOADED:
            # Unloaded behind our back (another gateway, an operator): re-plan.
            replica.lost(name)
            self.placement.publish(replica)
        else:
            self.telemetry.run(replica.url, name, "error")
            return None
        self.telemetry.run(replica.url, name, "failover")
        return to_gateway_error(exc, name)

    async def _run_fallback(
        self, ref: ModelRef, inputs: Mapping[str, Tensor], timeout_s: float, graph: str
    ) -> dict[str, Tensor]:
        assert self.fallback is not None
        try:
            outputs = await self.fallback.run(ref, inputs, timeout_s, graph)
        except Exception:
            self.telemetry.run(FALLBACK, ref.model_name, "error")
            raise
        self.telemetry.run(FALLBACK, ref.model_name, "ok")
        return outputs
