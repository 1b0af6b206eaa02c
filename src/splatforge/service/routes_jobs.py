"""Jobs: start, status, live events (SSE), log, cancel.

* ``POST /scenes/{id}/jobs`` with a pipeline config -> 202 ``{"job_id": ...}``; an invalid
  config -> 422 naming the field; a scene without media -> 400; an unknown scene -> 404.
* ``GET /jobs/{id}``: status, stage, progress, ETA, metrics, error, timestamps.
* ``GET /jobs/{id}/events``: Server-Sent Events, one ``data:`` JSON per event row, read from
  the database (so it works for any worker on any machine), ending when the job ends;
  capped per job and per API key (429), see :mod:`.streams`.
* ``GET /jobs/{id}/log``: the events as text.
* ``POST /jobs/{id}/cancel``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy import func, select

from ..config import IngestConfig, SceneConfig, SfmConfig, TrainConfig
from ..errors import ConfigError
from ..presets import resolve_config
from ..reconstruct_config import DEFAULT_PRESET, PresetName, ReconstructConfig
from .db import FINAL_STATUSES, Job, JobEvent, session_scope
from .deps import ExecutorDep, SessionDep, SettingsDep
from .lifecycle import create_job, stop_job
from .schemas import JobCreated, JobOut, iso_time
from .routes_scenes import get_scene_or_404
from .streams import RETRY_AFTER_S, EventHub, StreamLimit, StreamSlots, key_id
from ..jobs.config import parse_stage_config

router = APIRouter(tags=["jobs"])

#: SSE: seconds between database polls, and between keep-alive comments.
SSE_POLL_S = 0.25
SSE_KEEPALIVE_S = 15.0
#: The largest event id (a signed 64-bit database integer).
MAX_EVENT_ID = 2**63 - 1


class JobRequest(BaseModel):
    """A pipeline configuration: the client-settable part of a
    :class:`~splatforge.reconstruct_config.ReconstructConfig` (:meth:`to_config`), plus
    where to notify. Fields left out take the preset's values, then the model defaults;
    every field given wins, also when it equals the model default."""

    model_config = ConfigDict(extra="forbid")

    preset: PresetName = Field(DEFAULT_PRESET, description="preview | default | quality")
    ingest: IngestConfig | None = None
    sfm: SfmConfig | None = None
    scene: SceneConfig | None = None
    train: TrainConfig | None = None
    notify_url: str | None = Field(
        None, max_length=2048, pattern=r"^https?://\S+$",
        description="POST this job's final status here when it ends (signed with "
                    "SPLATFORGE_NOTIFY_SECRET); default SPLATFORGE_NOTIFY_URL.")

    @field_validator("ingest", "sfm", "scene", "train", mode="before")
    @classmethod
    def _stage(cls, value: Any, info: ValidationInfo) -> Any:
        # validate through parse_config so the error names the field as stage.field
        if isinstance(value, dict):
            model = cls.model_fields[info.field_name].annotation.__args__[0]
            try:
                return parse_stage_config(info.field_name, model, value)
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return value

    def to_config(self) -> ReconstructConfig:
        """The job's :class:`ReconstructConfig` (the fields given stay the fields given)."""
        return ReconstructConfig.model_validate(
            self.model_dump(exclude_unset=True, exclude_none=True, exclude={"notify_url"}))


