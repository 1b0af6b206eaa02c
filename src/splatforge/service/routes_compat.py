"""The baking-server routes an existing frontend already calls.

* ``POST /scene/{id}/train_gsplat?data_factor=1|2|4|8&max_steps=30000`` trains on the scene's
  COLMAP model (``colmap/{id}/`` in the artifact store, or a COLMAP dataset uploaded as
  media) and images (beside the model, or the scene's media): 202 with the job id; 404 when
  the scene has no COLMAP model, 400 when images are missing. A scene id the database does
  not know yet but the store holds (``colmap/{id}/`` written by another service) is adopted.
* ``GET /scene/{id}/train_gsplat/status`` -> ``not_started`` | ``processing`` (progress) |
  ``complete`` (model size, config, download_url) | ``failed`` (error).
* ``GET /scene/{id}/gsplat/model`` -> the PLY as ``{id}_gaussian_splatting.ply``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from ..ingest import IMAGE_EXTENSIONS
from ..jobs.manifest import MODEL_NAME, model_key
from ..config import SceneConfig, TrainConfig
from ..reconstruct_config import ReconstructConfig
from .db import Job, Scene, session_scope
from .deps import ExecutorDep, SessionDep, SettingsDep, StoreDep
from .lifecycle import create_job
from .schemas import JobOut
from .routes_scenes import serve_object
from .store import SCENE_ID_RE, colmap_prefix, media_prefix, outputs_prefix

router = APIRouter(tags=["compat"])



def _check_id(scene_id: str) -> None:
    if not SCENE_ID_RE.match(scene_id):
        raise HTTPException(400, f"invalid scene id {scene_id!r}")


def _model_and_images(store: Any, scene_id: str, source_uri: str | None,
                      settings: Any) -> tuple[bool, bool]:
    """(has a COLMAP model, has images) from ``colmap/{id}/``, ``media/{id}/`` and the
    scene's ``source_uri``."""
    keys = [o.key for o in store.list(colmap_prefix(scene_id))]
    keys += [o.key for o in store.list(media_prefix(scene_id))]
    if source_uri and source_uri.startswith("s3://"):
        from .store import open_source

        try:
            keys += [o.key for o in open_source(source_uri, settings).list("")]
        except Exception as e:  # noqa: BLE001  (a missing bucket, no access: the client's)
            code = getattr(e, "response", {}).get("Error", {}).get("Code") if hasattr(
                e, "response") else None
            raise HTTPException(400, f"source_uri {source_uri!r} cannot be listed ("
                                     f"{code or type(e).__name__})") from None
    elif source_uri:
        root = Path(source_uri)
        if root.is_dir():
            keys += [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    has_model = any(k.rsplit("/", 1)[-1] in ("cameras.bin", "cameras.txt") for k in keys)
    has_images = any(k.lower().endswith(IMAGE_EXTENSIONS) for k in keys)
    return has_model, has_images


@router.post("/scene/{scene_id}/train_gsplat", status_code=202)
def train_gsplat(scene_id: str, settings: SettingsDep, store: StoreDep, executor: ExecutorDep,
                 data_factor: int = Query(1, description="Image downsampling: 1 | 2 | 4 | 8"),
                 max_steps: int = Query(30_000, ge=1, le=10_000_000)) -> JSONResponse:
    """Train Gaussian splats on the scene's COLMAP model (the default preset)."""
    _check_id(scene_id)
    if data_factor not in (1, 2, 4, 8):
        raise HTTPException(422, [{"loc": ["query", "data_factor"], "type": "literal_error",
                                   "msg": f"data_factor must be 1, 2, 4 or 8 (got {data_factor})"}])
    with session_scope(settings) as s:
        scene = s.get(Scene, scene_id)
        source_uri = scene.source_uri if scene is not None else None
    has_model, has_images = _model_and_images(store, scene_id, source_uri, settings)
    with session_scope(settings) as s:
        scene = s.get(Scene, scene_id)
        if not has_model:
            raise HTTPException(404, f"scene {scene_id!r} has no COLMAP model "
                                     f"(colmap/{scene_id}/sparse/0)")
        if not has_images:
            raise HTTPException(400, f"scene {scene_id!r} has a COLMAP model but no images")
        if scene is None:
            s.add(Scene(id=scene_id, name=f"{scene_id} (compat)", media_kind="colmap",
                        updated_at=time.time()))
    config = ReconstructConfig(scene=SceneConfig(data_factor=data_factor),
                               train=TrainConfig(max_steps=max_steps)).given()
    job_id = create_job(settings, executor, scene_id, config, max_steps, kind="train_gsplat")
    return JSONResponse({"scene_id": scene_id, "job_id": job_id, "status": "processing",
                         "status_url": f"/scene/{scene_id}/train_gsplat/status"},
                        status_code=202)


@router.get("/scene/{scene_id}/train_gsplat/status")
def train_gsplat_status(scene_id: str, session: SessionDep, store: StoreDep
                        ) -> dict[str, Any]:
    """``not_started`` | ``processing`` | ``complete`` | ``failed`` for the latest job."""
    _check_id(scene_id)
    job = session.execute(select(Job).where(Job.scene_id == scene_id)
                          .order_by(Job.created_at.desc()).limit(1)).scalars().first()
    if job is None:
        return {"scene_id": scene_id, "status": "not_started"}
    j = JobOut.from_row(job)
    base = {"scene_id": scene_id, "job_id": j.id}
    if j.status in ("queued", "running"):
        return {**base, "status": "processing", "stage": j.stage,
                "progress": j.progress.model_dump(), "eta_s": j.eta_s}
    if j.status == "succeeded":
        key = _model_object(store, scene_id)
        size = store.size(key) if key is not None else None
        return {**base, "status": "complete", "model_size": size, "config": j.config,
                "metrics": j.metrics, "download_url": f"/scene/{scene_id}/gsplat/model"}
    return {**base, "status": "failed",
            "error": (j.error.message if j.error else None) or j.status}


@router.api_route("/scene/{scene_id}/gsplat/model", methods=["GET", "HEAD"])
def gsplat_model(request: Request, scene_id: str, store: StoreDep) -> Response:
    """The trained PLY, as ``{id}_gaussian_splatting.ply``."""
    _check_id(scene_id)
    key = _model_object(store, scene_id) or outputs_prefix(scene_id) + MODEL_NAME
    return serve_object(request, store, key, f"{scene_id}_gaussian_splatting.ply")


def _model_object(store: Any, scene_id: str) -> str | None:
    """The key of the scene's PLY model (:func:`splatforge.jobs.manifest.model_key` over
    ``outputs/{id}/``: ``point_cloud.ply``, else the last ``point_cloud/iteration_N/``)."""
    prefix = outputs_prefix(scene_id)
    names = [o.key[len(prefix):] for o in store.list(prefix)]
    name = model_key([n for n in names if n.endswith(".ply") and n != "input.ply"])
    return prefix + name if name else None
