"""Agent leases on a monotonic clock (pure: the caller passes `now`).

A lease lasts `ttl` after its last renewal. Leases are never persisted: after a restart
every agent gets a fresh full TTL (promise 9), and wall-clock jumps change nothing.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(slots=True)
class Lease:
    epoch: int
    ttl: float
    deadline: float


class LeaseTable:
    """Deadlines by agent name, with a heap to find lapsed ones without scanning all.

    The invariant that makes `lapsed` exact: every lease not yet reported has a heap entry
    no later than its deadline (stale entries are skipped or moved when they come up).
    """

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._leases)

    @property
    def scheduled(self) -> int:
        """Deadlines waiting in the heap, stale ones (of renewed or released leases)
        included; `lapsed` keeps this within a constant factor of the number of leases."""
        return len(self._heap)

    def grant(self, name: str, epoch: int, ttl: float, now: float) -> None:
        """Start (or restart) the lease of a registration."""
        lease = Lease(epoch, ttl, now + ttl)
        self._leases[name] = lease
        heapq.heappush(self._heap, (lease.deadline, name))

    def renew(self, name: str, epoch: int, now: float) -> float | None:
        """Extend the lease by its TTL from `now`; returns the TTL, or None if there is none."""
        lease = self._leases.get(name)
        if lease is None or lease.epoch != epoch:
            return None
        lease.deadline = now + lease.ttl
        return lease.ttl

    def set_ttl(self, name: str, ttl: float, now: float) -> None:
        """Change the TTL of a lease (an update of the agent's ttl). A longer one extends
        the lease from `now`; a shorter one applies from the next renewal, so no agent
        expires sooner than the TTL in force when it last renewed (promise 8)."""
        lease = self._leases.get(name)
        if lease is not None:
            lease.ttl = ttl
            lease.deadline = max(lease.deadline, now + ttl)
            # A renewal may now bring the deadline down to `now + ttl` at the earliest: the
            # heap must hold a time no later than that, or the lease would lapse unseen.
            heapq.heappush(self._heap, (now + ttl, name))

    def deadline(self, name: str, epoch: int) -> float | None:
        """When the lease of this registration lapses, or None if it has none."""
        lease = self._leases.get(name)
        return lease.deadline if lease is not None and lease.epoch == epoch else None

    def recheck(self, name: str, now: float) -> None:
        """Look at this reported lease again on the next sweep (its expiry failed, or it
        was renewed before the expiry was applied)."""
        if name in self._leases:
            heapq.heappush(self._heap, (now, name))

    def release(self, name: str) -> None:
        self._leases.pop(name, None)

    def lapsed(self, now: float) -> list[tuple[str, int]]:
        """(name, epoch) of every lease whose deadline is `now` or earlier.

        A lease is reported by the first call at or after its deadline (never before), and
        possibly again later; once reported, the caller expires it or calls `recheck`: a
        lease renewed after it was reported is not looked at again until then.
        """
        found: dict[str, int] = {}  # a lease with several due entries is reported once
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, name = heapq.heappop(heap)
            lease = self._leases.get(name)
            if lease is None:
                continue
            if lease.deadline <= now:
                found[name] = lease.epoch
            else:
                heapq.heappush(heap, (lease.deadline, name))
        # Keep the heap from growing with stale entries of renewed leases.
        if len(heap) > 4 * len(self._leases) + 64:
            self._heap = [(lease.deadline, n) for n, lease in self._leases.items()]
            heapq.heapify(self._heap)
        return list(found.items())
