"""``splatforge render <model_dir> --path orbit|train|test -o video.mp4``: a camera-path video.

Camera paths (all in the scene frame the model was trained in, OpenCV camera axes):

* ``train`` / ``test``: the dataset's training (or held-out) cameras in name order as
  keyframes; positions interpolated with a centripetal-free uniform Catmull-Rom spline, rotations
  with quaternion slerp, frames spread evenly over the segments.
* ``orbit``: a circle around the cameras' look-at point (the point closest, in the least-squares
  sense, to every camera's optical axis; the median SfM point when that is ill-conditioned), at
  the cameras' mean horizontal distance and mean height, with the up direction estimated as the
  mean of the cameras' up vectors (``-y`` in OpenCV axes). Every frame looks at the centre.

Video: H.264 (``libx264``), ``yuv420p``, even width/height (odd sizes lose one pixel), written
with PyAV to a temporary file and renamed when complete. Progress: stage ``render``, counter
"frames".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .errors import ConfigError, InputError
from .eval import open_model, sh_degree_of
from .events import EventCallback, StageReporter
from .util import atomic_path

PathKind = Literal["orbit", "train", "test"]


# ---- rotations --------------------------------------------------------------------------

def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """[3, 3] rotation -> [4] unit quaternion wxyz (w >= 0)."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    q = np.array([w, x, y, z])
    return q if w >= 0 else -q


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """[4] wxyz quaternion -> [3, 3] rotation."""
    from scipy.spatial.transform import Rotation

    w, x, y, z = q
    return Rotation.from_quat([x, y, z, w]).as_matrix()


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical linear interpolation of wxyz quaternions (shortest arc), t in [0, 1]."""
    q0 = q0 / np.linalg.norm(q0)
    q1 = q1 / np.linalg.norm(q1)
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    th = np.arccos(np.clip(d, -1.0, 1.0))
    return (np.sin((1 - t) * th) * q0 + np.sin(t * th) * q1) / np.sin(th)


def catmull_rom(p0, p1, p2, p3, t: float) -> np.ndarray:
    """Uniform Catmull-Rom point between ``p1`` (t=0) and ``p2`` (t=1)."""
    t2, t3 = t * t, t * t * t
    return 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)


def interpolate_path(c2ws: np.ndarray, num_frames: int) -> np.ndarray:
    """Smooth path through keyframe camera-to-worlds.

    Args:
        c2ws: [M, 4, 4] keyframes (M >= 1), in order.
        num_frames: frames to produce (>= 1); the first and last are the first/last keyframe.

    Returns:
        [num_frames, 4, 4] camera-to-world matrices.
    """
    m = len(c2ws)
    if m == 0:
        raise ValueError("no keyframes")
    if m == 1 or num_frames == 1:
        return np.repeat(c2ws[:1], num_frames, axis=0)
    pos = c2ws[:, :3, 3]
    quats = [rotmat_to_quat(c[:3, :3]) for c in c2ws]
    out = np.zeros((num_frames, 4, 4))
    for f, u in enumerate(np.linspace(0.0, m - 1, num_frames)):
        i = min(int(np.floor(u)), m - 2)
        t = u - i
        p = catmull_rom(pos[max(i - 1, 0)], pos[i], pos[i + 1], pos[min(i + 2, m - 1)], t)
        out[f, :3, :3] = quat_to_rotmat(slerp(quats[i], quats[i + 1], t))
        out[f, :3, 3] = p
        out[f, 3, 3] = 1.0
    return out


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """[4, 4] camera-to-world (OpenCV axes: x right, y down, z forward) at ``position``
    looking at ``target`` with ``up`` pointing up in the image."""
    z = target - position
    z = z / np.linalg.norm(z)
    x = np.cross(-up, z)
    if np.linalg.norm(x) < 1e-9:  # looking along up: any right vector
        x = np.cross(np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, position
    return c2w


def estimate_up(c2ws: np.ndarray) -> np.ndarray:
    """Mean of the cameras' up vectors (``-y`` column of C2W in OpenCV axes), unit [3]."""
    up = -c2ws[:, :3, 1].mean(0)
    n = np.linalg.norm(up)
    return up / n if n > 1e-9 else np.array([0.0, 0.0, 1.0])


