"""A job's life: the one place where a job's status changes, and the one way to stop a job.

The states and the moves between them are :data:`TRANSITIONS`::

    queued  -> running | cancelled | failed
    running -> succeeded | failed | cancelled | queued   (queued: a server shutdown)
    succeeded, failed, cancelled: final, no way out

:func:`transition` makes one move as a compare-and-set in the database (``UPDATE jobs ...
WHERE id = :id AND status IN (<the states the move starts from>)``), with its ``status``
event in the same transaction, and answers whether it won. So when two parties finish one
job at once (the worker, a monitor that thinks the worker is gone, a cancel), exactly one
wins and the others change nothing. Once the move is committed and it ended the job, the
completion notice is sent (:func:`announce_job_end`).

Every writer of a job's status calls :func:`transition`: the runner (claim, end), the local
executor (a worker that died, could not start, or was stopped at shutdown), the Celery
executor and its worker signals (a lost worker, a broker that cannot be reached, a revoked
message). "Where does a job become failed?" -- here.

:func:`stop_job` is the one way to stop a job (the HTTP cancel and the compat routes use it):
it records the request on the job row (``cancel_requested``), ends a job that had not
started at once, and asks the executor to make sure a running worker stops (the runner stops
at its next stop poll when it reads the flag; the executor ends a worker that does not).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from sqlalchemy import func, update

from .db import FINAL_STATUSES, Job, add_event, client_text, session_factory, session_scope
from .settings import ServiceSettings

log = logging.getLogger("splatforge.jobs")

#: from-state -> the states a job may move to from it (final states have none).
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "queued"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


def sources(to: str) -> frozenset[str]:
    """The states a job may move to ``to`` from (:data:`TRANSITIONS` read backwards).

    Raises:
        ValueError: ``to`` is not a job state.
    """
    if to not in TRANSITIONS:
        raise ValueError(f"unknown job state {to!r} (one of {', '.join(TRANSITIONS)})")
    return frozenset(a for a, targets in TRANSITIONS.items() if to in targets)


def transition(settings: ServiceSettings, job_id: str, to: str, message: str, *,
               only_from: frozenset[str] | set[str] | None = None, stage: str | None = None,
               data: dict[str, Any] | None = None, **values: Any) -> bool:
    """Move job ``job_id`` to state ``to`` if its state allows it, atomically.

    Args:
        settings: the service settings (the database).
        job_id: the job.
        to: the new state (a key of :data:`TRANSITIONS`).
        message: the ``status`` event's message (server paths redacted).
        only_from: narrows the allowed from-states further (e.g. ``{"queued"}``).
        stage: the stage named on the ``status`` event.
        data: more fields of the event's ``data`` (beside ``status``).
        **values: more columns of the job row to set with the move (``error_stage``,
            ``error_message`` -- redacted like ``message`` --, ``pid``, ``metrics``, ...).
            ``updated_at`` is set; ``finished_at`` for a final state; ``started_at`` (when
            unset), ``heartbeat_at`` and ``attempts + 1`` for ``running``.

    Returns:
        True when this call moved the job; False when the job does not exist or its state
        did not allow the move (someone else moved it first), in which case nothing changed.

    Raises:
        ValueError: ``to`` is not a job state. Database errors propagate.
    """
    allowed = sources(to) if only_from is None else sources(to) & frozenset(only_from)
    now = time.time()
    row: dict[str, Any] = {"status": to, "updated_at": now}
    if to in FINAL_STATUSES:
        row["finished_at"] = now
        row["eta_s"] = 0.0 if to == "succeeded" else None
    elif to == "running":
        row.update(started_at=func.coalesce(Job.started_at, now), heartbeat_at=now,
                   attempts=func.coalesce(Job.attempts, 0) + 1)
    if "error_message" in values:
        values["error_message"] = client_text(settings, values["error_message"])
    row.update(values)
    with session_scope(settings) as s:
        won = s.execute(update(Job).where(Job.id == job_id, Job.status.in_(allowed))
                        .values(**row).execution_options(synchronize_session=False)
                        ).rowcount == 1
        if won:
            add_event(s, job_id, "status", client_text(settings, message) or to, stage,
                      data={"status": to, **(data or {})})
    if won and to in FINAL_STATUSES:
        announce_job_end(settings, job_id)
    return won


class Submitter(Protocol):
    """What :func:`create_job` needs of an executor."""

    def submit(self, job_id: str) -> None:
        """Run the queued job ``job_id`` when a slot is free."""


def create_job(settings: ServiceSettings, executor: Submitter | None, scene_id: str,
               config: dict[str, Any], max_steps: int | None,
               kind: str = "reconstruct") -> str:
    """Insert a job in its first state, ``queued`` (with its ``status`` event), and hand it
    to ``executor`` (when given); returns the job's id."""
    with session_scope(settings) as s:
        job = Job(scene_id=scene_id, kind=kind, config=config, max_steps=max_steps,
                  status="queued", metrics={})
        s.add(job)
        s.flush()
        add_event(s, job.id, "status", "queued", data={"status": "queued"})
        job_id = job.id
    if executor is not None:
        executor.submit(job_id)
    return job_id


