"""The HTTP API's response bodies as pydantic models: what the routes answer (and the OpenAPI
document shows) and what :mod:`splatforge.client` reads. Only pydantic here, so a client
imports them without the server.

Times of a resource (``created_at``, ``started_at``, ``finished_at``, ``updated_at``) are one
type, :data:`Timestamp`: UTC, ISO 8601 with milliseconds (``2026-12-03T12:00:00.250Z``),
made by :func:`iso_time` alone. An event's ``time`` and an artifact's ``mtime`` stay seconds
since the epoch (floats), as the event stream has always sent them.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import BaseModel, Field

#: A resource's time: UTC, ISO 8601 with milliseconds, or null when it has not happened.
Timestamp = Annotated[str | None, Field(
    description="UTC, ISO 8601 with milliseconds (2026-12-03T12:00:00.250Z); null when it "
                "has not happened yet", examples=["2026-12-03T12:00:00.250Z"])]


def iso_time(t: float | None) -> str | None:
    """``t`` (seconds since the epoch) as a :data:`Timestamp`; None for None."""
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class JobProgress(BaseModel):
    """Where a job is in its current stage."""

    step: int | None = None
    total: int | None = None
    max_steps: int | None = Field(None, description="Training steps the job will run.")
    fraction: float | None = Field(None, description="step / total, 0 to 1.")


class JobError(BaseModel):
    """Why a job failed or was cancelled."""

    stage: str | None = None
    message: str | None = None


class JobOut(BaseModel):
    """``GET /jobs/{id}``: a job's status, progress, result and links."""

    id: str
    scene_id: str
    kind: str = Field(description="reconstruct | train_gsplat | render")
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    stage: str | None = None
    progress: JobProgress
    eta_s: float | None = Field(None, description="Seconds left (estimate).")
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: JobError | None = None
    cancel_requested: bool = False
    worker: str | None = None
    pid: int | None = None
    host: str | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="The request body.")
    created_at: Timestamp = None
    started_at: Timestamp = None
    finished_at: Timestamp = None
    updated_at: Timestamp = None
    view_url: str
    artifacts_url: str
    events_url: str
    log_url: str

    @classmethod
    def from_row(cls, job: Any) -> "JobOut":
        """The response for a ``jobs`` row (:class:`splatforge.service.db.Job`)."""
        error = None
        if job.error_message or job.error_stage:
            error = JobError(stage=job.error_stage, message=job.error_message)
        return cls(
            id=job.id, scene_id=job.scene_id, kind=job.kind, status=job.status,
            stage=job.stage,
            progress=JobProgress(step=job.step, total=job.total, max_steps=job.max_steps,
                                 fraction=job.fraction),
            eta_s=job.eta_s, metrics=job.metrics or {}, error=error,
            cancel_requested=bool(job.cancel_requested), worker=job.worker, pid=job.pid,
            host=job.host, config=job.config or {},
            created_at=iso_time(job.created_at), started_at=iso_time(job.started_at),
            finished_at=iso_time(job.finished_at), updated_at=iso_time(job.updated_at),
            view_url=f"/scenes/{job.scene_id}/view",
            artifacts_url=f"/scenes/{job.scene_id}/artifacts",
            events_url=f"/jobs/{job.id}/events", log_url=f"/jobs/{job.id}/log")


class JobCreated(JobOut):
    """``202`` of ``POST /scenes/{id}/jobs`` and ``POST /scenes/{id}/renders``: the job,
    with its id also as ``job_id``."""

    job_id: str


class JobSummary(BaseModel):
    """A job as a scene lists it."""

    id: str
    kind: str
    status: str
    created_at: Timestamp = None


class SceneOut(BaseModel):
    """A scene: its media and links."""

    id: str
    name: str | None = None
    created_at: Timestamp = None
    updated_at: Timestamp = None
    media_kind: str | None = Field(None, description="images | zip | dataset | video | "
                                                     "source_uri")
    media_files: int | None = None
    media_bytes: int | None = None
    source_uri: str | None = None
    artifacts_url: str
    view_url: str

    @classmethod
    def fields_of(cls, scene: Any) -> dict[str, Any]:
        """The fields of a ``scenes`` row (:class:`splatforge.service.db.Scene`)."""
        return dict(id=scene.id, name=scene.name, created_at=iso_time(scene.created_at),
                    updated_at=iso_time(scene.updated_at), media_kind=scene.media_kind,
                    media_files=scene.media_files, media_bytes=scene.media_bytes,
                    source_uri=scene.source_uri,
                    artifacts_url=f"/scenes/{scene.id}/artifacts",
                    view_url=f"/scenes/{scene.id}/view")


class SceneDetail(SceneOut):
    """``GET /scenes/{id}``: the scene and its jobs, oldest first."""

    jobs: list[JobSummary]


class SceneCreated(SceneOut):
    """``201`` of ``POST /scenes``: the scene, with its id also as ``scene_id``."""

    scene_id: str


class StoredFile(BaseModel):
    """One uploaded file (a zip member as ``zip:member``) and the name it is stored as."""

    name: str
    stored_as: str
    bytes: int


class MediaAdded(SceneOut):
    """``POST /scenes/{id}/media``: the scene after the upload and what was stored."""

    scene_id: str
    files: list[str] = Field(description="The stored names.")
    stored: list[StoredFile]


class Artifact(BaseModel):
    """One published file of a scene."""

    name: str
    size: int = Field(description="Bytes.")
    mtime: float | None = Field(None, description="Seconds since the epoch.")
    url: str


class ArtifactList(BaseModel):
    """``GET /scenes/{id}/artifacts``: the files of the scene's latest finished job."""

    scene_id: str
    job_id: str | None = None
    artifacts: list[Artifact]