def look_at_point(c2ws: np.ndarray, points: np.ndarray | None = None) -> np.ndarray:
    """The point nearest (least squares) to every camera's optical axis; falls back to the
    median of ``points`` (or the mean camera position) when the axes are nearly parallel."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c in c2ws:
        d = c[:3, 2] / np.linalg.norm(c[:3, 2])
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c[:3, 3]
    if np.linalg.cond(A) < 1e6:
        return np.linalg.solve(A, b)
    if points is not None and len(points):
        return np.median(points, axis=0)
    return c2ws[:, :3, 3].mean(0)


def orbit_path(c2ws: np.ndarray, num_frames: int, points: np.ndarray | None = None
               ) -> np.ndarray:
    """[num_frames, 4, 4] camera-to-worlds on a circle around the training cameras (see the
    module docstring); one full turn, starting near the first camera."""
    up = estimate_up(c2ws)
    center = look_at_point(c2ws, points)
    rel = c2ws[:, :3, 3] - center
    heights = rel @ up
    horiz = rel - np.outer(heights, up)
    radius = float(np.linalg.norm(horiz, axis=1).mean())
    height = float(heights.mean())
    e1 = horiz[0] / max(np.linalg.norm(horiz[0]), 1e-12)
    if np.linalg.norm(horiz[0]) < 1e-9:
        e1 = np.cross(up, [1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    out = []
    for a in np.linspace(0.0, 2 * np.pi, num_frames, endpoint=False):
        pos = center + height * up + radius * (np.cos(a) * e1 + np.sin(a) * e2)
        out.append(look_at(pos, center, up))
    return np.stack(out)


def camera_path(scene: Any, kind: str, num_frames: int) -> np.ndarray:
    """[num_frames, 4, 4] camera-to-worlds of path ``kind`` through ``scene`` (scene frame).

    Raises:
        ConfigError: unknown ``kind``, or ``test`` on a scene without held-out views.
    """
    if kind == "orbit":
        idx = list(range(len(scene.images)))
    elif kind == "train":
        idx = list(scene.train_indices)
    elif kind == "test":
        idx = list(scene.test_indices)
        if not idx:
            raise ConfigError("path: 'test' but the dataset has no held-out views")
    else:
        raise ConfigError(f"path: unknown path {kind!r} (allowed: orbit, train, test)")
    idx = sorted(idx, key=lambda i: scene.images[i].name)
    c2ws = np.stack([np.linalg.inv(scene.images[i].viewmat) for i in idx])
    if kind == "orbit":
        return orbit_path(c2ws, num_frames, scene.points)
    return interpolate_path(c2ws, num_frames)


def write_video(path: str | Path, frames, width: int, height: int, fps: float = 30.0,
                crf: int = 20) -> Path:
    """Encode an iterable of [H, W, 3] uint8 frames as H.264/yuv420p with PyAV (atomically).

    Raises:
        ValueError: odd ``width``/``height`` (yuv420p needs even sizes).
    """
    import fractions

    import av

    if width % 2 or height % 2:
        raise ValueError(f"video size must be even, got {width}x{height}")
    path = Path(path)
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w")
        try:
            stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            for arr in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()
    return path


@torch.no_grad()
def render_frames(params: dict[str, torch.Tensor], c2ws: np.ndarray, K: np.ndarray,
                  width: int, height: int, *, sh_degree: int,
                  background: tuple[float, float, float] | np.ndarray, device: torch.device,
                  backend: str, antialiased: bool = False,
                  reporter: StageReporter | None = None):
    """Render splats along a camera path, one frame at a time (a generator).

    Args:
        params: raw splats on ``device``: ``means [N, 3]``, ``quats [N, 4]`` (wxyz),
            ``scales [N, 3]`` (log), ``opacities [N]`` (logit), ``sh0 [N, 1, 3]``,
            ``shN [N, K-1, 3]``, in the frame of ``c2ws``.
        c2ws: [F, 4, 4] camera-to-worlds (OpenCV axes).
        K: [3, 3] intrinsics (pixels) for a ``width`` x ``height`` image.
        sh_degree: SH degree of ``params``. background: RGB in [0, 1] behind the splats.
        backend: rasterizer backend (``gsplat`` | ``torch``). antialiased: gsplat's
            antialiased mode (as trained).
        reporter: gets ``step(k)`` after frame k (1-based).

    Yields:
        [height, width, 3] uint8 RGB frames.
    """
    from .raster import rasterize

    Kt = torch.as_tensor(np.asarray(K, np.float64), dtype=torch.float32, device=device)[None]
    bg = torch.as_tensor(np.asarray(background, np.float64), dtype=torch.float32,
                         device=device)
    colors = torch.cat([params["sh0"], params["shN"]], dim=1)
    scales = torch.exp(params["scales"])
    opac = torch.sigmoid(params["opacities"])
    for k, c2w in enumerate(c2ws, 1):
        vm = torch.as_tensor(np.linalg.inv(c2w), dtype=torch.float32, device=device)[None]
        img, alpha, _ = rasterize(
            means=params["means"], quats=params["quats"], scales=scales, opacities=opac,
            colors=colors, viewmats=vm, Ks=Kt, width=width, height=height,
            sh_degree=sh_degree, rasterize_mode="antialiased" if antialiased else "classic",
            backend=backend)
        img = img + (1.0 - alpha) * bg.reshape(1, 1, 1, 3)
        arr = (img[0].clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        if reporter is not None:
            reporter.step(k)
        yield arr


def render_video(output: str | Path, params: dict[str, torch.Tensor], c2ws: np.ndarray,
                 Ks: np.ndarray, width: int, height: int, *, fps: float, sh_degree: int,
                 background: tuple[float, float, float] | np.ndarray,
                 antialiased: bool, device: torch.device, backend: str,
                 reporter: StageReporter | None = None) -> Path:
    """Render splats along a camera path into an H.264 video: the one renderer of
    ``splatforge render`` (:func:`run_render`) and of the service's render jobs.

    Args:
        output: the video file (written atomically, see :func:`write_video`).
        params: raw splats on ``device`` (see :func:`render_frames`), in the frame of
            ``c2ws``.
        c2ws: [F, 4, 4] camera-to-worlds (OpenCV axes), F >= 1.
        Ks: [3, 3] intrinsics shared by every frame, or [F, 3, 3] one per frame (pixels,
            for a ``width`` x ``height`` image).
        width, height: frame size in pixels (even).
        fps: frames per second (> 0).
        sh_degree, background, device, backend: see :func:`render_frames`.
        antialiased: gsplat's antialiased mode; pass what the model was trained with
            (``TrainConfig.antialiased``, the ``quality`` preset), or it renders too sharp.
        reporter: gets ``step(k)`` after frame k (1-based).

    Returns:
        ``output`` as a Path.

    Raises:
        ValueError: no frames, odd ``width``/``height``, or ``Ks`` of another length.
    """
    c2ws = np.asarray(c2ws, np.float64)
    Ks = np.asarray(Ks, np.float64)
    if len(c2ws) == 0:
        raise ValueError("a video needs at least one camera")
    if Ks.ndim == 3 and len(Ks) != len(c2ws):
        raise ValueError(f"{len(Ks)} intrinsics for {len(c2ws)} cameras")
    opts = dict(sh_degree=sh_degree, background=background, device=device, backend=backend,
                antialiased=antialiased)
    if Ks.ndim == 2 or np.allclose(Ks, Ks[:1]):
        frames = render_frames(params, c2ws, Ks.reshape(-1, 3, 3)[0], width, height,
                               reporter=reporter, **opts)
    else:  # cameras with their own intrinsics: one K per frame
        def per_camera():
            for i in range(len(c2ws)):
                yield from render_frames(params, c2ws[i:i + 1], Ks[i], width, height, **opts)
                if reporter is not None:
                    reporter.step(i + 1)
        frames = per_camera()
    return write_video(output, frames, width, height, fps)


@torch.no_grad()
def run_render(model_dir: str | Path, output: str | Path, path: str = "orbit", *,
               frames: int | None = None, seconds: float | None = None, fps: float = 30.0,
               width: int | None = None, iteration: int | None = None, device: str = "auto",
               frames_between: int = 8, events: EventCallback | None = None
               ) -> dict[str, Any]:
    """Render a camera-path video of a trained model.

    Args:
        model_dir: the model folder (see :func:`splatforge.eval.read_model_info`).
        output: the video file (``.mp4``).
        path: ``orbit`` | ``train`` | ``test``.
        frames: number of frames. Default: ``seconds * fps`` when ``seconds`` is given;
            else ``frames_between`` frames per pair of keyframes for train/test
            (``(M - 1) * frames_between + 1``) and 8 s for orbit.
        seconds: video length (used when ``frames`` is None).
        frames_between: train/test paths without frames/seconds: frames per keyframe gap.
        fps: frames per second.
        width: output width in pixels (default: the first training image's width); the
            height keeps the aspect ratio; both rounded down to even numbers.
        iteration: which saved step to render (default the latest).

    Returns:
        ``{"path", "frames", "width", "height", "fps", "seconds", "output"}``.

    Raises:
        InputError: an unusable model folder. ConfigError: bad path/frames/fps values.
    """
    if fps <= 0:
        raise ConfigError(f"fps: must be > 0, got {fps}")
    if frames_between < 1:
        raise ConfigError(f"frames_between: must be >= 1, got {frames_between}")
    if frames is not None and frames < 1:
        raise ConfigError(f"frames: must be >= 1, got {frames}")
    output = Path(output)
    if output.suffix.lower() not in (".mp4", ".mov", ".mkv"):
        raise InputError(output, "video output must end in .mp4, .mov or .mkv")
    rep = StageReporter("render", events)
    t0 = time.monotonic()
    rep.started(f"rendering {path} path of {model_dir} -> {output}")
    info, scene, params, dev, backend = open_model(model_dir, iteration, events, device)
    sh = sh_degree_of(params)
    ref = scene.images[scene.train_indices[0] if scene.train_indices else 0]
    W0, H0 = ref.width, ref.height
    s = (width / W0) if width else 1.0
    W = max(2, int(round(W0 * s)) // 2 * 2)
    H = max(2, int(round(H0 * s)) // 2 * 2)
    K = np.asarray(ref.K, np.float64).copy()
    K[0] *= W / W0
    K[1] *= H / H0
    if frames is None:
        if seconds is None and path in ("train", "test"):
            m = len(scene.train_indices if path == "train" else scene.test_indices)
            frames = max(m - 1, 1) * frames_between + 1
        else:
            frames = int(round((seconds if seconds is not None else 8.0) * fps))
    if frames < 1:
        raise ConfigError(f"frames: must be >= 1, got {frames}")
    c2ws = camera_path(scene, path, frames)
    rep.start_steps("frames", frames)
    render_video(output, params, c2ws, K, W, H, fps=fps, sh_degree=sh,
                 background=scene.background, antialiased=info.antialiased, device=dev,
                 backend=backend, reporter=rep)
    out = {"path": path, "frames": frames, "width": W, "height": H, "fps": fps,
           "seconds": round(time.monotonic() - t0, 3), "output": str(output)}
    rep.finished(f"{frames} frames {W}x{H} -> {output}", **out)
    return out
