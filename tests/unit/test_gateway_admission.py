"""Admission on a simulated queue: the real prediction and selection, in virtual time.

A small discrete-event simulation stands in for the machine: two worker threads take jobs
earliest-due first and run them for their (jittered) true service time. Every decision is
the gateway's own code: the wait a new job predicts (``predicted_wait_s``), the service-time
model (``ServiceModel``, learning from each finished run), the utilisation signal
(``WorkRate``, fed with each run's time) and the selector (``select``). Nothing depends on
how fast this machine is.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import pytest

from gateway.errors import BudgetUnsatisfiableError, CapacityExhaustedError
from gateway.execution import predicted_wait_s
from gateway.manifest import Artifact, LatencyPoint, Variant
from gateway.routing.live import WorkRate
from gateway.routing.selector import Estimate, select
from gateway.routing.service_time import ServiceModel, fit_profile
from gateway.types import Budget

THREADS = 2
SERVICE_S = {"fp32": 0.020, "int8": 0.008}
QUALITY = {"fp32": 98.0, "int8": 96.0}
CAPACITY = {name: THREADS / s for name, s in SERVICE_S.items()}  # 100/s and 250/s


def variant(name: str) -> Variant:
    p50 = SERVICE_S[name]
    point = LatencyPoint(
        batch_size=1,
        concurrency=1,
        runs=50,
        p50_s=p50,
        p95_s=1.2 * p50,
        p99_s=1.3 * p50,
        throughput_per_s=1 / p50,
    )
    return Variant(
        name=name,
        model_name=f"fam__{name}",
        status="published",
        recommended=True,
        precision="fp32",
        pruning_ratio=0.0,
        artifacts=[Artifact(path=f"fam__{name}/1/model.onnx", sha256="0" * 64, size_bytes=1)],
        size_bytes=1,
        parameters=1,
        metrics={"top1": QUALITY[name]},
        quality=QUALITY[name],
        quality_drop=0.0,
        latency=[point],
        resident_memory_bytes=1,
        gpu_memory_bytes=1,
    )


@dataclass(order=True)
class Job:
    due_s: float
    arrived_s: float = field(compare=False)
    variant: str = field(compare=False)
    cost_s: float = field(compare=False)
    tail_s: float = field(compare=False)


@dataclass
class Outcome:
    arrived_s: float
    status: str
    variant: str = ""
    latency_s: float = 0.0


class Simulation:
    def __init__(self, budget_s: float, seed: int = 0) -> None:
        self.now = 0.0
        self.budget_s = budget_s
        self.rng = np.random.default_rng(seed)
        self.variants = [variant("fp32"), variant("int8")]
        self.models = {
            v.name: ServiceModel(fit_profile(v.latency), observed_weight=1.0, min_samples=5)
            for v in self.variants
        }
        self.rate = WorkRate(clock=lambda: self.now)
        self.queue: list[Job] = []
        self.running: list[tuple[float, float, Job]] = []  # (end, started, job)
        self.outcomes: list[Outcome] = []

    def _remaining(self) -> list[float]:
        return [max(0.0, job.tail_s - (self.now - started)) for _, started, job in self.running]

    def arrive(self) -> None:
        due = self.now + self.budget_s
        ahead = [j.cost_s for j in sorted(self.queue) if j.due_s <= due]
        wait = predicted_wait_s(self._remaining(), ahead, THREADS)
        k = min(THREADS, len(self.running) + len(ahead) + 1)
        estimates = {}
        for v in self.variants:
            p = self.models[v.name].predict(1, None, k)
            estimates[v.model_name] = Estimate(
                idle_p50_s=p.idle_p50_s,
                idle_p95_s=p.idle_p95_s,
                service_p95_s=p.p95_s,
                service_p50_s=p.p50_s,
                wait_s=wait,
            )
        try:
            choice = select(
                "fam",
                Budget(latency_budget_s=self.budget_s, hard=True),
                self.variants,
                estimates,
                max_in_flight_per_variant=1000,
                utilization=self.rate.per_s() / THREADS,
                target_utilization=0.85,
                queue_headroom=0.5,
            )
        except (CapacityExhaustedError, BudgetUnsatisfiableError) as exc:
            self.outcomes.append(Outcome(self.now, type(exc).__name__))
            return
        name = choice.ranked[0].variant.name
        p = self.models[name].predict(1, None, k)
        heapq.heappush(self.queue, Job(due, self.now, name, p.p50_s, p.p95_s))

    def dispatch(self) -> None:
        while self.queue and len(self.running) < THREADS:
            job = heapq.heappop(self.queue)
            if self.now + job.tail_s > job.due_s:  # hard: dropped unrun
                self.outcomes.append(Outcome(job.arrived_s, "late", job.variant))
                continue
            true_s = SERVICE_S[job.variant] * float(self.rng.lognormal(0.0, 0.1))
            heapq.heappush(self.running, (self.now + true_s, self.now, job))

    def finish(self) -> None:
        end, started, job = heapq.heappop(self.running)
        self.models[job.variant].observe(1, None, end - started, len(self.running) + 1)
        self.rate.add(end - started)
        self.outcomes.append(Outcome(job.arrived_s, "OK", job.variant, end - job.arrived_s))

    def run(self, phases: list[tuple[float, float]]) -> None:
        """Poisson arrivals at ``rate`` per second for ``seconds``, phase after phase."""
        arrivals: list[float] = []
        start = 0.0
        for rate, seconds in phases:
            t = start + float(self.rng.exponential(1 / rate))
            while t < start + seconds:
                arrivals.append(t)
                t += float(self.rng.exponential(1 / rate))
            start += seconds
        i = 0
        while i < len(arrivals) or self.queue or self.running:
            next_end = self.running[0][0] if self.running else float("inf")
            if i < len(arrivals) and arrivals[i] <= next_end:
                self.now = arrivals[i]
                i += 1
                self.arrive()
            else:
                self.now = next_end
                self.finish()
            self.dispatch()

    def between(self, start_s: float, end_s: float) -> list[Outcome]:
        return [o for o in self.outcomes if start_s <= o.arrived_s < end_s]


def attained(outcomes: list[Outcome], budget_s: float) -> float:
    good = [o for o in outcomes if o.status == "OK" and o.latency_s <= budget_s]
    return len(good) / len(outcomes)


def test_below_capacity_nothing_is_shed_and_the_largest_serves():
    sim = Simulation(budget_s=0.060)
    sim.run([(0.7 * CAPACITY["fp32"], 20.0)])
    outcomes = sim.between(2.0, 20.0)
    assert all(o.status == "OK" for o in outcomes)
    assert attained(outcomes, 0.060) >= 0.99
    assert sum(o.variant == "fp32" for o in outcomes) / len(outcomes) >= 0.8


def test_overload_is_served_at_the_fastest_variants_capacity_and_nothing_late():
    sim = Simulation(budget_s=0.060)
    sim.run([(3 * CAPACITY["fp32"], 10.0)])
    outcomes = sim.between(1.0, 10.0)
    goodput = sum(o.status == "OK" and o.latency_s <= 0.060 for o in outcomes) / 9.0
    assert goodput >= 0.9 * CAPACITY["int8"]
    answered = [o for o in outcomes if o.status == "OK"]
    # What was run, ran in time, but for a run now and then slower than its predicted tail.
    assert sum(o.latency_s <= 0.060 for o in answered) >= 0.995 * len(answered)
    shed = [o for o in outcomes if o.status == "CapacityExhaustedError"]
    late = [o for o in outcomes if o.status == "late"]
    assert len(shed) > 10 * len(late)  # refused at arrival, rarely dropped from the queue


def test_after_a_burst_the_largest_variant_serves_again_within_a_second():
    sim = Simulation(budget_s=0.060)
    sim.run([(0.5 * CAPACITY["fp32"], 3.0), (3 * CAPACITY["fp32"], 2.0), (40.0, 5.0)])
    during = sim.between(3.5, 5.0)
    assert {o.variant for o in during if o.status == "OK"} >= {"int8"}
    after = sim.between(6.0, 10.0)  # a second after the burst ended
    assert all(o.status == "OK" for o in after)
    assert sum(o.variant == "fp32" for o in after) >= 0.95 * len(after)
    assert attained(after, 0.060) == pytest.approx(1.0)
