"""The transport-free core: resolve the model, check the inputs, choose a variant, run it.

Both transports convert their wire format into an :class:`InferRequest`, call
:meth:`DataPlane.infer` and convert the :class:`InferResponse` (or the raised
``GatewayError``) back. Nothing here knows about gRPC or HTTP.

A request is routed on the event loop, in microseconds (:mod:`gateway.admission`): it is
admitted to the most accurate variant predicted to meet its budget, or shed at once.
Admitted, it becomes a job of the task pool (:mod:`gateway.execution`): a worker thread runs
its task code and graph calls (batched with compatible queued jobs) and hands the answer
back; a task whose runs measure under ``inline_task_max_ms`` runs on the loop itself while
nothing is queued. Names and metadata are the catalog's (:mod:`gateway.catalog`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

from gateway.admission import Admitter
from gateway.backends.base import Backend
from gateway.budget import parse_budget, parse_timeout_s, task_parameters, with_deadline
from gateway.catalog import Catalog, IndexEntry, ModelMetadata
from gateway.config import GatewaySettings
from gateway.errors import (
    CapacityExhaustedError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    VariantUnavailableError,
)
from gateway.execution import TaskPool
from gateway.faults import PROBE_ITEMS
from gateway.limits import Limits
from gateway.manifest import split_model_name
from gateway.metrics import UNKNOWN_MODEL, GatewayMetrics, VariantState
from gateway.registry import VERSION, Registry, ServedFamily, ServedVariant
from gateway.request_log import log_request, request_id
from gateway.routing.live import Clock, LiveLoad, ServiceModels, WorkRate
from gateway.routing.loop_lag import LoopLag
from gateway.routing.shared import SharedTable
from gateway.task_runner import TaskRunner
from gateway.taskio import TensorInfo
from gateway.tasks.base import MAIN_GRAPH, Tensor
from gateway.types import Budget, InferRequest, InferResponse, NamedTensor
from gateway.variant_health import VariantHealth


@dataclass
class _Labels:
    model: str = UNKNOWN_MODEL
    variant: str = ""


class DataPlane:
    """Serves inference and model metadata for every family in a registry."""

    def __init__(
        self,
        registry: Registry,
        backend: Backend,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        *,
        pool_threads: int | None = None,
        table: SharedTable | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """Wire the data plane.

        Args:
            registry: The served families.
            backend: Runs the graphs.
            settings: Limits, defaults and pool sizes.
            metrics: Where every series goes.
            pool_threads: Worker threads of the task pool (default: ``task_threads``).
            table: Live load shared with the other worker processes (default: private).
            clock: Monotonic seconds; a seam for tests and benchmarks.
        """
        self.registry = registry
        self.backend = backend
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.catalog = Catalog(registry)
        self.info = self.catalog.info
        self.live = LiveLoad(table)
        self.loop_lag = LoopLag(clock)
        self.work_rate = WorkRate(clock)
        self.models = ServiceModels(
            settings.observed_weight,
            settings.live_min_samples,
            table,
            stale_s=settings.observed_stale_s,
            clock=clock,
        )
        self.default_budget = Budget(
            latency_budget_s=settings.default_latency_budget_s,
            gpu_memory_budget_bytes=settings.default_gpu_memory_budget_bytes,
            min_accuracy=settings.default_min_accuracy,
            hard=settings.default_latency_budget_policy == "hard",
        )
        self.pool = TaskPool(
            "gateway-task",
            pool_threads or settings.task_threads,
            max_queue=settings.max_queue,
            clock=clock,
            on_queue=self.live.queue_changed,
        )
        self.admitter = Admitter(
            backend=backend,
            pool=self.pool,
            models=self.models,
            live=self.live,
            loop_lag=self.loop_lag,
            work_rate=self.work_rate,
            settings=settings,
            metrics=metrics,
            clock=clock,
        )
        self.runner = TaskRunner(
            backend=backend,
            pool=self.pool,
            live=self.live,
            loop_lag=self.loop_lag,
            work_rate=self.work_rate,
            settings=settings,
            metrics=metrics,
            clock=clock,
        )
        self.limits = Limits.from_settings(settings)
        """Request limits; the transports check the wire-level ones, ``_infer`` the items."""
        self.health = VariantHealth(settings.quarantine_policy, self._probe, metrics, clock)
        """Variants quarantined after run-time failures, and their health checks."""

    # -- health and metadata -------------------------------------------------------------

    def is_ready(self) -> bool:
        """The repository has been read and at least one family can serve."""
        snapshot = self.registry.snapshot
        if not self.backend.is_serving():
            return False
        return snapshot.loaded and any(f.ready_variants() for f in snapshot.families.values())

    def resolve(self, name: str, version: str = "") -> tuple[ServedFamily, str | None]:
        """The family a name refers to and the variant it pins (see :class:`Catalog`)."""
        return self.catalog.resolve(name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether ``name`` can serve now (see :meth:`Catalog.model_ready`)."""
        return self.catalog.model_ready(name, version)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """Task-level metadata of a family or variant (see :meth:`Catalog.model_metadata`)."""
        return self.catalog.model_metadata(name, version)

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every family and variant name with its state."""
        return self.catalog.repository_index(ready_only)

    def variant_states(self) -> Iterator[VariantState]:
        """Every published variant's readiness and load, for the metrics scrape."""
        for name, family in self.registry.snapshot.families.items():
            for served in family.variants.values():
                key = served.variant.model_name
                yield VariantState(
                    model=name,
                    variant=served.variant,
                    ready=served.ready,
                    in_flight=self.live.in_flight(key),
                    queue_depth=self.live.queued(key) + self.backend.queue_depth(served.ref),
                    quarantined=self.health.is_quarantined(served),
                )

    # -- repository control (admin) ------------------------------------------------------

    async def load_model(self, name: str) -> None:
        """Read a family's manifest again now (serving it again if it was unloaded).

        Raises:
            ModelNotFoundError: The repository has no such family.
            VariantUnavailableError: Its manifest or every variant failed to load.
        """
        family, _ = split_model_name(name)
        await self.registry.load(family)
        self.resolve(family, "")
        if not self.model_ready(family):
            raise VariantUnavailableError(f"model '{family}' loaded but no variant can serve")

    async def unload_model(self, name: str) -> None:
        """Stop serving a family until it is loaded again.

        Raises:
            InvalidRequestError: ``name`` is a variant (the manifest decides those).
            ModelNotFoundError: No such family is served.
        """
        family, variant = split_model_name(name)
        if variant is not None:
            raise InvalidRequestError(
                f"unload takes a family, not a variant; to stop serving {name}, reject it in "
                f"the {family} manifest"
            )
        if not await self.registry.unload(family):
            raise ModelNotFoundError(f"unknown model '{family}'")

    # -- inference -----------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        """Serve one request end to end.

        Raises:
            GatewayError: Any failure a client should see, with its status codes.
        """
        start_s = self.clock()
        labels = _Labels()
        rid = request_id(request.request_id, request.headers)
        code = "INTERNAL"
        try:
            response = await self._counted(replace(request, request_id=rid), labels, start_s)
            code = "OK"
            return response
        except GatewayError as exc:
            code = exc.code_name
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"  # the client went away
            raise
        finally:
            log_request(
                rid, request.protocol, labels.model, labels.variant, code, self.clock() - start_s
            )

    async def _counted(
        self, request: InferRequest, labels: _Labels, start_s: float
    ) -> InferResponse:
        """:meth:`infer` with its metrics: shed at capacity, outcome, latency, budget."""
        if self.live.total >= self.settings.max_in_flight:
            family, _ = split_model_name(request.model_name)
            model = family if family in self.registry.snapshot.families else UNKNOWN_MODEL
            self.metrics.shed_total.labels(model, "gateway").inc()
            self.metrics.variant(model, "").request("RESOURCE_EXHAUSTED")
            raise CapacityExhaustedError(
                f"the gateway is at capacity ({self.settings.max_in_flight} requests in flight)"
            )
        try:
            response, budget = await self._infer(request, labels, start_s)
        except GatewayError as exc:
            self.metrics.variant(labels.model, labels.variant).request(exc.code_name)
            raise
        except Exception:  # a bug: the transport logs it and answers INTERNAL
            self.metrics.variant(labels.model, labels.variant).request("INTERNAL")
            raise
        elapsed_s = self.clock() - start_s
        bound = self.metrics.variant(labels.model, labels.variant)
        bound.request("OK")
        bound.latency(request.protocol, elapsed_s)
        if budget.latency_budget_s is not None:
            self.metrics.budget_requests_total.labels(labels.model).inc()
            if elapsed_s > budget.latency_budget_s:
                bound.budget_miss()
        return response

    def _deadline(self, request: InferRequest, start_s: float) -> tuple[float | None, float]:
        """(client timeout in seconds or None, absolute deadline including the server cap)."""
        timeouts = [t for t in (request.timeout_s, parse_timeout_s(request.parameters)) if t]
        client_s = min(timeouts) if timeouts else None
        limit_s = min([*timeouts, self.settings.request_timeout_s])
        return client_s, start_s + limit_s

    async def _infer(
        self, request: InferRequest, labels: _Labels, start_s: float
    ) -> tuple[InferResponse, Budget]:
        family, pin = self.resolve(request.model_name, request.model_version)
        labels.model = family.manifest.family
        budget = parse_budget(request.parameters, request.headers).or_defaults(self.default_budget)
        client_timeout_s, deadline_s = self._deadline(request, start_s)
        budget = with_deadline(budget, client_timeout_s)

        candidates = self.admitter.holdable(family, self._candidates(family, pin))
        io = candidates[0].io
        assert io is not None  # candidates are ready, so their io is loaded
        items = io.items(_by_name(request.inputs))
        self.limits.check_items(family.manifest.task, items)
        options = io.options(task_parameters(request.parameters))
        wanted = _check_outputs(request.requested_outputs, io.outputs)
        # Sizes count only where the profile measured latency against them.
        size = sum(io.item_size(x) for x in items) if family.manifest.size_unit else None

        # When the answer is due: the end of its latency budget, else its deadline.
        due_s = deadline_s
        if budget.latency_budget_s is not None:
            due_s = min(deadline_s, start_s + budget.latency_budget_s)
        while True:
            admission = await self.admitter.admit(
                family, candidates, budget, len(items), size, pin is not None, start_s, due_s
            )
            labels.variant = admission.served.variant.name
            bound = self.metrics.variant(labels.model, labels.variant)
            bound.selection(admission.selection.reason)
            try:
                outputs = await self.runner.run(
                    admission, items, options, budget, start_s, due_s, deadline_s, bound
                )
            except Exception as exc:
                failed = admission.served
                if not self.health.failed(family, failed, exc) or pin is not None:
                    raise
                # The variant's own fault: once more on the next variant, if time is left.
                candidates = [c for c in candidates if c.ref != failed.ref]
                if not candidates or self.clock() >= due_s:
                    raise
                self.metrics.retries_total.labels(labels.model).inc()
                continue
            finally:
                self.backend.release(admission.lease)
            self.health.succeeded(admission.served)
            break
        if wanted is not None:
            outputs = [o for o in outputs if o.name in wanted]
        response = InferResponse(
            model_name=request.model_name,
            model_version=VERSION,
            request_id=request.request_id,
            outputs=outputs,
            selection=admission.selection,
        )
        return response, budget

    def _candidates(self, family: ServedFamily, pin: str | None) -> list[ServedVariant]:
        self.health.prepare(family)
        if pin is not None:
            served = family.variants[pin]
            if not served.ready:
                raise VariantUnavailableError(
                    f"{served.variant.model_name} cannot serve: {served.error}"
                )
            self.health.check_pinned(served)
            return [served]
        ready = family.ready_variants()
        if not ready:
            why = "; ".join(f"{v.variant.name}: {v.error}" for v in family.variants.values())
            raise VariantUnavailableError(
                f"no variant of '{family.manifest.family}' can serve: {why or 'none published'}"
            )
        return self.health.in_service(family, ready)

    async def _probe(self, family: ServedFamily, served: ServedVariant) -> None:
        """A health check: run ``served`` on its task's canned item, as a request would.

        Raises:
            Exception: Whatever the run raised; a variant whose task has no canned item
                passes once its wait is over (the next failure quarantines it again).
        """
        make_items = PROBE_ITEMS.get(family.manifest.task)
        io = served.io
        if make_items is None or io is None:
            return
        timeout_s = self.settings.request_timeout_s
        lease = await self.backend.acquire([served.ref], timeout_s)
        try:
            runner = self.backend.graph_runner(lease, asyncio.get_running_loop())

            def run_graph(
                inputs: Mapping[str, Tensor], graph: str = MAIN_GRAPH
            ) -> Mapping[str, Tensor]:
                return runner(inputs, timeout_s, graph)

            items = make_items()
            results = await asyncio.to_thread(io.run, items, run_graph, io.options({}))
            io.pack(results)
        finally:
            self.backend.release(lease)

    def start(self) -> None:
        """Start measuring the event loop's lag (on the loop that will serve)."""
        self.loop_lag.start()

    async def close(self) -> None:
        """Stop the task pool (queued jobs fail; running ones finish in the background)."""
        await self.health.close()
        await self.loop_lag.stop()
        self.pool.close()


def _by_name(inputs: list[NamedTensor]) -> dict[str, NamedTensor]:
    named: dict[str, NamedTensor] = {}
    for tensor in inputs:
        if tensor.name in named:
            raise InvalidRequestError(f"input '{tensor.name}' is given twice")
        named[tensor.name] = tensor
    return named


def _check_outputs(requested: list[str] | None, outputs: tuple[TensorInfo, ...]) -> set[str] | None:
    if not requested:
        return None
    known = {o.name for o in outputs}
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise InvalidRequestError(
            f"unknown output(s) {', '.join(unknown)}; this model has {', '.join(sorted(known))}"
        )
    return set(requested)
