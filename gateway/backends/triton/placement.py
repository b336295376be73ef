"""Which variants are resident on which Triton server, within a GPU-memory budget.

The data plane reports demand (the variant the selector would pick) and :func:`plan_placement`
decides loads and evictions per server; they run in the background. An evicted variant takes
no new requests and is unloaded only once its leases and runs have finished, and the load
starts when Triton has released it. Without a budget every variant is loaded everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence

from tritonclient.utils import InferenceServerException

from gateway.backends.base import ModelRef
from gateway.backends.triton.fleet import Fleet
from gateway.backends.triton.replica import Replica
from gateway.backends.triton.telemetry import TritonTelemetry
from gateway.errors import GatewayError, VariantUnavailableError
from gateway.routing.placement import DecayingCounts, PlacementPlan, Resident, plan_placement

log = logging.getLogger(__name__)

DRAIN_MARGIN = 2.0
"""A busy variant is displaced only by at least this many times its own demand."""


class PlacementController:
    """Loads, evicts and unloads variants on the replicas."""

    def __init__(
        self,
        fleet: Fleet,
        telemetry: TritonTelemetry,
        *,
        explicit: bool,
        budget_bytes: int | None,
        load_timeout_s: float,
        rpc_timeout_s: float,
        demand_window_s: float,
    ) -> None:
        """Place onto ``fleet``'s replicas.

        Args:
            fleet: The replicas and the served variants.
            telemetry: Receives load, unload and residency metrics.
            explicit: The servers run with explicit model control (the gateway loads).
            budget_bytes: Per server, GPU memory resident variants may use; None: no limit.
            load_timeout_s: Seconds one load or unload may take.
            rpc_timeout_s: Timeout of the small calls (repository index, model config).
            demand_window_s: Time constant of the decaying demand counts.
        """
        self.fleet = fleet
        self.telemetry = telemetry
        self.explicit = explicit
        self.budget_bytes = budget_bytes
        self.load_timeout_s = load_timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.demand = DecayingCounts(demand_window_s)

    def publish(self, replica: Replica) -> None:
        """Resident bytes and per-variant residency of ``replica`` as gauges."""
        self.telemetry.residency(
            replica.url,
            self.fleet.resident_bytes(replica),
            ((name, replica.holds(name)) for name in self.fleet.known),
        )

    def changed(self, replica: Replica) -> None:
        """Residency of ``replica`` changed: publish it and wake waiting requests."""
        self.publish(replica)
        self.fleet.notify()

    # -- serving a variant at all ----------------------------------------------------------

    async def register(self, ref: ModelRef) -> None:
        """Serve ``ref``; a rebuilt variant of a loaded name is reloaded in place."""
        name = ref.model_name
        replaced = self.fleet.known.get(name) not in (None, ref)
        self.fleet.known[name] = ref
        if replaced and self.explicit:
            # Triton reloads a loaded model in place from its new files.
            await asyncio.gather(
                *(self.load_on(r, ref, "reload") for r in self.fleet if r.holds(name)),
                return_exceptions=True,
            )

    async def make_servable(self, ref: ModelRef, has_fallback: bool) -> None:
        """Without a budget load ``ref`` on every healthy server; with one, only check it.

        Raises:
            VariantUnavailableError: The healthy servers cannot load it (or lack it).
        """
        name = ref.model_name
        healthy = self.fleet.healthy()
        if not healthy:
            log.warning("%s: no Triton server is healthy; it loads when one is", name)
            return
        if not self.explicit or self.budget_bytes is None:
            results = await asyncio.gather(
                *(self.load_on(r, ref, "startup") for r in healthy if not r.holds(name)),
                return_exceptions=True,
            )
            if any(r.holds(name) for r in self.fleet) or has_fallback:
                return
            errors = "; ".join(str(r) for r in results if isinstance(r, BaseException))
            raise VariantUnavailableError(f"no Triton server loaded {name}: {errors}")
        for replica in healthy:
            with contextlib.suppress(InferenceServerException):
                if name in await replica.repository_index(self.rpc_timeout_s):
                    self.publish(replica)
                    return
        raise VariantUnavailableError(f"no Triton server's repository has {name}")

    async def retire(self, ref: ModelRef) -> None:
        """Stop serving ``ref`` (unless a rebuilt one replaced it): unloaded once idle."""
        name = ref.model_name
        if self.fleet.known.get(name) != ref:
            return  # replaced by a rebuilt variant of the same name, which stays
        del self.fleet.known[name]
        self.demand.forget(name)
        await asyncio.gather(
            *(self.drain_and_unload(r, name, "retired") for r in self.fleet if r.serves(name))
        )

    async def load_missing(self, replica: Replica) -> None:
        """A recovered server without a budget gets every served variant it lacks."""
        if not self.explicit or self.budget_bytes is not None:
            return
        missing = [ref for name, ref in self.fleet.known.items() if not replica.holds(name)]
        await asyncio.gather(
            *(self.load_on(replica, ref, "recovery") for ref in missing),
            return_exceptions=True,
        )

    # -- demand-driven placement -----------------------------------------------------------

    def note_demand(self, ref: ModelRef) -> None:
        """Count demand for ``ref`` and start loading it where the plan allows."""
        name = ref.model_name
        self.demand.add(name, self.fleet.clock())
        if not self.explicit:
            return
        for replica in self.fleet.healthy():
            if name not in replica.held():
                self.plan(replica, ref, urgent=False)

    def place_urgent(self, refs: Sequence[ModelRef]) -> bool:
        """Start a load for the best of ``refs`` that some server can take now."""
        if not self.explicit:
            return False
        healthy = sorted(self.fleet.healthy(), key=self.fleet.resident_bytes)
        for ref in refs:
            if any(r.is_loading(ref.model_name) for r in healthy):
                return True
            for replica in healthy:
                if self.plan(replica, ref, urgent=True):
                    return True
        return False

    def load_error(self, refs: Sequence[ModelRef]) -> str | None:
        """The last load errors if every healthy server recently failed every one of refs."""
        now = self.fleet.clock()
        errors = []
        for replica in self.fleet.healthy():
            for ref in refs:
                if not replica.recently_failed(ref.model_name, now):
                    return None
                errors.append(f"{replica.url}: {replica.load_error(ref.model_name)}")
        return "; ".join(errors) or None

    def _residents(self, replica: Replica, now_s: float) -> list[Resident]:
        return [
            Resident(
                model_name=name,
                gpu_memory_bytes=self.fleet.bytes_of(name),
                in_flight=replica.busy(name),
                demand=self.demand.value(name, now_s),
                last_used_s=replica.last_used_s(name),
                loading=replica.in_transition(name),
            )
            for name in replica.held()
        ]

    def plan(self, replica: Replica, ref: ModelRef, urgent: bool) -> bool:
        """Plan ``ref`` onto ``replica`` and start the plan; True if a load started."""
        name = ref.model_name
        now = self.fleet.clock()
        if name in replica.held() or replica.recently_failed(name, now):
            return False
        if self.budget_bytes is None:
            plan = PlacementPlan(name, (), "no budget: every variant is loaded")
        else:
            demand = math.inf if urgent else self.demand.value(name, now)
            plan = plan_placement(
                name,
                ref.gpu_memory_bytes,
                demand,
                self._residents(replica, now),
                self.budget_bytes,
                drain_margin=DRAIN_MARGIN,
            )
        if plan.load is None:
            return False
        # Commit before any await, so concurrent plans see this one.
        for victim in plan.evict:
            replica.begin_drain(victim)
        replica.begin_load(name)
        reason = "urgent" if urgent else "demand"
        log.info(
            "triton %s: load %s (%s; %s)%s",
            replica.url,
            name,
            reason,
            plan.reason,
            f", evicting {', '.join(plan.evict)}" if plan.evict else "",
        )
        self.publish(replica)
        self.fleet.spawn(self._apply(replica, ref, plan.evict, reason))
        return True

    async def _apply(
        self, replica: Replica, ref: ModelRef, evict: tuple[str, ...], reason: str
    ) -> None:
        try:
            for victim in evict:
                await self.drain_and_unload(replica, victim, "evicted")
            if not replica.healthy:
                return
            await self.load_on(replica, ref, reason)
        except (GatewayError, InferenceServerException) as exc:
            log.warning("triton %s: placing %s failed: %s", replica.url, ref.model_name, exc)
        finally:
            replica.end_load(ref.model_name)
            self.changed(replica)

    # -- loads and unloads -----------------------------------------------------------------

    async def drain_and_unload(self, replica: Replica, name: str, reason: str) -> None:
        """Unload ``name`` from ``replica`` once no request runs on it or holds a lease."""
        replica.begin_drain(name)
        try:
            while replica.healthy and replica.busy(name) > 0:
                await asyncio.sleep(0.005)
            if not replica.healthy or not self.explicit:
                return
            await replica.unload_model(name, self.load_timeout_s, self.fleet.clock)
            log.info("triton %s: unloaded %s (%s)", replica.url, name, reason)
            self.telemetry.unload(replica.url, name, reason)
        except InferenceServerException as exc:
            log.warning("triton %s: unloading %s: %s", replica.url, name, exc.message())
        finally:
            replica.end_drain(name)
            self.changed(replica)

    async def load_on(self, replica: Replica, ref: ModelRef, reason: str) -> None:
        """Load ``ref`` on ``replica`` now and read its instance count.

        Raises:
            VariantUnavailableError: Triton could not make it ready.
        """
        name = ref.model_name
        replica.begin_load(name)
        started = self.fleet.clock()
        try:
            if not await replica.load_model(name, self.explicit, self.load_timeout_s):
                raise VariantUnavailableError(f"Triton {replica.url} did not make {name} ready")
            await replica.read_instances(name, self.rpc_timeout_s)
        except InferenceServerException as exc:
            message = str(exc.message())
            self._failed(replica, name, reason, message)
            raise VariantUnavailableError(
                f"Triton {replica.url} cannot load {name}: {message}"
            ) from exc
        except VariantUnavailableError as exc:
            self._failed(replica, name, reason, str(exc))
            raise
        finally:
            replica.end_load(name)
        replica.load_succeeded(name, take_requests=replica.healthy or reason == "recovery")
        log.info(
            "triton %s: loaded %s in %.2f s (%s)",
            replica.url,
            name,
            self.fleet.clock() - started,
            reason,
        )
        self.telemetry.load(replica.url, name, reason, "ok")
        self.changed(replica)

    def _failed(self, replica: Replica, name: str, reason: str, message: str) -> None:
        replica.load_failed(name, self.fleet.clock(), message)
        self.telemetry.load(replica.url, name, reason, "failed")
