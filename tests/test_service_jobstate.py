"""The job state machine (:mod:`splatforge.service.lifecycle`) on a real database, SQLite and
PostgreSQL: compare-and-set transitions, finishers that race, the one stop request, and the
completion notice sent once, after the commit."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from service_helpers import NotifyListener, postgres_database

from splatforge.service import db
from splatforge.service.lifecycle import TRANSITIONS, stop_job, transition
from splatforge.service.settings import ServiceSettings


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    if request.param == "sqlite":
        st = ServiceSettings(data_dir=tmp_path)
        db.init_db(st)
        yield st
        db.dispose_engines()
        return
    with postgres_database() as url:
        st = ServiceSettings(data_dir=tmp_path, database_url=url)
        db.init_db(st)
        yield st
        db.dispose_engines()


def new_job(settings: ServiceSettings, status: str = "queued", **values) -> str:
    with db.session_scope(settings) as s:
        scene = db.Scene()
        s.add(scene)
        s.flush()
        job = db.Job(scene_id=scene.id, status=status, **values)
        s.add(job)
        s.flush()
        return job.id


def status_events(settings: ServiceSettings, job_id: str) -> list[str]:
    with db.session_scope(settings) as s:
        rows = s.execute(select(db.JobEvent).where(db.JobEvent.job_id == job_id,
                                                   db.JobEvent.kind == "status")
                         .order_by(db.JobEvent.id)).scalars().all()
        return [ev.data["status"] for ev in rows]


def job_row(settings: ServiceSettings, job_id: str) -> db.Job:
    with db.session_scope(settings) as s:
        return s.get(db.Job, job_id)


def test_finals_have_no_way_out_and_running_needs_queued(settings):
    assert all(not TRANSITIONS[final] for final in db.FINAL_STATUSES)
    job_id = new_job(settings)
    assert not transition(settings, job_id, "succeeded", "too early")  # queued -> succeeded
    assert transition(settings, job_id, "running", "claimed")
    assert not transition(settings, job_id, "running", "claimed twice")
    assert transition(settings, job_id, "failed", "boom", error_message="boom")
    for to in ("queued", "running", "succeeded", "cancelled", "failed"):
        assert not transition(settings, job_id, to, "after the end")
    job = job_row(settings, job_id)
    assert job.status == "failed" and job.error_message == "boom"
    assert job.started_at is not None and job.finished_at >= job.started_at
    assert status_events(settings, job_id) == ["running", "failed"]
    assert not transition(settings, "no-such-job", "running", "claimed")


def test_two_finishers_race_exactly_one_wins(settings):
    """Several threads finish one running job at the same moment, as a worker and a
    monitor can: exactly one wins, the row holds its status and one final event."""
    listener = NotifyListener()
    try:
        for round_ in range(4):
            job_id = new_job(settings, "running", config={"notify_url": listener.url})
            finals = ["succeeded", "failed", "cancelled", "failed"]
            gate = threading.Barrier(len(finals))
            won: dict[str, bool] = {}

            def finish(k: int, to: str) -> None:
                gate.wait()
                won[f"{k}:{to}"] = transition(settings, job_id, to, f"finisher {k}")

            threads = [threading.Thread(target=finish, args=(k, to))
                       for k, to in enumerate(finals)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            winners = [k for k, v in won.items() if v]
            assert len(winners) == 1, won
            status = winners[0].split(":")[1]
            assert job_row(settings, job_id).status == status
            assert status_events(settings, job_id) == [status]
            listener.wait(round_ + 1)
        listener.wait(5, timeout=3.0)  # a second notice of any job would arrive by now
        assert len(listener.posts) == 4
    finally:
        listener.close()


def test_stop_job_ends_a_queued_job_and_flags_a_running_one(settings):
    calls: list[str] = []

    class Executor:
        def cancel(self, job_id: str) -> None:
            calls.append(job_id)

    queued = new_job(settings)
    assert stop_job(settings, queued, Executor())
    job = job_row(settings, queued)
    assert job.status == "cancelled" and job.cancel_requested and job.started_at is None
    assert not transition(settings, queued, "running", "too late")

    running = new_job(settings, "running")
    assert stop_job(settings, running, Executor())
    job = job_row(settings, running)
    assert job.status == "running" and job.cancel_requested
    assert transition(settings, running, "cancelled", "stopped", error_message="stopped")
    assert not stop_job(settings, running, Executor())  # a finished job: nothing to stop
    assert calls == [queued, running]
    assert status_events(settings, queued) == ["cancelled"]
