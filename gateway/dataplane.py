"""The transport-free core: resolve the model, check the inputs, choose a variant, run it.

Both transports convert their wire format into an :class:`InferRequest`, call
:meth:`DataPlane.infer` and convert the :class:`InferResponse` (or the raised
``GatewayError``) back. Nothing here knows about gRPC or HTTP.

A request's task code (decoding, features, the translation decode loop) runs on a bounded
thread pool; each graph call it makes hops back to the event loop into the backend, where
concurrent requests to the same variant are batched.

With a backend that places variants itself (Triton within a GPU-memory budget), the variant
the selector picks among all servable ones is the request's *demand*, reported to the
backend; the request then runs on the best-ranked variant that is resident (reason
``loading`` when that is not the one demanded), or waits within its deadline for a load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.backends.base import Backend, Lease, PlacingBackend
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
from gateway.limits import Limits
from gateway.manifest import split_model_name
from gateway.metrics import UNKNOWN_MODEL, GatewayMetrics
from gateway.registry import VERSION, Registry, ServedFamily, ServedVariant
from gateway.routing.live import Clock, LiveStats
from gateway.routing.selector import SelectorConfig, select
from gateway.taskio import TASK_IO, TensorInfo
from gateway.tasks.base import Tensor
from gateway.types import Budget, InferRequest, InferResponse, NamedTensor, Selection

ROUTER_PLATFORM = "variant-router"
"""``platform`` reported for a family name, which routes across variants."""
VARIANT_PLATFORM = "onnxruntime_onnx"
"""``platform`` reported for a pinned variant name."""
LOADING = "loading"
"""Selection reason: a more accurate variant fits but is still being loaded."""


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


class DataPlane:
    """Serves inference and model metadata for every family in a registry."""

    def __init__(
        self,
        registry: Registry,
        backend: Backend,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        live: LiveStats | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        """Wire the data plane; ``live`` and ``clock`` are seams for tests and benchmarks."""
        self.registry = registry
        self.backend = backend
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.live = live or LiveStats(settings.live_window_s, clock)
        self.selector_config = SelectorConfig(
            max_in_flight_per_variant=settings.max_in_flight_per_variant,
            parallelism=settings.variant_concurrency,
            observed_weight=settings.observed_weight,
            min_samples=settings.live_min_samples,
            window_s=settings.live_window_s,
        )
        self.default_budget = Budget(
            latency_budget_s=settings.default_latency_budget_s,
            gpu_memory_budget_bytes=settings.default_gpu_memory_budget_bytes,
            min_accuracy=settings.default_min_accuracy,
        )
        self._task_pool = concurrent.futures.ThreadPoolExecutor(
            settings.task_threads, thread_name_prefix="gateway-task"
        )
        self._in_flight = 0
        self._placing = backend if isinstance(backend, PlacingBackend) else None
        self.limits = Limits.from_settings(settings)
        """Request limits; the transports check the wire-level ones, ``_infer`` the items."""

    # -- health and metadata -------------------------------------------------------------

    def is_ready(self) -> bool:
        """The repository has been read and at least one family can serve."""
        snapshot = self.registry.snapshot
        if self._placing is not None and not self._placing.is_serving():
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

    # -- inference -----------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        """Serve one request end to end.

        Raises:
            GatewayError: Any failure a client should see, with its status codes.
        """
        start_s = self.clock()
        labels = _Labels()
        if self._in_flight >= self.settings.max_in_flight:
            family, _ = split_model_name(request.model_name)
            model = family if family in self.registry.snapshot.families else UNKNOWN_MODEL
            self.metrics.shed_total.labels(model, "gateway").inc()
            self.metrics.requests_total.labels(model, "", "RESOURCE_EXHAUSTED").inc()
            raise CapacityExhaustedError(
                f"the gateway is at capacity ({self.settings.max_in_flight} requests in flight)"
            )
        self._in_flight += 1
        try:
            response, budget = await self._infer(request, labels, start_s)
        except GatewayError as exc:
            self.metrics.requests_total.labels(labels.model, labels.variant, exc.code_name).inc()
            raise
        except Exception:  # a bug: the transport logs it and answers INTERNAL
            self.metrics.requests_total.labels(labels.model, labels.variant, "INTERNAL").inc()
            raise
        finally:
            self._in_flight -= 1
        elapsed_s = self.clock() - start_s
        self.metrics.requests_total.labels(labels.model, labels.variant, "OK").inc()
        self.metrics.request_seconds.labels(labels.model, labels.variant, request.protocol).observe(
            elapsed_s
        )
        if budget.latency_budget_s is not None:
            self.metrics.budget_requests_total.labels(labels.model).inc()
            if elapsed_s > budget.latency_budget_s:
                self.metrics.budget_misses_total.labels(labels.model, labels.variant).inc()
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
            budget = budget.tightened(Budget(latency_budget_s=client_timeout_s))

        candidates = self._candidates(family, pin)
        if self._placing is not None:
            candidates = self._holdable(family, candidates, self._placing)
        io = candidates[0].io
        assert io is not None  # candidates are ready, so their io is loaded
        items = io.items(_by_name(request.inputs))
        self.limits.check_items(family.manifest.task, items)
        options = io.options(task_parameters(request.parameters))
        wanted = _check_outputs(request.requested_outputs, io.outputs)

        keys = [c.variant.model_name for c in candidates]
        depths = {c.variant.model_name: self.backend.queue_depth(c.ref) for c in candidates}
        try:
            choice = select(
                family.manifest.family,
                budget,
                [c.variant for c in candidates],
                self.live.snapshot(keys, depths),
                self.clock(),
                self.selector_config,
                batch_size=len(items),
                pinned=pin is not None,
            )
        except CapacityExhaustedError:
            self.metrics.shed_total.labels(labels.model, "variants").inc()
            raise
        by_name = {c.variant.name: c for c in candidates}
        top = choice.ranked[0]
        served = by_name[top.variant.name]
        reason, detail = choice.reason, choice.detail
        lease: Lease | None = None
        if self._placing is not None:
            ranked = [by_name[r.variant.name] for r in choice.ranked]
            lease = await self._lease(self._placing, ranked, deadline_s)
            if lease.ref != served.ref:
                i = next(i for i, c in enumerate(ranked) if c.ref == lease.ref)
                reason = LOADING
                detail = (
                    f"{served.variant.name} is being loaded; "
                    f"{ranked[i].variant.name} serves meanwhile"
                )
                top, served = choice.ranked[i], ranked[i]
        labels.variant = served.variant.name
        self.metrics.selections_total.labels(labels.model, labels.variant, reason).inc()

        try:
            outputs = await self._run(served, items, options, deadline_s, labels, lease)
        finally:
            if lease is not None and self._placing is not None:
                self._placing.release(lease)
        if wanted is not None:
            outputs = [o for o in outputs if o.name in wanted]
        selection = Selection(
            variant=served.variant.name,
            model_name=served.variant.model_name,
            reason=reason,
            detail=detail,
            predicted_latency_s=top.predicted_latency_s,
        )
        response = InferResponse(
            model_name=request.model_name,
            model_version=VERSION,
            request_id=request.request_id,
            outputs=outputs,
            selection=selection,
        )
        return response, budget

    @staticmethod
    def _candidates(family: ServedFamily, pin: str | None) -> list[ServedVariant]:
        if pin is not None:
            served = family.variants[pin]
            if not served.ready:
                raise VariantUnavailableError(
                    f"{served.variant.model_name} cannot serve: {served.error}"
                )
            return [served]
        ready = family.ready_variants()
        if not ready:
            why = "; ".join(f"{v.variant.name}: {v.error}" for v in family.variants.values())
            raise VariantUnavailableError(
                f"no variant of '{family.manifest.family}' can serve: {why or 'none published'}"
            )
        return ready

    @staticmethod
    def _holdable(
        family: ServedFamily, candidates: list[ServedVariant], placing: PlacingBackend
    ) -> list[ServedVariant]:
        """The candidates the backend could ever make resident."""
        holdable = [c for c in candidates if placing.can_hold(c.ref)]
        if not holdable:
            names = ", ".join(c.variant.name for c in candidates)
            raise VariantUnavailableError(
                f"no variant of '{family.manifest.family}' ({names}) fits the backend's "
                "GPU-memory budget"
            )
        return holdable

    async def _lease(
        self, placing: PlacingBackend, ranked: list[ServedVariant], deadline_s: float
    ) -> Lease:
        """Report the demand for ``ranked[0]`` and lease the best resident of ``ranked``."""
        placing.note_demand(ranked[0].ref)
        return await placing.acquire([c.ref for c in ranked], deadline_s - self.clock())

    async def _run(
        self,
        served: ServedVariant,
        items: list[Any],
        options: Mapping[str, Any],
        deadline_s: float,
        labels: _Labels,
        lease: Lease | None = None,
    ) -> list[NamedTensor]:
        """Run the task for ``items`` on one variant, its graph calls through the backend."""
        io = served.io
        assert io is not None
        loop = asyncio.get_running_loop()
        abandoned = threading.Event()
        backend_seconds = self.metrics.backend_seconds.labels(labels.model, labels.variant)

        async def timed_run(inputs: Mapping[str, Tensor], timeout_s: float) -> dict[str, Tensor]:
            t0 = self.clock()
            try:
                if lease is not None and self._placing is not None:
                    return await self._placing.run_leased(lease, inputs, timeout_s)
                return await self.backend.run(served.ref, inputs, timeout_s)
            except CapacityExhaustedError:
                self.metrics.shed_total.labels(labels.model, "queue").inc()
                raise
            finally:
                backend_seconds.observe(self.clock() - t0)

        def run_graph(inputs: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
            remaining_s = deadline_s - self.clock()
            if abandoned.is_set() or remaining_s <= 0:
                raise BackendTimeoutError("the request's deadline passed")
            future = asyncio.run_coroutine_threadsafe(timed_run(inputs, remaining_s), loop)
            try:
                # The backend enforces remaining_s itself; the margin only guards a lost reply.
                return future.result(timeout=remaining_s + 1.0)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise BackendTimeoutError("the request's deadline passed") from None

        chunk = max(1, served.ref.max_batch_size)

        def work() -> list[NamedTensor]:
            results: list[Any] = []
            for i in range(0, len(items), chunk):
                results.extend(io.run(items[i : i + chunk], run_graph, options))
            return io.pack(results)

        key = served.variant.model_name
        in_flight = self.metrics.in_flight.labels(labels.model, labels.variant)
        self.live.begin(key)
        in_flight.inc()
        t0 = self.clock()
        latency_s: float | None = None
        ok = True
        try:
            remaining_s = max(0.0, deadline_s - t0)
            outputs = await asyncio.wait_for(
                loop.run_in_executor(self._task_pool, work), remaining_s
            )
            latency_s = self.clock() - t0
            return outputs
        except TimeoutError:
            ok, latency_s = False, self.clock() - t0
            raise BackendTimeoutError(
                f"{served.variant.model_name} gave no result within the request's deadline "
                f"({(deadline_s - t0) * 1000:.0f} ms)"
            ) from None
        except InvalidRequestError:
            raise  # the client's fault, not the variant's: no sample
        except Exception:
            ok, latency_s = False, self.clock() - t0
            raise
        finally:
            abandoned.set()
            in_flight.dec()
            self.live.end(key, latency_s, ok)

    async def close(self) -> None:
        """Stop the task threads (running tasks finish in the background)."""
        self._task_pool.shutdown(wait=False, cancel_futures=True)


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
