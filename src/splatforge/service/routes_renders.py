"""``POST /scenes/{id}/renders``: start a camera-path video of a trained scene (a job of kind
``render``, run by :func:`.render_jobs.run_render_job`).

202 ``{"job_id": ...}``; a scene without a trained model -> 409; an unknown scene -> 404; a
bad camera list -> 422 naming the camera and the problem.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Response
from sqlalchemy import select

from .db import Job, session_scope
from .render_jobs import MODEL_ARTIFACTS, RENDER_KIND, RenderRequest
from .lifecycle import create_job
from .deps import ExecutorDep, SettingsDep, StoreDep
from .routes_jobs import job_created
from .routes_scenes import get_scene_or_404
from .schemas import JobCreated
from .store import outputs_prefix

router = APIRouter(tags=["renders"])


def _trained(settings: Any, store: Any, scene_id: str) -> Job | None:
    """The scene's latest succeeded reconstruction, when its model is published."""
    with session_scope(settings) as s:
        job = s.execute(select(Job).where(Job.scene_id == scene_id,
                                          Job.status == "succeeded",
                                          Job.kind != RENDER_KIND)
                        .order_by(Job.finished_at.desc()).limit(1)).scalars().first()
    prefix = outputs_prefix(scene_id)
    if job is None or not all(store.exists(prefix + n) for n in MODEL_ARTIFACTS[:2]):
        return None
    return job


@router.post("/scenes/{scene_id}/renders", status_code=202, response_model=JobCreated)
def start_render(scene_id: str, settings: SettingsDep, store: StoreDep, executor: ExecutorDep,
                 response: Response, body: RenderRequest | None = None) -> JobCreated:
    """Start a camera-path video of the scene's trained model; 202 with the job id. The MP4
    becomes the artifact ``videos/{job_id}.mp4`` (named in the job's ``metrics.video``)."""
    body = body or RenderRequest()
    with session_scope(settings) as s:
        get_scene_or_404(s, scene_id)
    if _trained(settings, store, scene_id) is None:
        raise HTTPException(409, f"scene {scene_id} has no trained model yet: run a job "
                                 "(POST /scenes/{id}/jobs) and wait for it to succeed")
    config = {"render": body.model_dump(mode="json", exclude_none=True)}
    return job_created(settings, response, create_job(
        settings, executor, scene_id, config, body.frame_count(), kind=RENDER_KIND))
