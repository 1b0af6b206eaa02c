"""Where jobs run: the :class:`Executor` protocol and the :class:`LocalExecutor`.

The local executor (the default; no extra services) runs each job in its own worker process,
``python -m splatforge.service.worker_main JOB_ID``, at most N at once (the setting
``max_concurrent_jobs``, else one per CUDA GPU, else 1). A crash of a worker (a segfault, an
out-of-memory kill, ``kill -9``) cannot take the server down: a monitor thread sees the
process end and marks its job ``failed`` with the cause ("worker process exited with signal 9
(SIGKILL)"). With several GPUs each worker gets one through ``CUDA_VISIBLE_DEVICES``.

The Celery executor (``SPLATFORGE_EXECUTOR=celery``) lives in
:mod:`splatforge.service.celery_exec` and has the same protocol.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy import select

from .db import FINAL_STATUSES, Job, add_event, client_text, session_scope
from .lifecycle import transition
from .settings import ServiceSettings, cuda_device_ids

#: Seconds a worker has to stop by itself after a cancel before it is terminated.
CANCEL_GRACE_S = 20.0
#: Seconds workers have to stop (and requeue their jobs) at shutdown before SIGKILL.
SHUTDOWN_GRACE_S = 15.0
#: Monitor loop period, seconds.
POLL_S = 0.2


class Executor(Protocol):
    """Runs queued jobs somewhere; every method returns quickly."""

    def submit(self, job_id: str) -> None:
        """Run job ``job_id`` (a ``queued`` row) when a slot is free."""

    def cancel(self, job_id: str) -> None:
        """Make sure job ``job_id`` stops (called by :func:`.lifecycle.stop_job`, which has
        set its ``cancel_requested`` flag and ended it if it was queued): forget it if it
        waits here; end its worker if it does not stop by itself. Never writes the status."""

    def recover(self) -> None:
        """At server start: requeue ``queued`` jobs and mark jobs whose worker is gone
        ``failed`` with the reason."""

    def shutdown(self) -> None:
        """Stop accepting jobs and release workers (running jobs are queued again)."""


def make_executor(settings: ServiceSettings) -> Executor:
    """The executor ``settings.executor`` names (``celery`` is imported only when chosen)."""
    if settings.executor == "celery":
        from .celery_exec import CeleryExecutor

        return CeleryExecutor(settings)
    return LocalExecutor(settings)


def exit_reason(returncode: int | None, pid: int | None = None) -> str:
    """A worker process's end in words: ``worker process exited with signal 9 (SIGKILL)``."""
    who = "worker process" + (f" {pid}" if pid else "")
    if returncode is None:
        return f"{who} ended without finishing the job"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"{who} exited with signal {-returncode} ({name})"
    return f"{who} exited with status {returncode}"


