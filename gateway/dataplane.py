"""The transport-free core: resolve the model, check the inputs, choose a variant, run it.

Both transports convert their wire format into an :class:`InferRequest`, call
:meth:`DataPlane.infer` and convert the :class:`InferResponse` (or the raised
``GatewayError``) back. Nothing here knows about gRPC or HTTP.

A request is routed on the event loop, in microseconds: the selector predicts its
completion on each variant from the work queued in the compute pool and the variant's
service-time model, and it is admitted to the most accurate variant that meets its budget,
or shed at once. Admitted, it becomes a job of the task pool: a worker thread runs its task
code and graph calls (batched with compatible queued jobs) and hands the answer back.

The backend leases the variant to run on: the embedded backend at once; a Triton backend
within a GPU-memory budget may lease a resident, less accurate variant while the chosen one
loads (reason ``loading``), or make the request wait within its deadline.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.backends.base import Backend, Lease
from gateway.budget import parse_budget, parse_timeout_s, task_parameters
from gateway.config import GatewaySettings
from gateway.errors import (
    BackendTimeoutError,
    CapacityExhaustedError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    VariantUnavailableError,
)
from gateway.execution import Job, PoolStats, TaskPool, run_inline
from gateway.faults import PROBE_ITEMS
from gateway.limits import Limits
from gateway.manifest import split_model_name
from gateway.metrics import UNKNOWN_MODEL, GatewayMetrics, VariantState
from gateway.registry import VERSION, Registry, ServedFamily, ServedVariant
from gateway.request_log import log_request, request_id
from gateway.routing.live import Clock, LiveLoad, ServiceModels, WorkRate
from gateway.routing.loop_lag import LoopLag
from gateway.routing.selector import Estimate, select
from gateway.routing.service_time import Prediction, ServiceModel
from gateway.routing.shared import SharedTable
from gateway.taskio import TASK_IO, TensorInfo
from gateway.tasks.base import MAIN_GRAPH, Tensor
from gateway.types import Budget, InferRequest, InferResponse, NamedTensor, Selection
from gateway.variant_health import VariantHealth

ROUTER_PLATFORM = "variant-router"
"""``platform`` reported for a family name, which routes across variants."""
VARIANT_PLATFORM = "onnxruntime_onnx"
"""``platform`` reported for a pinned variant name."""
LOADING = "loading"
"""Selection reason: a more accurate variant fits but is still being loaded."""
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


@dataclass
class _Labels:
    model: str = UNKNOWN_MODEL
    variant: str = ""


@dataclass(frozen=True)
class _Admission:
    """Where a request was admitted and what was predicted for it."""

    served: ServedVariant
    lease: Lease
    model: ServiceModel
    selection: Selection
    cost_s: float
    tail_s: float
    measured_s: float | None
    size: float | None
    concurrency: int


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
        self.info = ServerInfo(SERVER_NAME, server_version(), EXTENSIONS)
        self.live = LiveLoad(table)
        self.loop_lag = LoopLag(clock)
        self.work_rate = WorkRate(clock)
        self._lag_weight = settings.observed_weight
        self.models = ServiceModels(settings.observed_weight, settings.live_min_samples, table)
        self.default_budget = Budget(
            latency_budget_s=settings.default_latency_budget_s,
            gpu_memory_budget_bytes=settings.default_gpu_memory_budget_bytes,
            min_accuracy=settings.default_min_accuracy,
            hard=settings.default_latency_budget_policy == "hard",
        )
        self._inline_limit_s = settings.inline_task_max_ms / 1000.0
        self.pool = TaskPool(
            "gateway-task",
            pool_threads or settings.task_threads,
            max_queue=settings.max_queue,
            clock=clock,
            on_queue=self.live.queue_changed,
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

    def _resolve(self, name: str, version: str) -> tuple[ServedFamily, str | None]:
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
            family, variant = self._resolve(name, version)
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
        family, variant = self._resolve(name, version)
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
        self._resolve(family, "")
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
        family, pin = self._resolve(request.model_name, request.model_version)
        labels.model = family.manifest.family
        budget = parse_budget(request.parameters, request.headers).or_defaults(self.default_budget)
        client_timeout_s, deadline_s = self._deadline(request, start_s)
        if client_timeout_s is not None:
            budget = budget.tightened(Budget(latency_budget_s=client_timeout_s, hard=True))

        candidates = self._holdable(family, self._candidates(family, pin))
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
            admission = await self._admit(
                family, candidates, budget, len(items), size, pin is not None, start_s, due_s
            )
            labels.variant = admission.served.variant.name
            bound = self.metrics.variant(labels.model, labels.variant)
            bound.selection(admission.selection.reason)
            try:
                outputs = await self._run(
                    admission, items, options, budget, start_s, due_s, deadline_s, labels
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

    def _estimate(
        self,
        family: ServedFamily,
        served: ServedVariant,
        rows: int,
        size: float | None,
        pool: PoolStats,
    ) -> tuple[Estimate, ServiceModel, Prediction]:
        """Predict this request's run on one variant, with the pool as it is now."""
        model = self.models.get(family.manifest, served.variant)
        prediction = model.predict(rows, size, pool.concurrency_next)
        wait_s = pool.wait_s
        backend_queue = self.backend.queue_depth(served.ref)
        if backend_queue:
            wait_s += backend_queue * prediction.p50_s / rows / pool.threads
        estimate = Estimate(
            idle_p50_s=prediction.idle_p50_s,
            idle_p95_s=prediction.idle_p95_s,
            service_p95_s=prediction.p95_s,
            service_p50_s=prediction.p50_s,
            wait_s=wait_s,
            in_flight=self.live.in_flight(served.variant.model_name),
        )
        return estimate, model, prediction

    async def _admit(
        self,
        family: ServedFamily,
        candidates: list[ServedVariant],
        budget: Budget,
        rows: int,
        size: float | None,
        pinned: bool,
        start_s: float,
        due_s: float,
    ) -> _Admission:
        """Choose the variant, lease it and say why; shed or refuse if none fits."""
        pool = self.pool.stats(due_s)
        estimates: dict[str, Estimate] = {}
        models: dict[str, tuple[ServiceModel, Prediction]] = {}
        for served in candidates:
            key = served.variant.model_name
            estimate, model, prediction = self._estimate(family, served, rows, size, pool)
            estimates[key], models[key] = estimate, (model, prediction)
        try:
            choice = select(
                family.manifest.family,
                budget,
                [c.variant for c in candidates],
                estimates,
                max_in_flight_per_variant=self.settings.max_in_flight_per_variant,
                # Time spent so far, plus what it waited for the loop to get to it.
                elapsed_s=self.clock() - start_s + self._lag_weight * self.loop_lag.lag_s,
                pinned=pinned,
                utilization=self.work_rate.per_s() / pool.threads,
                target_utilization=self.settings.target_utilization,
                queue_headroom=self.settings.queue_headroom,
            )
        except CapacityExhaustedError:
            self.metrics.shed_total.labels(family.manifest.family, "variants").inc()
            raise
        by_name = {c.variant.name: c for c in candidates}
        ranked = [by_name[r.variant.name] for r in choice.ranked]
        self.backend.note_demand(ranked[0].ref)
        lease = await self.backend.acquire([c.ref for c in ranked], due_s - self.clock())
        i = next(i for i, c in enumerate(ranked) if c.ref == lease.ref)
        served, top = ranked[i], choice.ranked[i]
        reason, detail = choice.reason, choice.detail
        if i > 0:
            reason = LOADING
            detail = (
                f"{ranked[0].variant.name} is being loaded; {served.variant.name} serves meanwhile"
            )
        model, prediction = models[served.variant.model_name]
        selection = Selection(
            variant=served.variant.name,
            model_name=served.variant.model_name,
            reason=reason,
            detail=detail,
            predicted_latency_s=top.predicted_latency_s,
        )
        return _Admission(
            served,
            lease,
            model,
            selection,
            prediction.p50_s,
            prediction.p95_s,
            prediction.measured_p50_s,
            size,
            pool.concurrency_next,
        )

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
                return runner(inputs, timeout_s)

            items = make_items()
            results = await asyncio.to_thread(io.run, items, run_graph, io.options({}))
            io.pack(results)
        finally:
            self.backend.release(lease)

    def _holdable(
        self, family: ServedFamily, candidates: list[ServedVariant]
    ) -> list[ServedVariant]:
        """The candidates the backend could ever make resident."""
        holdable = [c for c in candidates if self.backend.can_hold(c.ref)]
        if not holdable:
            names = ", ".join(c.variant.name for c in candidates)
            raise VariantUnavailableError(
                f"no variant of '{family.manifest.family}' ({names}) fits the backend's "
                "GPU-memory budget"
            )
        return holdable

    async def _run(
        self,
        admission: _Admission,
        items: list[Any],
        options: Mapping[str, Any],
        budget: Budget,
        start_s: float,
        due_s: float,
        deadline_s: float,
        labels: _Labels,
    ) -> list[NamedTensor]:
        """Run the task for ``items``: inline if it is cheap, else as a job of the pool."""
        served, lease = admission.served, admission.lease
        model, concurrency = admission.model, admission.concurrency
        io = served.io
        assert io is not None
        loop = asyncio.get_running_loop()
        runner = self.backend.graph_runner(lease, loop)
        bound = self.metrics.variant(labels.model, labels.variant)
        backend_seconds = bound.backend_seconds
        clock = self.clock

        def run_graph(
            inputs: Mapping[str, Tensor], graph: str = MAIN_GRAPH
        ) -> Mapping[str, Tensor]:
            t0 = clock()
            try:
                return runner(inputs, deadline_s - t0)
            finally:
                backend_seconds.observe(clock() - t0)

        def run_task(batch_items: list[Any]) -> list[Any]:
            return io.run(batch_items, run_graph, options)

        key = served.variant.model_name
        max_rows = max(1, served.ref.max_batch_size)
        self.live.begin(key)
        self.work_rate.add(admission.cost_s)
        try:
            if self._inline(admission, len(items)):
                results = run_inline(
                    items, run_task, max_rows, admission.size, admission.model.observe, clock
                )
                return io.pack(results)
            # The last moment the job may start and still end in time (its tail within the
            # deadline), unless late answers help.
            start_by_s = deadline_s - admission.tail_s
            if budget.hard is not False:
                start_by_s = due_s - admission.tail_s
            job = Job(
                key=(key, lease.holder, _options_key(options), io.batch_key(items)),
                items=items,
                run=run_task,
                cost_s=admission.cost_s,
                tail_s=admission.tail_s,
                max_rows=max_rows,
                due_s=due_s,
                start_by_s=start_by_s,
                future=loop.create_future(),
                loop=loop,
                label=key,
                size=admission.size,
                observe=admission.model.observe,
                run_tail_s=lambda rows, size: model.p95_s(rows, size, concurrency),
            )
            return io.pack(await self._queued(job, labels, start_s, deadline_s))
        finally:
            self.live.end(key)

    def _inline(self, admission: _Admission, rows: int) -> bool:
        """Whether to run a job on the event loop itself: cheap, nothing queued, loop free.

        Two thread hand-offs cost more than a sub-millisecond task; a longer one would hold
        up every other request on the loop, so a variant runs inline only once its own
        measured runs (in the pool) show it is cheap, whatever its profile claims, and only
        while the loop keeps up: a busy loop must route and shed, not compute.
        """
        if self._inline_limit_s <= 0 or not self.backend.runs_in_caller:
            return False
        measured_s = admission.measured_s
        return (
            measured_s is not None
            and measured_s <= self._inline_limit_s
            and self.loop_lag.lag_s < self._inline_limit_s
            and not self.pool.has_queue()
        )

    async def _queued(
        self, job: Job, labels: _Labels, start_s: float, deadline_s: float
    ) -> list[Any]:
        """Hand ``job`` to the pool and wait for its results within the deadline."""
        if not self.pool.submit(job):
            self.metrics.shed_total.labels(labels.model, "queue").inc()
            raise CapacityExhaustedError(
                f"{job.label}: the task queue is full ({self.settings.max_queue} jobs waiting)"
            )
        try:
            return await asyncio.wait_for(job.future, max(0.0, deadline_s - self.clock()))
        except TimeoutError:
            job.abandoned = True
            raise BackendTimeoutError(
                f"{job.label} gave no result within the request's deadline "
                f"({(deadline_s - start_s) * 1000:.0f} ms)"
            ) from None
        except BackendTimeoutError:
            self.metrics.shed_total.labels(labels.model, "late").inc()
            raise
        except asyncio.CancelledError:
            job.abandoned = True
            raise

    def start(self) -> None:
        """Start measuring the event loop's lag (on the loop that will serve)."""
        self.loop_lag.start()

    async def close(self) -> None:
        """Stop the task pool (queued jobs fail; running ones finish in the background)."""
        await self.health.close()
        await self.loop_lag.stop()
        self.pool.close()


def _options_key(options: Mapping[str, Any]) -> Hashable:
    try:
        return tuple(sorted(options.items()))
    except TypeError:  # unhashable or unorderable option values: never share a run
        return object()


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
