"""The web app at ``/``: server-rendered pages (Jinja2) over the job service's own API.

Pages (no data in them: every scene, job and artifact is fetched by the page's script from
the JSON API with the API key, which the sign-in form keeps in ``sessionStorage`` and sends
as ``Authorization: Bearer <key>`` on every call):

* ``/``: sign-in (when the server has an API key), a new scene (photos, a zip or a video by
  drag-and-drop or the file input; preset; main options) and the job list;
* ``/ui/jobs/{job_id}``: live progress from ``GET /jobs/{id}/events`` (stage, step k of n,
  ETA, loss/PSNR sparklines), the log, cancel, the error with its stage;
* ``/ui/scenes/{scene_id}``: the result: metrics, held-out renders, downloads, a WebGL view
  of ``scene.splat`` (``static/splat-view.js``), camera-path videos
  (``POST /scenes/{id}/renders``).

The pages and ``/ui/static/*`` need no API key (:func:`is_web_page`), since a browser cannot
send one when it navigates; they hold no data. Everything is local (no CDN).
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from .deps import get_settings

WEB_DIR = Path(__file__).parent / "web"
templates = Jinja2Templates(directory=str(WEB_DIR / "templates"))
router = APIRouter(tags=["web"], include_in_schema=False)

_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def is_web_page(path: str) -> bool:
    """True for the paths of the web app's pages and static files (served without the API
    key: they hold no data)."""
    return path in ("/", "/ui", "/ui/") or path.startswith(("/ui/jobs/", "/ui/scenes/",
                                                             "/ui/static/"))


@dataclass(frozen=True)
class FormField:
    """One option of the new-scene form: ``stage.name`` of the pipeline config, rendered
    from the pydantic field (type, bounds, choices, description)."""

    stage: str
    name: str
    label: str
    default: Any = None


#: The options of the new-scene form, in order. A field the config models lack on this
#: version is left out, so adding an option (appearance, masks ...) is one line here.
FORM_FIELDS = (
    FormField("train", "max_steps", "Max steps"),
    FormField("scene", "data_factor", "Data factor (downscale)"),
    FormField("train", "appearance", "Appearance model"),
    FormField("ingest", "masks", "Masks"),
)


def _stage_models() -> dict[str, Any]:
    from ..config import IngestConfig, SceneConfig, SfmConfig, TrainConfig

    return {"ingest": IngestConfig, "sfm": SfmConfig, "scene": SceneConfig,
            "train": TrainConfig}


def form_inputs(fields: tuple[FormField, ...] = FORM_FIELDS) -> list[dict[str, Any]]:
    """The form's inputs: ``{stage, name, id, label, help, kind, options, min, max,
    default}`` for each field the config has (``kind``: number | select | checkbox |
    text)."""
    models = _stage_models()
    out = []
    for f in fields:
        model = models[f.stage]
        info = model.model_fields.get(f.name)
        if info is None:
            continue
        ann = info.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        origin = typing.get_origin(ann)
        item: dict[str, Any] = {"stage": f.stage, "name": f.name, "id": f"opt-{f.stage}-{f.name}",
                                "label": f.label, "help": info.description or "",
                                "options": [], "min": None, "max": None,
                                "default": f.default if f.default is not None else
                                (None if info.default is None else info.default)}
        if origin is typing.Literal:
            item["kind"], item["options"] = "select", list(args)
        elif ann is bool:
            item["kind"] = "checkbox"
        elif ann in (int, float) or (args and args[0] in (int, float)):
            item["kind"] = "number"
            item["step"] = 1 if (ann is int or (args and args[0] is int)) else "any"
            for m in info.metadata:
                for attr, key in (("ge", "min"), ("gt", "min"), ("le", "max"), ("lt", "max")):
                    if getattr(m, attr, None) is not None:
                        item[key] = getattr(m, attr)
        else:
            item["kind"] = "text"
        if item["kind"] == "select" and origin is typing.Literal and args:
            item["value_type"] = "number" if isinstance(args[0], (int, float)) else "string"
        else:
            item["value_type"] = "number" if item["kind"] == "number" else (
                "boolean" if item["kind"] == "checkbox" else "string")
        out.append(item)
    return out


def _page(request: Request, name: str, **ctx: Any) -> HTMLResponse:
    from ..presets import PresetName

    settings = get_settings(request)
    return templates.TemplateResponse(request, name, {
        "auth_required": bool(settings.api_key), "presets": list(typing.get_args(PresetName)),
        **ctx})


@router.get("/", response_class=HTMLResponse)
@router.get("/ui/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    """Sign-in, a new scene, the job list."""
    return _page(request, "home.html", fields=form_inputs(), title="splatforge")


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    """One job, live."""
    if not _ID_RE.match(job_id):
        raise HTTPException(404, "no such job")
    return _page(request, "job.html", job_id=job_id, title=f"job {job_id[:8]}")


@router.get("/ui/scenes/{scene_id}", response_class=HTMLResponse)
def scene_page(request: Request, scene_id: str) -> HTMLResponse:
    """A scene's result: metrics, held-out renders, downloads, 3D view, videos."""
    if not _ID_RE.match(scene_id):
        raise HTTPException(404, "no such scene")
    return _page(request, "scene.html", scene_id=scene_id, title=f"scene {scene_id[:8]}")


def mount_web(app: FastAPI) -> None:
    """Add the pages and ``/ui/static`` to ``app``."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=str(WEB_DIR / "static")), name="web-static")