def pid_alive(pid: int | None, job_id: str | None = None) -> bool:
    """True when process ``pid`` exists (and, where /proc tells, is the worker of
    ``job_id``: a reused pid does not count)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if job_id and cmdline.exists():
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return False
        except (OSError, IndexError):
            pass
        return job_id in text
    return True


@dataclass
class _Worker:
    job_id: str
    slot: int
    proc: subprocess.Popen | None = None
    pid: int | None = None  # adopted workers: a pid that is not our child
    started: float = field(default_factory=time.monotonic)
    cancel_at: float | None = None
    terminated_at: float | None = None


class LocalExecutor:
    """Worker processes on this machine (see the module docstring).

    Args:
        settings: the service settings (passed to workers through the environment).
        max_jobs: jobs at once (default ``settings.resolved_max_jobs()``).
    """

    def __init__(self, settings: ServiceSettings, max_jobs: int | None = None):
        self.settings = settings
        self.gpus = cuda_device_ids()
        self.max_jobs = max_jobs or settings.resolved_max_jobs()
        self.queue: deque[str] = deque()
        self.workers: dict[str, _Worker] = {}
        self.cond = threading.Condition()
        self.stopping = False
        self.host = socket.gethostname()
        self.log_dir = (settings.data_dir / "logs").resolve()
        self.thread = threading.Thread(target=self._loop, name="local-executor", daemon=True)
        self.thread.start()

    # -- protocol ---------------------------------------------------------------------------
    def submit(self, job_id: str) -> None:
        with self.cond:
            if job_id not in self.queue and job_id not in self.workers:
                self.queue.append(job_id)
            self.cond.notify_all()

    def cancel(self, job_id: str) -> None:
        with self.cond:
            if job_id in self.queue:
                self.queue.remove(job_id)
            w = self.workers.get(job_id)
            if w is not None and w.cancel_at is None:
                w.cancel_at = time.monotonic()
            self.cond.notify_all()

    def recover(self) -> None:
        with session_scope(self.settings) as s:
            rows = [(j.id, j.status, bool(j.cancel_requested), j.host, j.pid, j.stage)
                    for j in s.execute(select(Job).where(Job.status.in_(("queued", "running")))
                                       .order_by(Job.created_at)).scalars()]
        requeue = []
        for job_id, status, cancel, host, pid, stage in rows:
            if status == "queued":
                if cancel:
                    transition(self.settings, job_id, "cancelled",
                               "cancelled before it started", only_from={"queued"},
                               error_message="cancelled before it started")
                else:
                    requeue.append(job_id)
                continue
            with self.cond:
                if job_id in self.workers:
                    continue
                if host == self.host and pid_alive(pid, job_id):
                    # a worker of an earlier server still runs: watch it
                    self.workers[job_id] = _Worker(job_id, self._free_slot(), pid=pid)
                    adopted = True
                else:
                    adopted = False
            if adopted:
                with session_scope(self.settings) as s:
                    add_event(s, job_id, "info", f"server restarted; watching worker {pid}",
                              stage=stage)
                continue
            reason = (f"worker process {pid or '?'} on {host or '?'} is gone "
                      "(found at server start)")
            transition(self.settings, job_id, "failed", f"failed: {reason}",
                       only_from={"running"}, stage=stage, data={"error": reason},
                       error_stage=stage, error_message=reason)
        for job_id in requeue:
            self.submit(job_id)

    def shutdown(self) -> None:
        with self.cond:
            self.stopping = True
            self.queue.clear()
            workers = list(self.workers.values())
            self.cond.notify_all()
        for w in workers:
            try:
                if w.proc is not None:
                    if w.proc.poll() is None:
                        w.proc.send_signal(signal.SIGTERM)
                elif pid_alive(w.pid, w.job_id):  # adopted from an earlier server
                    os.kill(w.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for w in workers:
            if w.proc is not None:
                try:
                    w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait()
                self._on_exit(w, w.proc.returncode, shutdown=True)
                continue
            while pid_alive(w.pid, w.job_id) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(w.pid, w.job_id):
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._on_exit(w, None, shutdown=True)
        self.thread.join(timeout=5)

    # -- internals --------------------------------------------------------------------------
    def running(self) -> list[str]:
        with self.cond:
            return list(self.workers)

    def _free_slot(self) -> int:
        used = {w.slot for w in self.workers.values()}
        k = 0
        while k in used:
            k += 1
        return k

    def _spawn(self, job_id: str) -> None:
        slot = self._free_slot()
        env = dict(os.environ)
        env.update(self.settings.to_env())
        env["SPLATFORGE_WORKER_NAME"] = f"local-{slot}"
        if self.gpus:  # one GPU per worker
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{job_id}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "splatforge.service.worker_main", job_id],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.workers[job_id] = _Worker(job_id, slot, proc=proc, pid=proc.pid)

    def _on_exit(self, w: _Worker, returncode: int | None, shutdown: bool = False) -> None:
        """Record the end of worker ``w`` where its job did not record its own end."""
        with self.cond:
            self.workers.pop(w.job_id, None)
        try:
            with session_scope(self.settings) as s:
                job = s.get(Job, w.job_id)
                if job is None or job.status in FINAL_STATUSES:
                    return
                status, cancel, stage = job.status, bool(job.cancel_requested), job.stage
            if status == "queued" and (returncode == 0 or shutdown):
                # the worker put its job back (server shutdown): run it again later
                if not shutdown and not self.stopping:
                    self.submit(w.job_id)
                return
            if shutdown:
                transition(self.settings, w.job_id, "queued",
                           "worker stopped at server shutdown; queued again", pid=None)
                return
            reason = exit_reason(returncode, w.pid)
            if cancel:
                transition(self.settings, w.job_id, "cancelled", "cancelled", stage=stage,
                           error_stage=stage,
                           error_message=f"cancelled by request ({reason})")
                return
            if status == "queued":
                reason += " before starting the job"
            # the operator's pointer to the worker log, relative to the data dir: a client
            # never sees a server path
            transition(self.settings, w.job_id, "failed", f"failed: {reason}", stage=stage,
                       data={"error": reason, "returncode": returncode},
                       error_stage=stage or "worker",
                       error_message=f"{reason} (log: {self.log_dir / (w.job_id + '.log')})")
        except Exception as e:  # noqa: BLE001  (the monitor must survive a DB hiccup)
            print(f"splatforge executor: could not record the end of job {w.job_id}: {e}",
                  file=sys.stderr)

    def _loop(self) -> None:
        while True:
            with self.cond:
                if self.stopping:
                    return
            try:
                self._tick()
            except Exception as e:  # noqa: BLE001  (a database outage must not end the loop)
                print(f"splatforge executor: {type(e).__name__}: {e}", file=sys.stderr)
                time.sleep(1.0)

    def _tick(self) -> None:
        """One monitor round: reap ended workers, enforce cancel grace, start queued jobs."""
        with self.cond:
            workers = list(self.workers.values())
        now = time.monotonic()
        for w in workers:
            if w.proc is not None:
                rc = w.proc.poll()
                if rc is not None:
                    self._on_exit(w, rc)
                    continue
                if w.cancel_at is not None:
                    if w.terminated_at is None and now - w.cancel_at > CANCEL_GRACE_S:
                        w.terminated_at = now
                        w.proc.terminate()
                    elif w.terminated_at is not None and now - w.terminated_at > 5.0:
                        w.proc.kill()
            elif not pid_alive(w.pid, w.job_id):
                self._on_exit(w, None)
        with self.cond:
            while (self.queue and len(self.workers) < self.max_jobs
                   and not self.stopping):
                job_id = self.queue[0]
                startable = self._startable(job_id)  # may raise: the job stays queued
                self.queue.popleft()
                if startable:
                    try:
                        self._spawn(job_id)
                    except OSError as e:
                        self._fail_to_start(job_id, e)
            self.cond.wait(POLL_S)

    def _startable(self, job_id: str) -> bool:
        with session_scope(self.settings) as s:
            job = s.get(Job, job_id)
            if job is None or job.status != "queued":
                return False
            cancel = bool(job.cancel_requested)
        if cancel:
            transition(self.settings, job_id, "cancelled", "cancelled before it started",
                       only_from={"queued"}, error_message="cancelled before it started")
            return False
        return True

    def _fail_to_start(self, job_id: str, e: Exception) -> None:
        why = client_text(self.settings, f"could not start a worker: {e}")
        transition(self.settings, job_id, "failed", f"failed: {why}", stage="worker",
                   data={"error": "could not start a worker"}, error_stage="worker",
                   error_message=why)