class Stoppable(Protocol):
    """What :func:`stop_job` needs of an executor."""

    def cancel(self, job_id: str) -> None:
        """Make sure the worker of ``job_id`` (if any) stops; never writes the status."""


def stop_job(settings: ServiceSettings, job_id: str, executor: Stoppable | None) -> bool:
    """Stop job ``job_id``: the one way to stop a job.

    Records the request (``cancel_requested`` and an ``info`` event), ends a job that had not
    started as ``cancelled`` at once, then asks ``executor`` (when given) to see its worker
    stop: the runner reads the flag and ends ``cancelled`` within about a second, with a
    checkpoint; an executor ends a worker that does not.

    Returns:
        True when the request was recorded; False when the job does not exist or is final
        already (nothing changes then).
    """
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None or job.status in FINAL_STATUSES:
            return False
        job.cancel_requested = True
        job.updated_at = time.time()
        add_event(s, job_id, "info", "cancel requested", stage=job.stage)
    transition(settings, job_id, "cancelled", "cancelled before it started",
               only_from={"queued"}, error_message="cancelled before it started")
    if executor is not None:
        executor.cancel(job_id)
    return True


def announce_job_end(settings: ServiceSettings, job_id: str) -> None:
    """Send the completion notice of job ``job_id`` in the background; called by
    :func:`transition` once the move that ended the job is committed, so every way a job ends
    sends exactly one, from whichever process recorded the end. Never raises.

    The URL is the job's own ``notify_url`` (its config JSON), else ``SPLATFORGE_NOTIFY_URL``;
    the signing key ``SPLATFORGE_NOTIFY_SECRET`` (:mod:`splatforge.jobs.notify`).
    """
    from ..jobs.notify import job_notice, notify_job_end
    from .store import get_store, outputs_prefix

    try:
        s = session_factory(settings)()
        try:
            job = s.get(Job, job_id)
            if job is None:
                return
            url = (job.config or {}).get("notify_url") or settings.notify_url
            if not url:
                return
            status, scene_id = job.status, job.scene_id
            metrics, error = dict(job.metrics or {}), job.error_message
        finally:
            s.close()
        artifacts: list[str] = []
        if status == "succeeded":
            prefix = outputs_prefix(scene_id)
            artifacts = [o.key[len(prefix):] for o in get_store(settings).list(prefix)]
        notify_job_end(url, job_notice(job_id, status, metrics=metrics, artifacts=artifacts,
                                       error=error, scene_id=scene_id),
                       settings.notify_secret, allowed_hosts=settings.notify_hosts)
    except Exception as e:  # noqa: BLE001  (a notice never fails a job)
        log.warning("could not notify the end of job %s: %s", job_id, e)