def _unprocessable(loc: list[str], msg: str) -> HTTPException:
    return HTTPException(422, [{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])


def check_job_request(body: JobRequest, settings: Any) -> tuple[dict[str, Any], int]:
    """The job's config JSON and its resolved ``max_steps``.

    Raises:
        HTTPException: 422 for options a client may not set (server paths, a ``notify_url``
            host refused by :func:`splatforge.jobs.notify.check_notify_url`) or a
            combination that only fails once the preset is applied.
    """
    from .store import check_allowed_path

    if body.scene is not None and body.scene.cache_dir is not None:
        raise _unprocessable(["scene", "cache_dir"], "cache_dir is chosen by the server")
    if body.sfm is not None and body.sfm.vocab_tree_path is not None:
        try:
            check_allowed_path(body.sfm.vocab_tree_path, settings)
        except Exception as e:  # noqa: BLE001
            raise _unprocessable(["sfm", "vocab_tree_path"], str(e)) from None
    try:
        resolved = resolve_config(body.to_config())
    except ConfigError as e:
        raise _unprocessable(["train"], str(e)) from None
    if body.notify_url is not None:
        from ..jobs.notify import NotifyURLRefused, check_notify_url

        try:
            check_notify_url(body.notify_url, settings.notify_hosts)
        except NotifyURLRefused as e:
            raise _unprocessable(["notify_url"], str(e)) from None
    config = body.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    config["preset"] = body.preset
    return config, resolved.train.max_steps


@router.post("/scenes/{scene_id}/jobs", status_code=202, response_model=JobCreated)
def start_job(scene_id: str, settings: SettingsDep, executor: ExecutorDep, response: Response,
              body: JobRequest | None = Body(
                  None, examples=[{"preset": "preview", "scene": {"data_factor": 4},
                                   "train": {"max_steps": 2000}}])) -> JobCreated:
    """Start a reconstruction of the scene's media; 202 with the job (``Location``: the job)."""
    body = body or JobRequest()
    with session_scope(settings) as s:
        scene = get_scene_or_404(s, scene_id)
        if not scene.media_files and not scene.source_uri:
            raise HTTPException(400, f"scene {scene_id} has no media: upload images, a zip "
                                     "or a video (POST /scenes/{id}/media) first")
    config, max_steps = check_job_request(body, settings)
    return job_created(settings, response,
                       create_job(settings, executor, scene_id, config, max_steps))


def job_created(settings: Any, response: Response, job_id: str) -> JobCreated:
    """The 202 answer of a new job: its record, and its URL as ``Location``."""
    response.headers["Location"] = f"/jobs/{job_id}"
    with session_scope(settings) as s:
        job = JobOut.from_row(get_job_or_404(s, job_id))
    return JobCreated(job_id=job_id, **job.model_dump())


def get_job_or_404(session: Any, job_id: str) -> Job:
    """The ``jobs`` row ``job_id``.

    Raises:
        HTTPException: 404 when there is none.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id!r} not found")
    return job


@router.get("/jobs", response_model=list[JobOut])
def list_jobs(session: SessionDep, scene_id: str | None = None, status: str | None = None,
              limit: int = 100) -> list[JobOut]:
    """Jobs, newest first (filter by scene or status)."""
    q = select(Job).order_by(Job.created_at.desc()).limit(max(1, min(limit, 1000)))
    if scene_id:
        q = q.where(Job.scene_id == scene_id)
    if status:
        q = q.where(Job.status == status)
    return [JobOut.from_row(j) for j in session.execute(q).scalars().all()]


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep) -> JobOut:
    """Status (queued | running | succeeded | failed | cancelled), stage, progress (step,
    total, max_steps, fraction), ETA (s), metrics, error (stage, message), timestamps."""
    return JobOut.from_row(get_job_or_404(session, job_id))


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(job_id: str, settings: SettingsDep, executor: ExecutorDep) -> JobOut:
    """Ask the job to stop: a queued job ends at once, a running one within seconds
    (training stops at a step boundary with a checkpoint; finished stages' outputs stay)."""
    with session_scope(settings) as s:
        get_job_or_404(s, job_id)
    stop_job(settings, job_id, executor)
    with session_scope(settings) as s:
        return JobOut.from_row(get_job_or_404(s, job_id))


def _sse(ev: JobEvent) -> str:
    return f"id: {ev.id}\nevent: {ev.kind}\ndata: {json.dumps(ev.to_json())}\n\n"


def _fetch_events(settings: Any) -> Any:
    """The :class:`.streams.EventHub` fetch function over the job database."""

    def fetch(job_id: str, after: int | None, limit: int) -> tuple[str | None, list]:
        with session_scope(settings) as s:
            # status first: once it reads final, the final event is already committed
            # (they are written in one transaction), so the rows read next include it
            status = s.execute(select(Job.status).where(Job.id == job_id)).scalar()
            if after is None:
                top = s.execute(select(func.max(JobEvent.id))
                                .where(JobEvent.job_id == job_id)).scalar()
                return status, [(top or 0, None)]
            rows = s.execute(select(JobEvent).where(JobEvent.job_id == job_id,
                                                    JobEvent.id > after)
                             .order_by(JobEvent.id).limit(limit)).scalars().all()
            return status, [(ev.id, _sse(ev)) for ev in rows]

    return fetch


def _streams(app: Any) -> tuple[StreamSlots, EventHub]:
    """The app's stream caps and event hub (made on first use)."""
    state = app.state
    if getattr(state, "event_hub", None) is None:
        settings = state.settings
        state.stream_slots = StreamSlots(settings.max_streams_per_job,
                                         settings.max_streams_per_key)
        state.event_hub = EventHub(_fetch_events(settings), tuple(FINAL_STATUSES),
                                   SSE_POLL_S)
    return state.stream_slots, state.event_hub


class _SlotResponse(StreamingResponse):
    """A streaming response that gives its stream slot back when it ends, however."""

    def __init__(self, *args: Any, release: Any, **kw: Any):
        super().__init__(*args, **kw)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}},
                       429: {"description": "too many open event streams (Retry-After)"}})
