"""Which orchestrator drives which run, when several share one etcd run store.

Each orchestrator process holds a *session*: an etcd lease of `ttl` seconds, kept alive in
the background. It drives a run only while it owns it: `<prefix>/runs/owner/<name>` holds
its identity and is attached to its session lease, taken with a transaction that finds the
key absent. When a process dies its lease lapses, etcd deletes its owner keys, and every
other orchestrator sees the deletions on its watch of `owner/` and tries to take the runs
over (one wins); the winner resumes each from its last checkpoint, as a restarted
orchestrator does, so the result is the undisturbed run's. A process that stops cleanly
revokes its session: the others take over at once.

Commits are fenced: the run store's commit of a run also compares its owner key with this
process's identity (`EtcdRunStore.fences`), so an orchestrator that lost its session
without noticing yet (a partition) can never write over its successor's work. A session
lost for good (`lost`) stops every run this process drives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable

from helix.common import errors
from helix.etcd import Compacted, EtcdClient, KeepAlive, Lease, Watch, keep_alive, ops, prefix_end

log = logging.getLogger("helix.orchestrator")

_RETRY = 1.0


class RunOwnership:
    """This process's session and the runs it owns (see the module's docstring)."""

    def __init__(self, client: EtcdClient, prefix: str = "/helix", *, ttl: float = 3.0) -> None:
        self.client = client
        self.root = prefix.rstrip("/").encode() + b"/runs/owner/"
        self.ttl = ttl
        self.identity = ""  # this session's: set by `start`
        self.lost = asyncio.Event()
        self._lease: Lease | None = None
        self._keepalive: KeepAlive | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        """Whether this process holds a session now (not lost, not stopped)."""
        return self._lease is not None and not self.lost.is_set()

    def key(self, name: str) -> bytes:
        return self.root + name.encode()

    def fence(self, name: str) -> tuple[bytes, bytes]:
        """The (key, value) a commit of `name` must find: this process owns the run."""
        return self.key(name), self.identity.encode()

    async def start(self, on_orphan: Callable[[str], None]) -> None:
        """Open a session (a new identity each time: the runs a lost session owned are
        not this one's until their keys lapse and they are taken over afresh);
        `on_orphan(name)` is called for every run whose owner goes."""
        self.identity = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._lease = await self.client.grant(max(1, round(self.ttl)))
        self.lost.clear()
        self._keepalive = keep_alive(self.client, self._lease, lambda why: self.lost.set())
        self._watcher = asyncio.create_task(self._watch(on_orphan), name="run owners")

    async def acquire(self, name: str) -> bool:
        """Take run `name` if nobody owns it; whether this process owns it now."""
        if self._lease is None or self.lost.is_set():
            return False
        key = self.key(name)
        try:
            reply = await self.client.txn(
                [ops.absent(key)],
                [ops.put(key, self.identity.encode(), lease=self._lease.id)],
                [ops.get(key)],
            )
        except errors.NotFound:  # "requested lease not found": etcd lost this session
            self.lost.set()
            return False
        if reply.succeeded:
            return True
        kvs = reply.responses[0].response_range.kvs
        return bool(kvs) and kvs[0].value == self.identity.encode()

    async def release(self, name: str) -> None:
        """Give run `name` up (it ended, or another writer changed it): best effort."""
        key = self.key(name)
        with contextlib.suppress(errors.HelixError):
            await self.client.txn([ops.value(key, self.identity.encode())], [ops.delete(key)])

    async def owners(self) -> dict[str, str]:
        """Every owned run and its owner's identity, now."""
        found: dict[str, str] = {}
        async for page in self.client.scan_prefix(self.root):
            for kv in page.kvs:
                found[kv.key[len(self.root) :].decode()] = kv.value.decode()
        return found

    async def stop(self, *, revoke: bool = True) -> None:
        """End the session: with `revoke` (a clean stop) the runs are free at once;
        without (as if killed), only when the lease lapses."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher])
            self._watcher = None
        if self._keepalive is not None:
            await self._keepalive.close()
            self._keepalive = None
        if revoke and self._lease is not None:
            with contextlib.suppress(errors.HelixError):
                await self.client.revoke(self._lease.id)
        self._lease = None

    async def _watch(self, on_orphan: Callable[[str], None]) -> None:
        while True:
            try:
                async with Watch(self.client, self.root, prefix_end(self.root)) as watch:
                    async for event in watch:
                        if event.type == ops.DELETE:
                            on_orphan(event.kv.key[len(self.root) :].decode())
            except Compacted:
                continue  # the periodic scan finds what was missed
            except errors.HelixError as exc:
                log.warning("watching the run owners failed: %s", exc.message)
                await asyncio.sleep(_RETRY)
