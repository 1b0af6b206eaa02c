"""Camera-path videos of a trained scene, as jobs of their own (kind ``render``): the
request (:class:`RenderRequest`) and the job (:func:`run_render_job`). The route,
``POST /scenes/{id}/renders``, is :mod:`.routes_renders`.

* The job is an ordinary row of ``jobs`` (``kind = "render"``, the request in its ``config``
  JSON under ``"render"``), so ``GET /jobs/{id}``, its SSE events, log and cancel work as for
  a reconstruction.
* The job (:func:`run_render_job`, called by the runner) reads only the scene's published
  artifacts (``point_cloud.ply``, ``cameras.json``, ``metrics.json``, ``cfg_args``,
  ``config.json``), so it runs on any worker and any artifact store, renders the MP4 with
  :func:`splatforge.render.render_video` (the renderer of ``splatforge render``, in the mode
  the model was trained with: antialiased or classic), then publishes it as the artifact
  ``videos/{job_id}.mp4``.

Frames are rendered in the source frame of the published files (PLY and ``cameras.json``:
COLMAP's world, OpenCV camera axes). Camera paths: ``orbit`` (:func:`splatforge.render.orbit_path`
around every camera), ``train`` / ``test`` (:func:`splatforge.render.interpolate_path` through
the training or held-out cameras in name order), or an explicit list of cameras, one frame
each. ``cameras.json`` carries no principal point: the image centre is used (as INRIA's
readers do for ``PINHOLE`` models undistorted by COLMAP).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .store import get_store, outputs_prefix

#: The job kind of a render job (``jobs.kind``).
RENDER_KIND = "render"
#: Artifacts a render job reads (``outputs/{scene_id}/<name>``); the first two are required.
MODEL_ARTIFACTS = ("point_cloud.ply", "cameras.json", "metrics.json", "cfg_args",
                   "config.json")
#: Orbit videos without ``frames`` last this many seconds.
ORBIT_SECONDS = 8.0
#: The most frames one render job makes.
MAX_FRAMES = 3000


class PathCamera(BaseModel):
    """One camera of an explicit path (pixels; OpenCV axes: x right, y down, z forward)."""

    model_config = ConfigDict(extra="forbid")

    camtoworld: list[list[float]] = Field(
        ..., description="4x4 (or 3x4) camera-to-world matrix in the scene's source frame.")
    fx: float = Field(..., gt=0, description="Focal length x (pixels).")
    fy: float = Field(..., gt=0, description="Focal length y (pixels).")
    cx: float | None = Field(None, description="Principal point x (default width / 2).")
    cy: float | None = Field(None, description="Principal point y (default height / 2).")
    width: int = Field(..., ge=2, le=7680, description="Image width (pixels).")
    height: int = Field(..., ge=2, le=7680, description="Image height (pixels).")

    @field_validator("camtoworld")
    @classmethod
    def _matrix(cls, m: list[list[float]]) -> list[list[float]]:
        a = np.asarray(m, dtype=np.float64)
        if a.shape not in ((4, 4), (3, 4)):
            raise ValueError(f"must be 4x4 or 3x4, got {'x'.join(map(str, a.shape))}")
        if not np.isfinite(a).all():
            raise ValueError("holds NaN or Inf")
        if a.shape == (4, 4) and not np.allclose(a[3], [0, 0, 0, 1], atol=1e-6):
            raise ValueError("the last row must be [0, 0, 0, 1]")
        R = a[:3, :3]
        if not np.allclose(R.T @ R, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
            raise ValueError("the 3x3 block is not a rotation (orthonormal, det +1)")
        return a[:3].tolist() + [[0.0, 0.0, 0.0, 1.0]]


class RenderRequest(BaseModel):
    """A camera-path video of the scene's trained model."""

    model_config = ConfigDict(extra="forbid")

    path: Literal["orbit", "train", "test"] | list[PathCamera] = Field(
        "orbit", description="orbit | train | test, or a list of cameras (one frame each).")
    frames: int | None = Field(
        None, ge=1, le=MAX_FRAMES, description="Frames (orbit default: 8 s at fps; "
                                               "train/test default: frames_between per "
                                               "keyframe gap).")
    frames_between: int = Field(8, ge=1, le=120,
                                description="train/test: frames per pair of keyframes.")
    fps: float = Field(30.0, ge=0.01, le=120,
                       description="Frames per second (0.01 to 120; H.264 stores the rate "
                                   "as a fraction with a denominator of at most 1001).")
    width: int | None = Field(None, ge=16, le=3840,
                              description="Video width in pixels (default: as trained); "
                                          "the height keeps the aspect ratio.")

    @field_validator("path")
    @classmethod
    def _cameras(cls, path: Any) -> Any:
        if isinstance(path, list):
            if not path:
                raise ValueError("an empty camera list")
            if len(path) > 3000:
                raise ValueError(f"{len(path)} cameras: at most 3000")
            w, h = path[0].width, path[0].height
            for i, cam in enumerate(path):
                if (cam.width, cam.height) != (w, h):
                    raise ValueError(f"camera {i}: {cam.width}x{cam.height} differs from "
                                     f"camera 0's {w}x{h} (one video has one size)")
        return path

    @model_validator(mode="after")
    def _frame_count(self) -> "RenderRequest":
        n = self.frame_count()
        if n is not None and not 1 <= n <= MAX_FRAMES:
            raise ValueError(f"frames: an orbit of {ORBIT_SECONDS:g} s at fps {self.fps:g} has "
                             f"{n} frames; give fps or frames so that there are 1 to "
                             f"{MAX_FRAMES}")
        return self

    def frame_count(self) -> int | None:
        """Frames the video will have: ``frames``, the number of listed cameras, or an orbit
        of :data:`ORBIT_SECONDS` at ``fps``; None for ``train`` / ``test`` without
        ``frames`` (``frames_between`` per keyframe gap: known once the model's cameras
        are)."""
        if isinstance(self.path, list):
            return len(self.path)
        if self.frames is not None:
            return self.frames
        if self.path == "orbit":
            return int(round(ORBIT_SECONDS * self.fps))
        return None


