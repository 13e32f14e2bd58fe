"""Presence partitions held by leases: several presence processes share the work.

Each user's sessions are aggregated by one partition (``chatscale.keys.presence_partition``:
gateways and voice relays write a user's events to that partition's stream), and each partition
is one ``PresenceService`` with its own stream, snapshot and counters. A ``PresenceHost`` is one
``chatscale presence`` process: it leases its fair share of the partitions
(``chatscale.leases``), runs a service for each partition it holds, and every third of the
lease TTL renews them, starts a service for a partition it gained (restoring that partition's
snapshot and taking over the entries its previous owner left pending) and stops the service of a
partition it lost. A process that dies stops renewing: after ``presence_lease_ms`` the
survivors' next ``maintain`` takes its partitions over.

What a failover costs: the new owner restores the partition's last saved snapshot and re-reads
every entry not acked by the old owner (entries are acked only after a save that includes
them), so no visible change is lost; a change the old owner published but had not yet saved is
published again (a duplicate PRESENCE_UPDATE, which clients apply idempotently). Updates of the
partition pause for up to the lease TTL.

With one partition (the default) a host is exactly the single presence service of before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from chatscale.cancel import cancel_and_wait
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.leases import Leases
from chatscale.redisconn import TRANSIENT, connect
from presence.service import PresenceService
from storage import Store

log = logging.getLogger("chatscale.presence")


class PresenceHost:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        consumer: str = "presence-1",
        clock: Callable[[], float] = time.time,
        run_services: bool = True,
    ) -> None:
        """run_services: False starts each gained partition's service without its loop, for a
        caller (a test) that drives ``services[p].step()`` itself."""
        self.run_services = run_services
        self.settings = settings
        self.store = store
        self.consumer = consumer
        self.clock = clock
        self.keys = Keys(settings.key_prefix)
        self.redis = connect(settings)
        self.leases = Leases(
            self.redis,
            count=settings.presence_partitions,
            owner=consumer,
            ttl_ms=settings.presence_lease_ms,
            key=self.keys.presence_lease,
            roster=self.keys.presence_roster(),
        )
        self.services: dict[int, PresenceService] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self.takeovers = 0  # partitions gained after the first maintain (failovers, rebalances)
        self._retired: dict[str, int] = {}  # counters of partitions this process let go

    def stop(self) -> None:
        self._stopping.set()

    async def maintain(self, *, first: bool = False) -> tuple[set[int], set[int]]:
        """Renew leases, start services of gained partitions, stop those of lost ones."""
        gained, lost = await self.leases.maintain()
        for p in sorted(lost):
            await self._stop_partition(p)
        for p in sorted(gained):
            service = PresenceService(
                self.settings,
                store=self.store,
                clock=self.clock,
                consumer=self.consumer,
                partition=p,
                takeover_idle_ms=0,
            )
            self.services[p] = service
            if self.run_services:
                self._tasks[p] = asyncio.create_task(service.run(), name=f"presence-partition-{p}")
            else:
                await service.start()
            if not first:
                self.takeovers += 1
                log.info("presence %s took over partition %d", self.consumer, p)
        return gained, lost

    async def _stop_partition(self, p: int) -> None:
        service = self.services.pop(p, None)
        task = self._tasks.pop(p, None)
        if service is None:
            return
        for name, value in _counters(service).items():
            self._retired[name] = self._retired.get(name, 0) + value
        service.stop()
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), self.settings.presence_lease_ms / 1000)
            except (TimeoutError, Exception):  # noqa: BLE001 - a stuck or failed step: cancel it
                await cancel_and_wait([task], 5.0, f"presence partition {p}")
        await service.close()
        log.info("presence %s released partition %d", self.consumer, p)

    async def run(self) -> None:
        every = self.settings.presence_lease_ms / 3000
        first = True
        while not self._stopping.is_set():
            try:
                await self.maintain(first=first)
                first = False
            except TRANSIENT as exc:
                log.warning("presence leases: %s; retrying", exc)
            for p, task in list(self._tasks.items()):
                if task.done():  # a service that died: give the partition back, retake it
                    if not task.cancelled() and task.exception() is not None:
                        log.error("presence partition %d failed: %r", p, task.exception())
                    await self._stop_partition(p)
                    with contextlib.suppress(*TRANSIENT):
                        await self.leases.release(p)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), every)
        for p in list(self.services):
            await self._stop_partition(p)
        with contextlib.suppress(*TRANSIENT):
            await self.leases.release_all()

    async def close(self) -> None:
        for p in list(self.services):
            await self._stop_partition(p)
        await self.redis.aclose()

    def stats(self) -> dict[str, int]:
        """Coalescer counters summed over every partition this process has run."""
        total = dict(self._retired)
        for service in self.services.values():
            for name, value in _counters(service).items():
                total[name] = total.get(name, 0) + value
        return total


def _counters(service: PresenceService) -> dict[str, int]:
    return {
        k: v for k, v in service.coalescer.stats.to_dict().items() if isinstance(v, int | float)
    }
