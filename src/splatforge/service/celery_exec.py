"""Scale-out: jobs run by Celery workers, one per GPU, sharing the service's database.

Pieces:

- :func:`make_app`: the Celery application. Broker ``SPLATFORGE_BROKER_URL`` (``redis://`` or
  ``amqp://``); no result backend (the job database is the source of truth); queue
  ``SPLATFORGE_CELERY_QUEUE`` (``splatforge``).
- The task ``splatforge.run_job(job_id)``: calls :func:`splatforge.service.runner.run_job`,
  which runs the pipeline in the worker's pool process and writes status, progress,
  heartbeats and the result to the shared database.
- :func:`worker`: the ``splatforge worker`` command. One worker owns one GPU
  (``--gpu N`` sets ``CUDA_VISIBLE_DEVICES``) and runs one job at a time: prefork pool of one
  process (so a revoke can terminate the job's process), prefetch 1, late acks, a fresh pool
  process per job (GPU memory returns to the driver between jobs), hard and soft time limits.
- :class:`CeleryExecutor`: what ``splatforge serve`` uses when ``SPLATFORGE_EXECUTOR=celery``:
  ``submit`` sends the task with task id = job id, ``cancel`` revokes with
  ``terminate=True, signal="SIGTERM"`` (after :func:`.lifecycle.stop_job` flagged the job),
  and a monitor thread fails running jobs whose worker has gone. Every status change goes
  through :func:`.lifecycle.transition`.

A lost worker never makes a job run twice. ``task_reject_on_worker_lost`` is off: when the
pool process dies (OOM killer, ``kill -9``) the worker acknowledges the message and marks the
job ``failed`` with the cause (``task_failure`` in the worker's main process). When the whole
worker dies (machine down, main process killed; the pool process follows it through
``PR_SET_PDEATHSIG``) nothing in it can report: the server's monitor sees that no worker lists
the job as active and its heartbeat has stopped, and marks it ``failed``; if the broker later
redelivers the unacknowledged message, the task finds the job already final (or ``running``
with a stale heartbeat) and does not run it again.

Cancelling a running job: the ``cancel_requested`` flag makes the runner stop at its next
progress event (within about a second, with a checkpoint) and record ``cancelled``; the revoke's
SIGTERM reaches the pool process, which gives the runner :data:`CANCEL_GRACE_S` seconds to do
so and then exits; if the job is still not final 5 s after that, the worker's main process
records ``cancelled`` (``task_revoked``). A job cancelled before it started is recorded at
once (by the executor, or by the worker that receives the revoked message).

Time limits (:func:`job_limits`): the runner stops a job cleanly at the soft limit; Celery's
soft limit follows 10 s later and its hard limit kills the process (``failed``, "time limit
exceeded").
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Annotated, Any

import tyro

from ..errors import ConfigError

log = logging.getLogger("splatforge.celery")

TASK_NAME = "splatforge.run_job"
QUEUE_ENV = "SPLATFORGE_CELERY_QUEUE"
DEFAULT_QUEUE = "splatforge"
#: Seconds a pool process that got SIGTERM (a revoke) gives the runner to stop cleanly.
CANCEL_GRACE_S = 20.0
#: A running job whose heartbeat is younger than this is alive, whatever the broker says.
HEARTBEAT_FRESH_S = 6.0
#: Redis/SQS redeliver an unacknowledged message after this long; it must exceed the longest
#: job (late acks), so it is the time limit plus 10 minutes, or a day without a time limit.
_DEFAULT_VISIBILITY_S = 24 * 3600.0


def queue_name() -> str:
    """The Celery queue of this deployment: ``$SPLATFORGE_CELERY_QUEUE`` or ``splatforge``."""
    return os.environ.get(QUEUE_ENV) or DEFAULT_QUEUE


def _settings(settings: Any = None) -> Any:
    from .settings import ServiceSettings

    return settings if settings is not None else ServiceSettings.from_env()


def celery_config(broker_url: str, queue: str, time_limit_s: float | None = None,
                  soft_time_limit_s: float | None = None) -> dict[str, Any]:
    """The Celery configuration of producers (the server) and workers alike.

    Args:
        broker_url: ``redis://host:port/db`` or ``amqp://user:pass@host:port/vhost``.
        queue: queue name (one deployment per queue).
        time_limit_s: hard limit per job in seconds (the pool process is killed), or None.
        soft_time_limit_s: soft limit (``SoftTimeLimitExceeded`` inside the job), or None.
    """
    visibility = (time_limit_s + 600.0) if time_limit_s else _DEFAULT_VISIBILITY_S
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": visibility},
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": queue,
        "task_routes": {TASK_NAME: {"queue": queue}},
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        # deliberate: a lost worker fails the job (task_failure below), never reruns it
        "task_reject_on_worker_lost": False,
        "task_acks_on_failure_or_timeout": True,
        "task_time_limit": time_limit_s,
        "task_soft_time_limit": soft_time_limit_s,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_pool": "prefork",
        "worker_max_tasks_per_child": 1,
        "worker_send_task_events": False,
        "enable_utc": True,
    }


def make_app(settings: Any = None, queue: str | None = None,
             time_limit_s: float | None = None,
             soft_time_limit_s: float | None = None) -> Any:
    """The Celery application with the ``splatforge.run_job`` task registered.

    Args:
        settings: :class:`~splatforge.service.settings.ServiceSettings` (default: from the
            environment); its ``broker_url`` is the broker and ``job_time_limit_s`` the
            default hard limit.
        queue: queue name (default :func:`queue_name`).
        time_limit_s / soft_time_limit_s: Celery's hard and soft limits in seconds (default:
            ``settings.job_time_limit_s`` hard, no soft limit).

    Raises:
        ConfigError: no broker URL is configured, or it is neither Redis nor AMQP.
    """
    from celery import Celery

    settings = _settings(settings)
    url = settings.broker_url
    if not url:
        raise ConfigError("SPLATFORGE_BROKER_URL is not set: the celery executor and "
                          "`splatforge worker` need a broker, e.g. redis://127.0.0.1:6379/0 "
                          "or amqp://guest:guest@127.0.0.1:5672//")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("redis", "rediss", "amqp", "amqps", "pyamqp"):
        raise ConfigError(f"SPLATFORGE_BROKER_URL: unsupported broker {scheme!r} in {url!r} "
                          "(use redis://... or amqp://...)")
    hard = time_limit_s if time_limit_s is not None else settings.job_time_limit_s
    app = Celery("splatforge", set_as_current=False)
    app.conf.update(celery_config(url, queue or queue_name(), hard, soft_time_limit_s))
    app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=False,
             ignore_result=True)(_run_job_task)
    return app


# --------------------------------------------------------------------------------------------
# the database side (a worker's main process, its pool process, the server's monitor)


def _finish(settings: Any, job_id: str, status: str, message: str | None,
            stage: str | None = None) -> bool:
    """End job ``job_id`` as ``status`` through :func:`.lifecycle.transition` (so only if it
    has not ended already), recording the cause as its error (stage: ``stage``, else the
    job's current stage). Returns True when this call ended it."""
    from . import db
    from .lifecycle import transition

    values: dict[str, Any] = {}
    if status in ("failed", "cancelled"):
        values.update(error_stage=stage or db.Job.stage, error_message=message)
    if not transition(settings, job_id, status, message or status, stage=stage,
                      data={"by": "celery"}, **values):
        return False
    log.warning("job %s %s: %s", job_id, status, message)
    return True


def _main_process_finish(settings: Any, job_id: str, status: str, message: str,
                         stage: str | None = None) -> None:
    """:func:`_finish` from a worker's main process, leaving no pooled connection behind
    (the next pool process is forked from this one and must not share a connection)."""
    from . import db

    try:
        _finish(settings, job_id, status, message, stage)
    except Exception:  # noqa: BLE001  (the worker must keep serving; the monitor retries)
        log.exception("could not record job %s as %s", job_id, status)
    finally:
        db.dispose_engines()


def _run_job_task(task: Any, job_id: str) -> str:
    """Body of ``splatforge.run_job`` (runs in the worker's pool process)."""
    from . import db
    from .runner import run_job

    settings = _settings(getattr(task.app, "_splatforge_settings", None))
    with db.session_scope(settings) as s:
        job = s.get(db.Job, job_id)
        state = None if job is None else (job.status, bool(job.cancel_requested),
                                          job.heartbeat_at, job.worker)
    if state is None:
        log.error("job %s: not in the database %s; message dropped", job_id,
                  settings.database)
        return "missing"
    status, cancel, heartbeat, prev_worker = state
    if status in db.FINAL_STATUSES:
        log.info("job %s is already %s; not running it again", job_id, status)
        return status
    if cancel:
        _finish(settings, job_id, "cancelled", "cancelled before it started")
        return "cancelled"
    if status == "running":
        # a redelivered message: the job started on a worker that stopped acknowledging
        age = time.time() - heartbeat if heartbeat else None
        if age is not None and age < HEARTBEAT_FRESH_S:
            log.warning("job %s is running on %s (heartbeat %.1f s ago); duplicate delivery "
                        "dropped", job_id, prev_worker, age)
            return "duplicate"
        _finish(settings, job_id, "failed",
                f"worker lost: {prev_worker or 'a worker'} stopped while running this job "
                "(the message was redelivered; the job is not run twice)")
        return "failed"
    hostname = task.request.hostname or socket.gethostname()
    _arm_sigterm_grace()
    return run_job(job_id, settings, worker=hostname)


def _job_id(args: Any, task_id: str | None) -> str | None:
    """The job a ``splatforge.run_job`` message is about: its argument (the task id equals
    it for messages the executor sends)."""
    if isinstance(args, (list, tuple)) and args and isinstance(args[0], str):
        return args[0]
    return task_id


def _on_task_failure(sender: Any = None, task_id: str | None = None,
                     exception: BaseException | None = None, args: Any = None,
                     **_: Any) -> None:
    """``task_failure``: the pool process died (WorkerLostError), the hard time limit killed
    it (TimeLimitExceeded), or the task raised. Runs in the worker's main process for the
    first two."""
    from billiard.exceptions import TimeLimitExceeded, WorkerLostError

    if sender is None or getattr(sender, "name", None) != TASK_NAME or not task_id:
        return
    settings = _settings(getattr(sender.app, "_splatforge_settings", None))
    hostname = getattr(getattr(sender, "request", None), "hostname", None) or "the worker"
    if isinstance(exception, WorkerLostError):
        msg = f"worker lost: the process running this job on {hostname} died ({exception})"
    elif isinstance(exception, TimeLimitExceeded):
        limit = sender.app.conf.task_time_limit
        msg = (f"time limit exceeded: the job ran longer than the hard limit of {limit:g} s "
               "and was killed" if limit else f"time limit exceeded ({exception})")
    else:
        msg = f"the worker task failed: {type(exception).__name__}: {exception}"
    _main_process_finish(settings, _job_id(args, task_id), "failed", msg)


def _on_task_revoked(sender: Any = None, request: Any = None, terminated: bool = False,
                     signum: Any = None, expired: bool = False, **_: Any) -> None:
    """``task_revoked`` (worker main process): a cancel reached this worker.

    A job revoked before it started is recorded ``cancelled`` at once. A running one was sent
    SIGTERM: its runner records ``cancelled`` itself within about a second; this records it
    only if the job is still not final :data:`CANCEL_GRACE_S` + 5 s later (the process was
    stuck and has been ended by the grace timer)."""
    if sender is None or getattr(sender, "name", None) != TASK_NAME or request is None:
        return
    settings = _settings(getattr(sender.app, "_splatforge_settings", None))
    job_id = _job_id(getattr(request, "args", None), request.id)
    if not terminated:
        why = "expired before it started" if expired else "cancelled before it started"
        _main_process_finish(settings, job_id, "cancelled", why)
        return
    timer = threading.Timer(CANCEL_GRACE_S + 5.0, _main_process_finish,
                            (settings, job_id, "cancelled",
                             "cancelled: the job's process was terminated"))
    timer.daemon = True
    timer.start()


def _on_pool_process_init(**_: Any) -> None:
    """``worker_process_init`` (each pool process, after the fork): drop the database
    connections inherited from the worker's main process."""
    from . import db

    db.dispose_engines()


def _arm_sigterm_grace() -> None:
    """In the pool process, at the start of a job: SIGTERM (a revoke with ``terminate``, or
    a cold shutdown) no longer ends the process at once (billiard's default raises
    ``SystemExit`` wherever the job is); the runner gets :data:`CANCEL_GRACE_S` seconds to
    notice its ``cancel_requested`` flag (set before the revoke), stop training with a
    checkpoint and record ``cancelled``; then the process exits. Installed per job because
    billiard resets the handlers after ``worker_process_init``; one job per process
    (``worker_max_tasks_per_child = 1``), so it is never restored."""

    def on_term(signum: int, _frame: Any) -> None:
        def later() -> None:
            time.sleep(CANCEL_GRACE_S)
            os._exit(128 + signum)

        threading.Thread(target=later, daemon=True, name="splatforge-term").start()

    signal.signal(signal.SIGTERM, on_term)


def _connect_worker_signals() -> None:
    from celery import signals

    signals.task_failure.connect(_on_task_failure, weak=False)
    signals.task_revoked.connect(_on_task_revoked, weak=False)
    signals.worker_process_init.connect(_on_pool_process_init, weak=False)


# --------------------------------------------------------------------------------------------
# `splatforge worker`


def job_limits(time_limit_s: float | None, soft_time_limit_s: float | None = None
               ) -> tuple[float | None, float | None, float | None]:
    """``(runner, celery_soft, celery_hard)`` limits in seconds for a hard limit ``H``.

    The runner stops the job gracefully (a checkpoint, ``failed`` with "time limit of S s
    exceeded") at the soft limit ``S`` (default ``H - max(30 s, 5% of H)``, at least ``H/2``);
    Celery's soft limit (``SoftTimeLimitExceeded`` in the job) follows 10 s later as a backstop
    for a job stuck in native code, and the hard limit ``H`` kills the process (the job fails
    through ``task_failure``). All None without a limit.
    """
    hard = time_limit_s
    if not hard:
        return soft_time_limit_s, None, None
    soft = soft_time_limit_s or max(hard - max(30.0, 0.05 * hard), 0.5 * hard)
    return soft, min(soft + 10.0, (soft + hard) / 2.0), hard


def worker(gpu: int | None = None, gpus: str | None = None, name: str | None = None,
           time_limit: float | None = None, soft_time_limit: float | None = None,
           queue: str | None = None,
           loglevel: Annotated[str, tyro.conf.arg(help="Celery log level.")] = "INFO"
           ) -> None:
    """Start a Celery worker that runs splatforge jobs, one at a time, on one GPU.

    Reads the service settings from the environment (SPLATFORGE_BROKER_URL,
    SPLATFORGE_DATABASE_URL, SPLATFORGE_STORAGE, ... as for `splatforge serve`) and consumes
    the SPLATFORGE_CELERY_QUEUE queue (default splatforge). Runs until SIGTERM/Ctrl-C (warm
    shutdown: the running job finishes first; a second signal stops at once and the job
    fails).

    Args:
        gpu: CUDA device index this worker owns (sets CUDA_VISIBLE_DEVICES); default: leave
            CUDA_VISIBLE_DEVICES as it is.
        gpus: several CUDA device indices, comma-separated ("0,1"): each job trains on all
            of them (sets CUDA_VISIBLE_DEVICES, and SPLATFORGE_TRAIN_GPUS, which the runner
            uses as ``train.gpus`` when a job does not set it; splatforge.train.distributed).
        name: worker name (the part before @host); default gpu<N>, else w<pid>.
        time_limit: hard limit of one job in seconds (default SPLATFORGE_JOB_TIME_LIMIT_S,
            else none): the job's process is killed and the job fails.
        soft_time_limit: seconds after which the job is stopped cleanly and fails (default:
            the hard limit minus 5%, at least 30 s before it).
        queue: queue to consume (default SPLATFORGE_CELERY_QUEUE or splatforge).
    """
    if gpu is not None:
        if gpu < 0:
            raise ConfigError(f"--gpu: a CUDA device index >= 0, got {gpu}")
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if gpus is not None:
        ids = [x.strip() for x in gpus.split(",") if x.strip()]
        if gpu is not None or not ids or not all(x.isdigit() for x in ids) \
                or len(set(ids)) != len(ids):
            raise ConfigError(f"--gpus: distinct CUDA device indices >= 0 separated by commas "
                              f"(e.g. 0,1), and not together with --gpu; got {gpus!r}")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
        os.environ["SPLATFORGE_TRAIN_GPUS"] = str(len(ids))
        gpu = int(ids[0])  # the default worker name
    if time_limit is not None and time_limit <= 0:
        raise ConfigError(f"--time-limit: seconds > 0, got {time_limit}")
    from . import db

    settings = _settings()
    hard = time_limit if time_limit is not None else settings.job_time_limit_s
    if soft_time_limit is not None and (soft_time_limit <= 0 or (
            hard is not None and soft_time_limit >= hard)):
        raise ConfigError(f"--soft-time-limit: seconds > 0 and below the hard limit "
                          f"({hard}), got {soft_time_limit}")
    runner_limit, celery_soft, celery_hard = job_limits(hard, soft_time_limit)
    settings = settings.model_copy(update={"job_time_limit_s": runner_limit})
    app = make_app(settings, queue=queue, time_limit_s=celery_hard,
                   soft_time_limit_s=celery_soft)
    app._splatforge_settings = settings
    db.init_db(settings)  # same migrations as the server; a no-op when current
    db.dispose_engines()
    _connect_worker_signals()
    # the job database, not a result backend, records revokes: drop Celery's warning
    logging.getLogger("celery.worker.control").addFilter(
        lambda rec: "No result backend is configured" not in rec.getMessage())
    node = name or (f"gpu{gpu}" if gpu is not None else f"w{os.getpid()}")
    argv = ["worker", f"--hostname={node}@%h", "--pool=prefork", "--concurrency=1",
            f"--queues={app.conf.task_default_queue}", f"--loglevel={loglevel}",
            "--without-gossip", "--max-tasks-per-child=1"]
    app.worker_main(argv=argv)


# --------------------------------------------------------------------------------------------
# the server side


class CeleryExecutor:
    """Runs jobs on Celery workers (``SPLATFORGE_EXECUTOR=celery``).

    ``submit`` sends ``splatforge.run_job(job_id)`` with task id = job id. ``cancel`` revokes
    with ``terminate=True, signal="SIGTERM"`` (:func:`.lifecycle.stop_job` has flagged the
    job and ended it if it had not started). A monitor thread (every ``monitor_interval_s``
    seconds, started by :meth:`recover` or the first :meth:`submit`) asks the workers which
    tasks they run (``inspect().active()``); a ``running`` job that no worker lists in two
    checks in a row and whose heartbeat is older than :data:`HEARTBEAT_FRESH_S` is marked
    ``failed`` with the cause (its worker was killed or lost).

    Queued jobs live in the broker; :meth:`recover` does not send them again (a second
    message could run a job twice).

    Args:
        settings: the service settings (broker, database).
        queue: queue name (default :func:`queue_name`).
        monitor_interval_s: seconds between worker checks.
    """

    def __init__(self, settings: Any = None, queue: str | None = None,
                 monitor_interval_s: float = 2.0):
        self.settings = _settings(settings)
        self.app = make_app(self.settings, queue=queue)
        self.queue = self.app.conf.task_default_queue
        self.monitor_interval_s = monitor_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._misses: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- Executor protocol -------------------------------------------------------------------

    def submit(self, job_id: str) -> None:
        """Queue job ``job_id`` (already ``queued`` in the database). When the broker cannot
        be reached the job ends ``failed`` with that cause (the server keeps serving)."""
        from . import db

        with db.session_scope(self.settings) as s:
            job = s.get(db.Job, job_id)
            if job is not None:
                job.task_id = job_id
        try:
            self.app.tasks[TASK_NAME].apply_async(args=[job_id], task_id=job_id,
                                                  queue=self.queue)
        except Exception as e:  # noqa: BLE001  (kombu/redis/amqp errors: the job says why)
            url = self.app.conf.broker_url.split("@")[-1]
            _finish(self.settings, job_id, "failed", f"could not queue the job on the broker "
                    f"{url}: {type(e).__name__}: {e}", stage="queue")
            return
        self._start_monitor()

    def cancel(self, job_id: str) -> None:
        """Make sure job ``job_id`` stops (called by :func:`.lifecycle.stop_job`, which has
        set its ``cancel_requested`` flag and ended it if it was queued): revoke its message,
        terminating a running task with SIGTERM. Never writes the status."""
        self.app.control.revoke(job_id, terminate=True, signal="SIGTERM")

    def recover(self) -> None:
        """Start watching running jobs (their workers may have died while the server was
        down)."""
        self._start_monitor()

    def shutdown(self) -> None:
        """Stop the monitor and close broker connections (jobs keep running on workers)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.app.close()

    # -- the monitor --------------------------------------------------------------------------

    def _start_monitor(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._monitor, daemon=True,
                                                name="splatforge-celery-monitor")
                self._thread.start()

    def _monitor(self) -> None:
        while not self._stop.wait(self.monitor_interval_s):
            try:
                self.check_workers()
            except Exception:  # noqa: BLE001  (broker or database hiccup: try next time)
                log.exception("celery monitor: check failed")

    def active_task_ids(self, timeout_s: float = 2.0) -> set[str]:
        """Ids of the tasks every reachable worker is running now (empty when none answer).

        Raises:
            kombu / redis errors: the broker is unreachable.
        """
        replies = self.app.control.inspect(timeout=timeout_s).active() or {}
        return {t.get("id") for tasks in replies.values() for t in (tasks or [])}

    def check_workers(self) -> list[str]:
        """One monitor round; returns the ids of the jobs it marked ``failed``."""
        from sqlalchemy import select

        from . import db

        with db.session_scope(self.settings) as s:
            running = [(j.id, j.worker, j.heartbeat_at) for j in s.scalars(
                select(db.Job).where(db.Job.status == "running")
                .where(db.Job.task_id.is_not(None)))]
        if not running:
            self._misses.clear()
            return []
        active = self.active_task_ids()
        now = time.time()
        failed = []
        for job_id, worker_name, heartbeat in running:
            stale = heartbeat is None or now - heartbeat > HEARTBEAT_FRESH_S
            if job_id in active or not stale:
                self._misses.pop(job_id, None)
                continue
            self._misses[job_id] = self._misses.get(job_id, 0) + 1
            if self._misses[job_id] < 2:
                continue
            self._misses.pop(job_id, None)
            age = f"{now - heartbeat:.0f} s ago" if heartbeat else "never"
            if _finish(self.settings, job_id, "failed",
                       f"worker lost: {worker_name or 'its worker'} no longer runs this job "
                       f"(killed, crashed or cut off from the broker; last heartbeat {age})"):
                failed.append(job_id)
        return failed
