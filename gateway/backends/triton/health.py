"""Liveness probes, recovery, and following what others load, one loop per server.

A server that refuses connections, or misses ``PROBE_MISSES`` probes in a row (a hang),
is marked down at once and its calls in flight fail over. When it answers again the probe
reads what it holds, loads what it should and only then takes it back. Beside the probes, a
second loop per server reads a healthy server's repository index, so loads and unloads by
another gateway or an operator are followed, and polls its metrics endpoint, when
configured, for queue signals. The two loops are apart so that a server which hangs in the
middle of those slower calls is still found out by the next probes, each bounded by the
probe interval, and not only once their own timeouts have run out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from tritonclient.utils import InferenceServerException

from gateway.backends.triton.errors import SERVER_DOWN, describe, status_of
from gateway.backends.triton.fleet import Fleet
from gateway.backends.triton.placement import PlacementController
from gateway.backends.triton.replica import Replica
from gateway.backends.triton.server_metrics import fetch_text, parse_triton_metrics
from gateway.backends.triton.telemetry import TritonTelemetry

log = logging.getLogger(__name__)

METRICS_TIMEOUT_S = 2.0
"""Timeout of one scrape of a server's metrics endpoint."""


class HealthMonitor:
    """Probes each replica every ``probe_interval_s`` and acts on what it finds."""

    def __init__(
        self,
        fleet: Fleet,
        placement: PlacementController,
        telemetry: TritonTelemetry,
        probe_interval_s: float,
    ) -> None:
        """Probe ``fleet``'s replicas; ``placement`` reloads what recovered servers lack."""
        self.fleet = fleet
        self.placement = placement
        self.telemetry = telemetry
        self.probe_interval_s = probe_interval_s

    async def run(self, replica: Replica) -> None:
        """Probe ``replica`` forever (a failing probe never stops the loop)."""
        await self._every_interval(self.probe, replica, "probing")

    async def watch(self, replica: Replica) -> None:
        """Follow ``replica``'s repository and poll its metrics forever, while healthy."""
        await self._every_interval(self.observe, replica, "watching")

    async def _every_interval(
        self, step: Callable[[Replica], Awaitable[None]], replica: Replica, doing: str
    ) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            try:
                await step(replica)
            except Exception:  # a failing step must never stop its loop
                log.exception("%s triton %s failed", doing, replica.url)

    async def probe(self, replica: Replica) -> None:
        """One probe: liveness, then recovery of a server that answers again."""
        refused = False
        try:
            live = await replica.is_live(self.probe_interval_s)
            error = "" if live else "server says it is not live"
        except InferenceServerException as exc:
            live, error = False, describe(exc)
            refused = status_of(exc) in SERVER_DOWN
        if not live:
            if replica.probe_missed(refused):
                self.mark_down(replica, error or "no answer")
            return
        replica.probe_answered()
        if not replica.healthy:
            await self._recover(replica)

    async def observe(self, replica: Replica) -> None:
        """Once, for a healthy server: follow changes made by others, then poll metrics."""
        if not replica.healthy:
            return
        if self.placement.explicit:
            await self._follow(replica)
        if replica.metrics_url is not None:
            await self._poll_metrics(replica)

    def mark_down(self, replica: Replica, error: str) -> None:
        """Take ``replica`` out of service now; its calls in flight move elsewhere."""
        if not replica.mark_down(error):
            return
        log.warning("triton %s marked unhealthy: %s", replica.url, error)
        self.telemetry.server_healthy(replica.url, False)
        self.placement.changed(replica)

    async def _recover(self, replica: Replica) -> None:
        """A server answers again: learn what it holds, load what it should, then use it."""
        try:
            states = await replica.repository_index(self.placement.rpc_timeout_s)
        except InferenceServerException as exc:
            replica.note_error(str(exc.message()))
            return
        replica.adopt(name for name, state in states.items() if state == "READY")
        for name in replica.loaded():
            await replica.read_instances(name, self.placement.rpc_timeout_s)
        await self.placement.load_missing(replica)
        replica.mark_up()
        log.info(
            "triton %s healthy; it holds %s",
            replica.url,
            ", ".join(sorted(replica.loaded())) or "no models",
        )
        self.telemetry.server_healthy(replica.url, True)
        self.placement.changed(replica)

    async def _follow(self, replica: Replica) -> None:
        """Follow loads and unloads made by others (another gateway, an operator)."""
        outages = replica.outages
        try:
            states = await replica.repository_index(self.placement.rpc_timeout_s)
        except InferenceServerException:
            return  # the next probe decides about health
        if not replica.healthy or replica.outages != outages:
            return  # down (and perhaps recovered) meanwhile: the index may predate that
        added, removed = replica.follow(n for n, state in states.items() if state == "READY")
        if not added and not removed:
            return
        log.info(
            "triton %s changed outside this gateway: now also %s, no longer %s",
            replica.url,
            ", ".join(sorted(added)) or "nothing",
            ", ".join(sorted(removed)) or "nothing",
        )
        self.placement.changed(replica)
        for name in added:
            await replica.read_instances(name, self.placement.rpc_timeout_s)

    async def _poll_metrics(self, replica: Replica) -> None:
        assert replica.metrics_url is not None
        loop = asyncio.get_running_loop()
        try:
            text = await loop.run_in_executor(
                None, fetch_text, replica.metrics_url, METRICS_TIMEOUT_S
            )
        except OSError as exc:
            log.debug("triton metrics %s: %s", replica.metrics_url, exc)
            return
        counters = parse_triton_metrics(text)
        replica.record_scrape(counters, self.fleet.clock())
        for name in counters:
            if name in self.fleet.known:
                self.telemetry.queue_time(replica.url, name, replica.queue_seconds(name))
