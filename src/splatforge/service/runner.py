"""Run one job in the current process: :func:`run_job`.

Both executors end here: the local executor's worker processes
(``python -m splatforge.service.worker_main JOB_ID``) and the Celery task call
``run_job(job_id, settings)``. The job's row is the only channel back to the server:

1. mark the job ``running`` (worker, pid, host, started_at);
2. fetch the scene's media (``media/{scene_id}/`` of the artifact store, or its
   ``source_uri``) into ``<data_dir>/work/<job_id>/media``;
3. run the pipeline through :func:`splatforge.pipeline.run_job_pipeline` into ``<work>/out``
   with this module's database sink (:class:`splatforge.jobs.JobSink`): ``on_event`` writes
   progress (stage, step, total, fraction, ETA, metrics) to the job row and event rows
   (progress at most every :data:`PROGRESS_INTERVAL_S`, every stage start/finish, warning and
   info at once);
4. a watcher thread beats ``heartbeat_at`` and reads ``cancel_requested`` every
   :data:`POLL_INTERVAL_S`; a cancel (or the time limit, or SIGTERM through
   :func:`request_stop`) makes ``should_stop`` answer its reason, so the pipeline stops at the
   next stage boundary or training step (with a checkpoint); only a native call that runs
   past :data:`INTERRUPT_GRACE_S` without a poll is interrupted;
5. publish the artifacts to ``outputs/{scene_id}/`` (:func:`splatforge.jobs.publish` of
   :func:`splatforge.jobs.artifact_files`: the one layout every front door writes) and a new
   COLMAP model to ``colmap/{scene_id}/`` (outputs of finished stages are uploaded even when
   a later stage fails or is cancelled);
6. end as ``succeeded``, ``failed`` (error stage and message) or ``cancelled`` through
   :func:`.lifecycle.transition` (which also sends the completion notice); when a monitor
   ended the job first, its end stands.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
import _thread
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from ..events import Event
from ..jobs import JobStopped, artifact_files, image_folder, publish
from ..jobs.config import job_config
from ..jobs.inputs import dataset_format
from ..paths import redact_paths
from .db import FINAL_STATUSES, Job, Scene, add_event, session_scope
from .lifecycle import transition
from .settings import ServiceSettings
from .store import (check_allowed_path, colmap_prefix, get_store, media_prefix, open_source,
                    outputs_prefix)

#: Seconds between two progress writes of one job (stage starts/finishes always write).
PROGRESS_INTERVAL_S = 0.5
#: Seconds between two reads of ``cancel_requested`` (and heartbeats).
POLL_INTERVAL_S = 0.5
#: After a stop request, seconds before the main thread is interrupted if no callback ran.
INTERRUPT_GRACE_S = 5.0

_stop_reason: dict[str, str] = {}


def request_stop(reason: str = "shutdown") -> None:
    """Ask the job running in this process to stop at its next stop poll (``shutdown``: the
    job goes back to ``queued``; ``cancel``: ``cancelled``). Safe in a signal handler."""
    _stop_reason.setdefault("reason", reason)


class _JobRun:
    """The service's :class:`splatforge.jobs.JobSink`: job row + event rows."""

    def __init__(self, job_id: str, settings: ServiceSettings, worker: str | None):
        self.job_id = job_id
        self.settings = settings
        self.worker = worker or os.environ.get("SPLATFORGE_WORKER_NAME") or "local"
        self.stage: str | None = None
        self.finished_stages: list[str] = []
        self.last_progress = 0.0
        self.stop_reason: str | None = None
        self.raised_at: float | None = None
        self.stop_seen_at: float | None = None
        self.done = threading.Event()
        self.main_thread = threading.current_thread() is threading.main_thread()
        self.t0 = time.time()
        self.metrics: dict[str, Any] = {}
        #: folders never shown to clients in events and the log (see :meth:`_redact`)
        self.redact_roots = [settings.work_dir / job_id, settings.data_dir,
                             *settings.allowed_roots, Path(__file__).resolve().parents[2],
                             sys.prefix, sys.base_prefix, tempfile.gettempdir()]

    # -- DB helpers -------------------------------------------------------------------------
    def update_job(self, **values: Any) -> None:
        values.setdefault("updated_at", time.time())
        with session_scope(self.settings) as s:
            s.execute(update(Job).where(Job.id == self.job_id).values(**values))

    def _redact(self, value: Any) -> Any:
        """``value`` (a str, or dicts/lists of them) with every server folder a client must not
        see (the work folder, the data dir, the allowed roots, the installed code and the
        interpreter, as in tracebacks) replaced by ``<server>``."""
        if isinstance(value, str):
            return redact_paths(value, self.redact_roots)
        if isinstance(value, dict):
            return {k: self._redact(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._redact(v) for v in value]
        return value

    def _event(self, kind: str, message: str = "", stage: str | None = None,
               job_values: dict[str, Any] | None = None, **fields: Any) -> None:
        message = self._redact(message)
        if fields.get("data"):
            fields["data"] = self._redact(fields["data"])
        with session_scope(self.settings) as s:
            add_event(s, self.job_id, kind, message, stage, **fields)
            if job_values:
                job_values.setdefault("updated_at", time.time())
                s.execute(update(Job).where(Job.id == self.job_id).values(**job_values))

    # -- stop requests ----------------------------------------------------------------------
    def should_stop(self) -> str | None:
        """The sink's stop hook: ``cancel`` | ``timeout`` | ``shutdown`` once asked, else
        None."""
        reason = self.stop_reason or _stop_reason.get("reason")
        if reason is not None:
            self.stop_reason = reason
            self.raised_at = self.raised_at or time.monotonic()
        return reason

    def _watch(self) -> None:
        limit = self.settings.job_time_limit_s
        while not self.done.wait(POLL_INTERVAL_S):
            try:
                with session_scope(self.settings) as s:
                    cancel = s.execute(select(Job.cancel_requested)
                                       .where(Job.id == self.job_id)).scalar()
                    s.execute(update(Job).where(Job.id == self.job_id)
                              .values(heartbeat_at=time.time()))
            except Exception:  # noqa: BLE001  (a database hiccup: try again next poll)
                continue
            if cancel and self.stop_reason is None:
                self.stop_reason = "cancel"
            if limit and time.time() - self.t0 > limit and self.stop_reason is None:
                self.stop_reason = "timeout"
            if self.stop_reason is None and "reason" in _stop_reason:
                self.stop_reason = _stop_reason["reason"]
            if self.stop_reason is not None:
                now = time.monotonic()
                if self.stop_seen_at is None:
                    self.stop_seen_at = now
                elif (self.main_thread and self.raised_at is None
                      and now - self.stop_seen_at > INTERRUPT_GRACE_S):
                    # no callback for a while (a long native call): interrupt the main thread
                    self.raised_at = now
                    _thread.interrupt_main()

    # -- events -----------------------------------------------------------------------------
    def on_event(self, ev: Event) -> None:
        """The sink's events callback (see the module docstring); never raises a stop."""
        stage = ev.stage if ev.stage != "reconstruct" else None
        now = time.monotonic()
        fields = dict(step=ev.step, total=ev.total, eta_s=ev.eta_s,
                      data=_jsonable(ev.data), time=ev.time)
        if ev.kind == "stage_started":
            if stage:
                self.stage = stage
                self._event(ev.kind, ev.message, ev.stage, job_values=dict(
                    stage=stage, step=None, total=None, fraction=None, eta_s=None), **fields)
            else:
                self._event(ev.kind, ev.message, ev.stage, **fields)
        elif ev.kind == "stage_finished":
            if stage:
                self.finished_stages.append(stage)
            self._event(ev.kind, ev.message, ev.stage, **fields)
        elif ev.kind == "progress":
            last = ev.total is not None and ev.step == ev.total
            if not last and now - self.last_progress < PROGRESS_INTERVAL_S:
                return
            self.last_progress = now
            values: dict[str, Any] = dict(step=ev.step, total=ev.total, eta_s=ev.eta_s)
            if stage:
                values["stage"] = stage
            if ev.total:
                values["fraction"] = round(min(1.0, (ev.step or 0) / ev.total), 4)
            if ev.data:
                self.metrics.update({k: v for k, v in _jsonable(ev.data).items()
                                     if isinstance(v, (int, float))})
                values["metrics"] = dict(self.metrics)
            self._event(ev.kind, ev.message, ev.stage, job_values=values, **fields)
        else:
            self._event(ev.kind, ev.message, ev.stage, **fields)

    # -- the run ----------------------------------------------------------------------------
    def claim(self) -> tuple[str | None, dict[str, Any]]:
        """Move the job from ``queued`` to ``running`` (:func:`.lifecycle.transition`);
        returns (its status when it must not run here, job info)."""
        with session_scope(self.settings) as s:
            job = s.get(Job, self.job_id)
            if job is None:
                return "failed", {}
            if job.status in FINAL_STATUSES:
                return job.status, {}
            cancel = bool(job.cancel_requested)
            scene = s.get(Scene, job.scene_id)
            info = {"scene_id": job.scene_id, "kind": job.kind, "config": dict(job.config or {}),
                    "source_uri": scene.source_uri if scene else None}
        if cancel:
            transition(self.settings, self.job_id, "cancelled", "cancelled before it started",
                       error_message="cancelled before it started")
            return self.status(), {}
        host, pid = socket.gethostname(), os.getpid()
        if not transition(self.settings, self.job_id, "running",
                          f"running on {host} (pid {pid}, {self.worker})",
                          only_from={"queued"}, worker=self.worker, pid=pid, host=host,
                          error_stage=None, error_message=None,
                          data={"host": host, "pid": pid, "worker": self.worker}):
            return self.status(), {}  # someone else runs it, or it ended meanwhile
        return None, info

    def status(self) -> str:
        """The job's status as the database has it now (``failed`` when there is no job)."""
        with session_scope(self.settings) as s:
            return s.execute(select(Job.status).where(Job.id == self.job_id)).scalar() \
                or "failed"

    def run(self) -> str:
        final, info = self.claim()
        if final is not None:
            return final
        watcher = threading.Thread(target=self._watch, name=f"job-{self.job_id}-watch",
                                   daemon=True)
        watcher.start()
        work = self.settings.work_dir / self.job_id
        out = work / "out"
        status, err_stage, err_msg = "succeeded", None, None
        result = None
        try:
            try:
                if info["kind"] == "render":  # a camera-path video
                    from .render_jobs import run_render_job

                    run_render_job(self, info, work)
                else:
                    from ..pipeline import plan_input, run_job_pipeline

                    config = job_config(info["config"], train_gpus=self.settings.train_gpus)
                    self.set_stage("fetch", "fetching media")
                    plan = plan_input(self.fetch_media(info, work), config,
                                      label="the scene's media")
                    self.stage_finished("fetch", f"media: {plan.media.name}")
                    result = run_job_pipeline(plan, out, self)
            finally:
                self.done.set()
        except (JobStopped, KeyboardInterrupt) as e:
            reason = (e.reason if isinstance(e, JobStopped) else None) or self.stop_reason \
                or _stop_reason.get("reason") or "interrupt"
            if reason == "cancel":
                status, err_stage, err_msg = "cancelled", self.stage, "cancelled by request"
            elif reason == "shutdown":
                status, err_stage, err_msg = "queued", self.stage, None
            elif reason == "timeout":
                status, err_stage = "failed", self.stage
                err_msg = f"time limit of {self.settings.job_time_limit_s:g} s exceeded"
            else:
                status, err_stage, err_msg = "failed", self.stage, "interrupted"
        except Exception as e:  # noqa: BLE001  (every job failure is recorded, never raised)
            from ..errors import SplatforgeError

            status, err_stage = "failed", self.stage or "setup"
            err_msg = str(e) if isinstance(e, SplatforgeError) else f"{type(e).__name__}: {e}"
            try:
                self._event("error", err_msg, err_stage,
                            data={"traceback": traceback.format_exc(limit=20)})
            except Exception:  # noqa: BLE001
                pass
        finally:
            self.done.set()
        try:
            self.upload(info["scene_id"], out, result, succeeded=status == "succeeded")
        except Exception as e:  # noqa: BLE001
            if status == "succeeded":
                status, err_stage = "failed", "upload"
                err_msg = f"uploading artifacts failed: {type(e).__name__}: {e}"
        status = self.finish(status, err_stage, err_msg, result)
        if status == "succeeded":
            shutil.rmtree(work, ignore_errors=True)
        return status

    def set_stage(self, stage: str, message: str = "") -> None:
        """The sink's own stages (``fetch``, ``upload``): recorded on the job row."""
        self.stage = stage
        self._event("stage_started", message, stage,
                    job_values=dict(stage=stage, step=None, total=None, fraction=None))

    def stage_finished(self, stage: str, message: str) -> None:
        """The end of one of the sink's own stages, as an event."""
        self.finished_stages.append(stage)
        self._event("stage_finished", message, stage)

    # -- inputs -----------------------------------------------------------------------------
    def fetch_media(self, info: dict[str, Any], work: Path) -> Path:
        """The fetched media or dataset, for :func:`splatforge.pipeline.plan_input`.

        Raises:
            InputError: no media, a source outside the allowed roots, or (train_gsplat) no
                COLMAP model / no images.
        """
        from ..errors import InputError

        scene_id = info["scene_id"]
        store = get_store(self.settings)
        media_dir = work / "media"
        uri = info.get("source_uri")
        if uri and uri.startswith("s3://"):
            media_dir.mkdir(parents=True, exist_ok=True)
            open_source(uri, self.settings).download_prefix("", media_dir)
        elif uri:
            media_dir = check_allowed_path(uri, self.settings)
        else:
            try:
                store.download_prefix(media_prefix(scene_id), media_dir)
            except FileNotFoundError:  # storage.ObjectNotFound: nothing uploaded
                pass
        if info.get("kind") == "train_gsplat":
            return self._colmap_dataset(scene_id, media_dir, work)
        if media_dir.is_file():  # a source_uri naming a zip or a video
            return media_dir
        if not media_dir.is_dir() or not any(media_dir.iterdir()):
            raise InputError(None, "the scene has no media",
                             "upload images, a zip or a video first")
        return media_dir  # classified once, by the pipeline's plan_input

    def _colmap_dataset(self, scene_id: str, media_dir: Path, work: Path) -> Path:
        from ..errors import InputError

        if dataset_format(media_dir) is not None:
            return media_dir
        ds = work / "colmap"
        try:
            get_store(self.settings).download_prefix(colmap_prefix(scene_id), ds)
        except FileNotFoundError:  # storage.ObjectNotFound
            raise InputError(None, "no COLMAP model for this scene") from None
        if dataset_format(ds) is None:
            raise InputError(None, "no COLMAP model for this scene")
        if not any(p.is_dir() and image_folder(p) == p for p in ds.glob("images*")):
            imgs = image_folder(media_dir)
            if imgs is None:
                raise InputError(None, "no images for the COLMAP model")
            (ds / "images").symlink_to(imgs.resolve(), target_is_directory=True)
        return ds

    # -- outputs ----------------------------------------------------------------------------
    def upload(self, scene_id: str, out: Path, result: Any, succeeded: bool) -> None:
        """Upload what finished: the COLMAP model after SfM ran; the artifacts when the job
        succeeded (then stale keys of an earlier job under outputs/{scene_id}/ go)."""
        store = get_store(self.settings)
        sparse = out / "workspace" / "sparse" / "0"
        if ("sfm" in self.finished_stages and sparse.is_dir()):
            self.set_stage("upload", "uploading the COLMAP model")
            store.upload_dir(sparse, colmap_prefix(scene_id) + "sparse/0")
        if not succeeded or result is None:
            return
        self.set_stage("upload", "uploading artifacts")
        prefix = outputs_prefix(scene_id)
        files = artifact_files(out, result.step)
        publish(store, prefix, files)
        self.stage_finished("upload", f"{len(files)} artifacts -> {prefix}")

    def finish(self, status: str, err_stage: str | None, err_msg: str | None,
               result: Any) -> str:
        """End the run: move the job from ``running`` to ``status`` (``queued`` after a
        shutdown) with the error and the result's metrics; returns the job's status after
        the move (another party's, when it ended the job first)."""
        # clients read the job row's message too: no server paths (as in :meth:`_event`)
        err_msg = self._redact(err_msg)
        values: dict[str, Any] = {}
        if status == "queued":
            values.update(pid=None, eta_s=None)
            msg = "stopped for a server shutdown; queued again (training resumes from its " \
                  "last checkpoint)"
        else:
            msg = status + (f" in {err_stage}: {err_msg}" if err_msg else "")
        if status in ("failed", "cancelled"):
            values.update(error_stage=err_stage, error_message=err_msg)
        if result is not None:
            metrics = dict(self.metrics)
            metrics.update({"psnr": result.psnr, "ssim": result.ssim,
                            "num_gaussians": result.num_gaussians, "step": result.step,
                            "num_images": result.num_images,
                            "num_registered": result.num_registered,
                            "stage_seconds": {k: v.get("seconds")
                                              for k, v in result.stages.items()}})
            values["metrics"] = metrics
            if status == "succeeded":
                values.update(fraction=1.0)
        if transition(self.settings, self.job_id, status, msg, only_from={"running"},
                      stage=err_stage, data={"error": err_msg} if err_msg else None, **values):
            return status
        return self.status()


def run_job(job_id: str, settings: ServiceSettings, worker: str | None = None) -> str:
    """Run job ``job_id`` in this process (see the module docstring).

    Args:
        job_id: a row of ``jobs`` in ``settings.database``.
        settings: the service settings (database, artifact store, data dir).
        worker: the name recorded as the job's worker (default ``$SPLATFORGE_WORKER_NAME``
            or ``local``).

    Returns:
        The final status: ``succeeded`` | ``failed`` | ``cancelled`` (``queued`` when a
        shutdown stopped it: it runs again later). A job already finished is not run again
        and its status is returned.

    Never raises for job failures; they are recorded in the job row (error stage, message)
    and as an ``error`` event with the traceback. Database errors while claiming propagate.
    """
    return _JobRun(job_id, settings, worker).run()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (data or {}).items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v):
            out[k] = list(v)
        elif isinstance(v, dict):
            out[k] = _jsonable(v)
        else:
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                out[k] = str(v)
    return out