# --------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------

def read_cameras_json(path: Path) -> list[dict[str, Any]]:
    """``cameras.json`` entries with ``c2w`` [4, 4] added (see
    :func:`splatforge.export.model_dir.camera_entries` for the layout).

    Raises:
        InputError: not a JSON list of INRIA camera entries.
    """
    from ..errors import InputError

    try:
        entries = json.loads(path.read_text())
        out = []
        for e in entries:
            c2w = np.eye(4)
            c2w[:3, :3] = np.asarray(e["rotation"], np.float64)
            c2w[:3, 3] = np.asarray(e["position"], np.float64)
            out.append({**e, "c2w": c2w})
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(path, f"not an INRIA cameras.json ({type(e).__name__}: {e})") from None
    if not out:
        raise InputError(path, "no cameras")
    return out


def heldout_names(metrics_path: Path) -> set[str]:
    """Stems of the held-out views evaluated in ``metrics.json`` (empty when absent)."""
    if not metrics_path.is_file():
        return set()
    try:
        images = json.loads(metrics_path.read_text()).get("eval", {}).get("images") or []
        return {Path(str(im["name"])).stem for im in images if isinstance(im, dict)
                and "name" in im}
    except (ValueError, AttributeError):
        return set()


def plan_path(req: RenderRequest, cameras: list[dict[str, Any]], test: set[str],
              points: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(c2ws [F, 4, 4], Ks [F, 3, 3], width, height)`` of the request's camera path.

    Raises:
        ConfigError: ``test`` without held-out views.
    """
    from ..errors import ConfigError
    from ..render import interpolate_path, orbit_path

    if isinstance(req.path, list):
        c2ws = np.stack([np.asarray(c.camtoworld, np.float64) for c in req.path])
        W0, H0 = req.path[0].width, req.path[0].height
        Ks = np.stack([np.array([[c.fx, 0, W0 / 2 if c.cx is None else c.cx],
                                 [0, c.fy, H0 / 2 if c.cy is None else c.cy],
                                 [0, 0, 1.0]]) for c in req.path])
    else:
        train = [c for c in cameras if c["img_name"] not in test]
        ref = (train or cameras)[0]
        W0, H0 = int(ref["width"]), int(ref["height"])
        K = np.array([[ref["fx"], 0, W0 / 2], [0, ref["fy"], H0 / 2], [0, 0, 1.0]])
        if req.path == "orbit":
            keys = sorted(cameras, key=lambda c: c["img_name"])
        else:
            keys = sorted(train if req.path == "train" else
                          [c for c in cameras if c["img_name"] in test],
                          key=lambda c: c["img_name"])
            if not keys:
                raise ConfigError(f"path: {req.path!r} but the model has no such cameras")
        key_c2ws = np.stack([c["c2w"] for c in keys])
        frames = req.frame_count()
        if frames is None:
            frames = max(len(keys) - 1, 1) * req.frames_between + 1
        if req.path == "orbit":
            c2ws = orbit_path(key_c2ws, frames, points)
        else:
            c2ws = interpolate_path(key_c2ws, frames)
        Ks = np.repeat(K[None], len(c2ws), axis=0)
    s = (req.width / W0) if req.width else 1.0
    W = max(2, int(round(W0 * s)) // 2 * 2)
    H = max(2, int(round(H0 * s)) // 2 * 2)
    Ks = Ks.copy()
    Ks[:, 0] *= W / W0
    Ks[:, 1] *= H / H0
    return c2ws, Ks, W, H


def run_render_job(run: Any, info: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run render job ``run.job_id`` (the runner's job sink: ``set_stage``,
    ``stage_finished``, ``update_job``, ``on_event``, ``metrics``): fetch
    the model, render, publish ``videos/{job_id}.mp4``; returns the video record (also merged
    into the job's metrics).

    Raises:
        InputError: the model's artifacts are missing or unreadable. ConfigError: a bad
            request (``test`` without held-out views).
    """
    import torch

    from ..errors import InputError
    from ..events import StageReporter
    from ..export.model_dir import ModelDir, parse_cfg_args
    from ..export.ply import read_ply, sh_degree_of
    from ..render import render_video
    from ..train.trainer import resolve_backend, resolve_device

    req = RenderRequest.model_validate((info.get("config") or {}).get("render") or {})
    scene_id = info["scene_id"]
    store = get_store(run.settings)
    prefix = outputs_prefix(scene_id)
    model = work / "model"
    model.mkdir(parents=True, exist_ok=True)
    run.set_stage("fetch", "fetching the trained model")
    for name in MODEL_ARTIFACTS:
        if store.exists(prefix + name):
            store.get_file(prefix + name, model / name)
        elif name in MODEL_ARTIFACTS[:2]:
            raise InputError(name, "the scene has no trained model (artifact missing)",
                             "run a reconstruction job first")
    splats = read_ply(model / "point_cloud.ply", run.on_event)
    files = ModelDir(model)
    cameras = read_cameras_json(files.cameras)
    white = False
    if files.cfg_args.is_file():
        white = bool(parse_cfg_args(files.cfg_args).get("white_background", False))
    antialiased = bool(files.train_options().get("antialiased", False))
    run.stage_finished("fetch", f"{len(splats['means'])} Gaussians, {len(cameras)} cameras")

    c2ws, Ks, W, H = plan_path(req, cameras, heldout_names(files.metrics),
                               splats["means"])
    rep = StageReporter("render", run.on_event)
    label = "cameras" if isinstance(req.path, list) else req.path
    rep.started(f"rendering a {label} path: {len(c2ws)} frames at {W}x{H}")
    dev = resolve_device("auto")
    backend = resolve_backend("auto", dev)
    params = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=dev)
              for k, v in splats.items()}
    rep.start_steps("frames", len(c2ws))
    video = work / f"{run.job_id}.mp4"
    render_video(video, params, c2ws, Ks, W, H, fps=req.fps, sh_degree=sh_degree_of(splats),
                 background=(1.0, 1.0, 1.0) if white else (0.0, 0.0, 0.0),
                 antialiased=antialiased, device=dev, backend=backend, reporter=rep)
    seconds = len(c2ws) / req.fps
    rep.finished(f"{len(c2ws)} frames {W}x{H}, {seconds:.1f} s of video")

    run.set_stage("upload", "uploading the video")
    name = f"videos/{run.job_id}.mp4"
    store.put_file(prefix + name, video)
    record = {"video": name, "frames": len(c2ws), "width": W, "height": H, "fps": req.fps,
              "video_seconds": round(seconds, 3), "path": label,
              "video_bytes": video.stat().st_size}
    run.metrics.update(record)
    run.update_job(metrics=dict(run.metrics), step=len(c2ws), total=len(c2ws))
    run.stage_finished("upload", f"{name} ({record['video_bytes']} bytes)")
    return record

