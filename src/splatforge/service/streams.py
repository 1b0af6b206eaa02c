"""Open event streams (``GET /jobs/{id}/events``): a cap per job and per API key, and one
shared database poller per job.

* :class:`StreamSlots` counts the open streams of each job and of each API key (the bearer
  token's hash; every client counts as one key when the service has none). Over
  ``SPLATFORGE_MAX_STREAMS_PER_JOB`` or ``SPLATFORGE_MAX_STREAMS_PER_KEY`` a new stream is
  refused with 429 and ``Retry-After``. The counts are per server process.
* :class:`EventHub` runs one poller task per watched job on the event loop: every
  ``poll_s`` seconds it reads the job's status and new event rows in a worker thread (never
  blocking the loop) and wakes the streams waiting on it. A stream reads its backlog from the
  database itself (in a thread), then follows the poller's buffer; no stream holds a thread
  while it waits, so open streams do not slow ``/healthz`` or any other route.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import anyio.to_thread

log = logging.getLogger("splatforge.service")

#: Seconds a client is told to wait (``Retry-After``) when a stream cap is reached.
RETRY_AFTER_S = 10


class StreamLimit(Exception):
    """A stream cap is reached; ``str(exc)`` names the setting."""


def key_id(authorization: str | None) -> str:
    """A short, non-secret id of the bearer token in ``authorization`` ("-" without one)."""
    if not authorization:
        return "-"
    return hashlib.sha256(authorization.encode()).hexdigest()[:16]


class StreamSlots:
    """Counts of open streams per job and per key, thread-safe."""

    def __init__(self, per_job: int, per_key: int):
        self.per_job = per_job
        self.per_key = per_key
        self._jobs: dict[str, int] = {}
        self._keys: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, job_id: str, key: str) -> Callable[[], None]:
        """Take a slot; returns the function that gives it back (idempotent).

        Raises:
            StreamLimit: the job already has ``per_job`` open streams, or the key ``per_key``.
        """
        with self._lock:
            if self._jobs.get(job_id, 0) >= self.per_job:
                raise StreamLimit(f"job {job_id} already has {self.per_job} open event "
                                  "streams (SPLATFORGE_MAX_STREAMS_PER_JOB); close one or "
                                  "retry later")
            if self._keys.get(key, 0) >= self.per_key:
                raise StreamLimit(f"this API key already has {self.per_key} open event "
                                  "streams (SPLATFORGE_MAX_STREAMS_PER_KEY); close one or "
                                  "retry later")
            self._jobs[job_id] = self._jobs.get(job_id, 0) + 1
            self._keys[key] = self._keys.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                for d, k in ((self._jobs, job_id), (self._keys, key)):
                    d[k] -= 1
                    if d[k] <= 0:
                        del d[k]

        return release

    def open_streams(self) -> int:
        """Open streams in all."""
        with self._lock:
            return sum(self._jobs.values())


class _Watch:
    """What the poller knows of one job: every event row after ``floor`` (``rows``, id
    order, each ``(id, payload)``), the job's status, and a version bumped on any change."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, Any]] = []
        self.floor: int | None = None  # None until the first poll
        self.high = 0
        self.status: str | None = None
        self.version = 0
        self.changed = asyncio.Event()
        self.users = 0
        self.task: asyncio.Task[None] | None = None

    def bump(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()


class EventHub:
    """One poller per watched job (see the module docstring).

    Args:
        fetch: ``fetch(job_id, after_id, limit) -> (status, rows)`` run in a worker thread:
            the job's status (None when it is gone), then its rows with ``id > after_id``
            in id order, at most ``limit``; ``after_id=None`` asks only for the status and
            ``rows`` is then ``[(max_id, None)]``.
        final: the final statuses.
        poll_s: seconds between polls.
        buffer: rows kept per job for the streams that follow it.
    """

    BATCH = 500

    def __init__(self, fetch: Callable[[str, int | None, int], tuple[str | None, list]],
                 final: tuple[str, ...], poll_s: float, buffer: int = 2000):
        self.fetch = fetch
        self.final = final
        self.poll_s = poll_s
        self.buffer = buffer
        self._watches: dict[str, _Watch] = {}

    def subscribe(self, job_id: str) -> _Watch:
        """The job's watch (its poller started when it is the first stream)."""
        w = self._watches.get(job_id)
        if w is None:
            w = self._watches[job_id] = _Watch()
            w.task = asyncio.get_running_loop().create_task(self._poll(job_id, w))
        w.users += 1
        return w

    def unsubscribe(self, job_id: str, w: _Watch) -> None:
        """One stream less; the last one stops the poller."""
        w.users -= 1
        if w.users <= 0 and self._watches.get(job_id) is w:
            del self._watches[job_id]
            if w.task is not None:
                w.task.cancel()

    async def _poll(self, job_id: str, w: _Watch) -> None:
        while True:
            try:
                if w.floor is None:
                    status, rows = await anyio.to_thread.run_sync(
                        self.fetch, job_id, None, 1)
                    w.floor = w.high = rows[0][0] if rows else 0
                    w.status = status
                    w.bump()
                else:
                    status, rows = await anyio.to_thread.run_sync(
                        self.fetch, job_id, w.high, self.BATCH)
                    if rows or status != w.status:
                        w.rows.extend(rows)
                        if rows:
                            w.high = rows[-1][0]
                        if len(w.rows) > self.buffer:
                            drop = len(w.rows) - self.buffer
                            w.floor = w.rows[drop - 1][0]
                            del w.rows[:drop]
                        w.status = status
                        w.bump()
                    if len(rows) == self.BATCH:
                        continue  # more to read at once
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  the database may be away for a while
                log.warning("event poller of job %s: %s", job_id, e)
            await asyncio.sleep(self.poll_s)

    async def follow(self, job_id: str, after: int, keepalive_s: float) -> Any:
        """Async iterator over ``("row", payload)`` for every row with ``id > after`` as
        they are written, ``("keepalive", None)`` every ``keepalive_s`` seconds without a
        row, and a last ``("end", status)`` once the job is final (or gone) and every row
        was given."""
        w = self.subscribe(job_id)
        try:
            last = after
            while True:
                version = w.version
                changed = w.changed
                if w.floor is not None and last >= w.floor:
                    new = [r for r in w.rows if r[0] > last]
                    status = w.status
                else:  # the backlog: straight from the database
                    status, new = await anyio.to_thread.run_sync(
                        self.fetch, job_id, last, self.BATCH)
                for rid, payload in new:
                    last = rid
                    yield "row", payload
                if new:
                    continue
                if status is None or status in self.final:
                    yield "end", status
                    return
                if w.version != version:
                    continue
                try:
                    await asyncio.wait_for(changed.wait(), keepalive_s)
                except TimeoutError:
                    yield "keepalive", None
        finally:
            self.unsubscribe(job_id, w)