def job_events(request: Request, job_id: str, settings: SettingsDep,
               after: int = Query(0, ge=0, le=MAX_EVENT_ID)) -> Response:
    """Server-Sent Events: every event row of the job from ``after`` (or ``Last-Event-ID``)
    on, as they are written; the stream ends with an ``end`` event once the job is finished
    (succeeded, failed or cancelled).

    At most ``SPLATFORGE_MAX_STREAMS_PER_JOB`` streams of one job and
    ``SPLATFORGE_MAX_STREAMS_PER_KEY`` of one API key are open at once; past either, 429
    with ``Retry-After`` (seconds). Streams share one database poller per job."""
    with session_scope(settings) as s:
        get_job_or_404(s, job_id)
    last = (request.headers.get("last-event-id") or "").strip()
    start = after
    if last:
        if not last.isdigit() or len(last) > 19 or int(last) > MAX_EVENT_ID:
            raise HTTPException(400, f"Last-Event-ID must be an event id from 0 to "
                                     f"{MAX_EVENT_ID} (got {last[:40]!r})")
        start = int(last)
    slots, hub = _streams(request.app)
    try:
        release = slots.acquire(job_id, key_id(request.headers.get("authorization")))
    except StreamLimit as e:
        return JSONResponse({"detail": str(e)}, status_code=429,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    async def stream() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        async for kind, payload in hub.follow(job_id, start, SSE_KEEPALIVE_S):
            if kind == "row":
                yield payload
            elif kind == "keepalive":
                yield ": keep-alive\n\n"
            else:
                yield f"event: end\ndata: {json.dumps({'status': payload})}\n\n"

    return _SlotResponse(stream(), media_type="text/event-stream", release=release,
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def format_log_line(ev: JobEvent) -> str:
    t = iso_time(ev.time)
    where = f"[{ev.stage}] " if ev.stage else ""
    step = ""
    if ev.step is not None:
        step = f" {ev.step}/{ev.total}" if ev.total else f" {ev.step}"
    msg = f"{t} {where}{ev.kind}{step}: {ev.message}"
    tb = (ev.data or {}).get("traceback")
    if tb:
        msg += "\n" + tb.rstrip()
    return msg


@router.get("/jobs/{job_id}/log", response_class=PlainTextResponse)
def job_log(job_id: str, session: SessionDep) -> PlainTextResponse:
    """The job's events as text, one line each (tracebacks of errors included)."""
    get_job_or_404(session, job_id)
    rows = session.execute(select(JobEvent).where(JobEvent.job_id == job_id)
                           .order_by(JobEvent.id)).scalars().all()
    return PlainTextResponse("\n".join(format_log_line(ev) for ev in rows) + "\n")

