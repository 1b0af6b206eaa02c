"""``GET /scenes/{id}/view``: a browser viewer of the scene's latest model.

The model is the splat artifact of the scene's latest finished job under
``outputs/{scene_id}/`` (``point_cloud.ply``, else ``scene.spz`` / ``scene.splat``), shown with
its ``cameras.json`` and ``input.ply`` (SfM points) when present. The files are copied from the
artifact store into ``<data_dir>/viewer/{scene_id}/<version>/`` (so a later job replacing the
artifacts never changes a running viewer's input), a viser viewer is started for it on a free
port of 127.0.0.1 (one per scene, reused while the model is the same; see
:class:`splatforge.viewer.manager.ViewerManager`) and the request is redirected (307) to the
service's signed proxy of it (:mod:`.viewer_proxy`): the viewer is reachable only through the
API key.
Viewers with no browser connected and no request for ``SPLATFORGE_VIEWER_IDLE_SECONDS``
(default 600) are stopped.

Settings (:class:`~splatforge.service.settings.ServiceSettings`, read once at start-up):
``SPLATFORGE_VIEWER_IDLE_SECONDS``, ``SPLATFORGE_VIEWER_MAX_SPLATS`` (display budget per
model).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from ..viewer.data import DEFAULT_MAX_SPLATS
from ..viewer.manager import ViewerManager
from ..jobs.manifest import MODEL_ARTIFACTS, model_key
from .db import Job, Scene, session_scope
from .deps import SettingsDep, StoreDep
from .viewer_proxy import make_token, viewer_secret
from .store import SCENE_ID_RE, outputs_prefix

router = APIRouter(tags=["viewer"])

#: Artifacts copied beside the model when present.
EXTRA_ARTIFACTS = ("cameras.json", "input.ply")

_manager_lock = threading.Lock()


def viewer_manager(app: Any) -> ViewerManager:
    """The app's :class:`ViewerManager` (``app.state.viewer_manager``), made on first use from
    the service settings (validated once at start-up, :mod:`splatforge.service.settings`)."""
    with _manager_lock:
        manager = getattr(app.state, "viewer_manager", None)
        if manager is None:
            settings = app.state.settings
            manager = ViewerManager(idle_seconds=settings.viewer_idle_seconds,
                                    host="127.0.0.1",
                                    max_splats=settings.viewer_max_splats or DEFAULT_MAX_SPLATS)
            app.state.viewer_manager = manager
        return manager


def _fetch_model(store: Any, scene_id: str, cache_root: Path) -> tuple[Path, str]:
    """Copy the scene's model artifacts into ``cache_root/<version>/``; returns (model file,
    version). 404 when the scene has no model artifact."""
    prefix = outputs_prefix(scene_id)
    objects = {o.key[len(prefix):]: o for o in store.list(prefix)}
    key = model_key(set(objects))
    if key is None:
        raise HTTPException(404, f"scene {scene_id!r} has no trained model yet (no "
                                 f"{' / '.join(MODEL_ARTIFACTS)} artifact); start a job and "
                                 "wait for it to succeed")
    name = key.rsplit("/", 1)[-1]
    tag = "|".join(f"{n}:{objects[n].size}:{objects[n].mtime}"
                   for n in (key, *EXTRA_ARTIFACTS) if n in objects)
    version = hashlib.sha256(tag.encode()).hexdigest()[:16]
    dest = cache_root / version
    if not (dest / name).is_file():
        tmp = cache_root / f".{version}.tmp{os.getpid()}.{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        store.get_file(prefix + key, tmp / name)
        for n in EXTRA_ARTIFACTS:
            if n in objects:
                store.get_file(prefix + n, tmp / n)
        try:
            tmp.rename(dest)  # complete or absent
        except OSError:  # another request made it first
            shutil.rmtree(tmp, ignore_errors=True)
    for old in cache_root.iterdir():  # earlier models of this scene
        if old.name != version and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return dest / name, version


@router.get("/scenes/{scene_id}/view", status_code=307,
            responses={307: {"description": "redirect to the scene's viewer"},
                       404: {"description": "unknown scene, or no trained model yet"}})
def view_scene(request: Request, scene_id: str, settings: SettingsDep,
               store: StoreDep) -> RedirectResponse:
    """Open a browser viewer of the scene's latest model: started on demand (one per scene,
    reused), stopped when idle; answers 307 to the viewer's URL."""
    from ..errors import SplatforgeError

    if not SCENE_ID_RE.match(scene_id):
        raise HTTPException(404, f"scene {scene_id!r} not found")
    with session_scope(settings) as s:
        known = s.get(Scene, scene_id) is not None
        job = s.execute(select(Job).where(Job.scene_id == scene_id, Job.status == "succeeded")
                        .order_by(Job.finished_at.desc()).limit(1)).scalars().first()
        job_id = job.id if job is not None else None
    if not known and not store.list(outputs_prefix(scene_id)):
        raise HTTPException(404, f"scene {scene_id!r} not found")
    cache_root = Path(settings.data_dir) / "viewer" / scene_id
    cache_root.mkdir(parents=True, exist_ok=True)
    path, version = _fetch_model(store, scene_id, cache_root)
    manager = viewer_manager(request.app)
    try:
        mv = manager.get_or_start(scene_id, path, version=f"{job_id}:{version}")
    except SplatforgeError as e:
        raise HTTPException(422, f"the scene's model cannot be shown: {e}") from e
    del mv  # reached through the service's proxy, never on its own port
    token = make_token(viewer_secret(request.app), scene_id)
    return RedirectResponse(f"/scenes/{scene_id}/viewer/?token={token}", status_code=307)
