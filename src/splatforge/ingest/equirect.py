"""360-degree (equirectangular) frames resampled into pinhole views that share one pose.

An equirectangular image maps longitude to columns and latitude to rows. With OpenCV camera
axes for the 360 camera (x right, y down, z forward), the direction of longitude ``lon`` and
latitude ``lat`` (radians, ``lat`` positive up) is::

    d = (cos(lat) sin(lon), -sin(lat), cos(lat) cos(lon))

and pixel ``(u, v)`` of a ``W x H`` image (pixel centres at +0.5) has
``lon = 2 pi ((u + 0.5) / W - 0.5)``, ``lat = pi (0.5 - (v + 0.5) / H)``: the centre column looks
along +z, the top row is straight up. Each pinhole view is a rotation ``R`` (``cam_from_rig``) of
that camera; its pixel ``(x, y)`` looks along ``R^T K^-1 (x + 0.5, y + 0.5, 1)``, which is
sampled bilinearly from the equirectangular image (longitude wraps around). Layouts:

* ``cube``: the six cube faces (front, right, back, left, up, down), 90 degree FOV each;
* ``ring``: ``num_views`` views evenly spaced in yaw around the horizon (overlapping when the
  FOV exceeds 360 / num_views) plus one up and one down view.

All views of a frame are one COLMAP rig frame (:mod:`splatforge.sfm.rig`): SfM estimates one
pose per 360 frame, and the known ``cam_from_rig`` rotations place its views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Width / height of an equirectangular image.
EQUIRECT_ASPECT = 2.0
#: Relative tolerance of the aspect-ratio check.
ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True)
class PinholeView:
    """One pinhole view of a 360 camera.

    Attributes:
        name: folder name of the view (``front``, ``yaw045``, ``up`` ...).
        cam_from_rig: [3, 3] float64 rotation from the 360 camera's axes to the view's
            (OpenCV axes); the views share the camera centre.
        size: width = height in pixels.
        fov_deg: horizontal = vertical field of view in degrees.
    """

    name: str
    cam_from_rig: np.ndarray
    size: int
    fov_deg: float

    @property
    def focal(self) -> float:
        """Focal length in pixels: ``size / 2 / tan(fov / 2)``."""
        return self.size / 2.0 / math.tan(math.radians(self.fov_deg) / 2.0)

    @property
    def K(self) -> np.ndarray:
        """[3, 3] intrinsics (principal point at the image centre)."""
        f, c = self.focal, self.size / 2.0
        return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


def is_equirect_size(width: int, height: int) -> bool:
    """True when ``width / height`` is 2 within :data:`ASPECT_TOLERANCE`."""
    return height > 0 and abs(width / height - EQUIRECT_ASPECT) <= ASPECT_TOLERANCE * 2.0


def yaw_pitch(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """[3, 3] ``cam_from_rig`` of a view turned ``yaw_deg`` to the right about the vertical
    axis, then ``pitch_deg`` up (OpenCV axes: y down)."""
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    # rig_from_cam = Ry(yaw) @ Rx(pitch): columns are the view's axes in rig coordinates.
    ry = np.array([[math.cos(y), 0.0, math.sin(y)], [0.0, 1.0, 0.0],
                   [-math.sin(y), 0.0, math.cos(y)]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(p), -math.sin(p)],
                   [0.0, math.sin(p), math.cos(p)]])
    return (ry @ rx).T


def make_views(layout: str = "cube", size: int = 512, fov_deg: float | None = None,
               num_views: int = 8) -> list[PinholeView]:
    """The pinhole views of a 360 camera.

    Args:
        layout: ``cube`` (six 90-degree faces) or ``ring`` (``num_views`` around the horizon
            plus up and down).
        size: view width = height in pixels.
        fov_deg: field of view (``cube``: must be None or 90; ``ring``: default 90).
        num_views: ``ring`` only: views around the horizon (3..36).

    Raises:
        ValueError: an unknown layout, or a FOV / count out of range.
    """
    if layout == "cube":
        if fov_deg not in (None, 90.0, 90):
            raise ValueError(f"the cube layout has 90-degree faces (got fov {fov_deg})")
        spec = [("front", 0, 0), ("right", 90, 0), ("back", 180, 0), ("left", 270, 0),
                ("up", 0, 90), ("down", 0, -90)]
        return [PinholeView(n, yaw_pitch(y, p), size, 90.0) for n, y, p in spec]
    if layout == "ring":
        fov = 90.0 if fov_deg is None else float(fov_deg)
        if not 30.0 <= fov <= 150.0:
            raise ValueError(f"fov must lie in [30, 150] degrees (got {fov})")
        if not 3 <= num_views <= 36:
            raise ValueError(f"num_views must lie in [3, 36] (got {num_views})")
        views = [PinholeView(f"yaw{round(360.0 * k / num_views):03d}",
                             yaw_pitch(360.0 * k / num_views, 0.0), size, fov)
                 for k in range(num_views)]
        views += [PinholeView("up", yaw_pitch(0, 90), size, fov),
                  PinholeView("down", yaw_pitch(0, -90), size, fov)]
        return views
    raise ValueError(f"unknown 360 layout {layout!r} (cube | ring)")


def view_directions(view: PinholeView) -> np.ndarray:
    """[size, size, 3] unit ray directions of the view's pixels in the 360 camera's axes."""
    s = view.size
    c = (np.arange(s, dtype=np.float64) + 0.5 - s / 2.0) / view.focal
    x, y = np.meshgrid(c, c)
    rays = np.stack([x, y, np.ones_like(x)], axis=-1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    return rays @ view.cam_from_rig  # R^T applied to row vectors


def directions_to_equirect(d: np.ndarray, width: int, height: int) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Pixel coordinates (u, v) (pixel centres at integers) of directions ``d`` [..., 3]."""
    lon = np.arctan2(d[..., 0], d[..., 2])
    lat = np.arcsin(np.clip(-d[..., 1], -1.0, 1.0))
    u = (lon / (2.0 * math.pi) + 0.5) * width - 0.5
    v = (0.5 - lat / math.pi) * height - 0.5
    return u, v


def sample_bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` [H, W, C] at float pixel coordinates; columns wrap
    around (longitude), rows clamp (poles)."""
    h, w = image.shape[:2]
    u0 = np.floor(u).astype(np.int64)
    v0 = np.floor(v).astype(np.int64)
    fu = (u - u0)[..., None]
    fv = (v - v0)[..., None]
    img = image.astype(np.float32)
    x0, x1 = u0 % w, (u0 + 1) % w
    y0, y1 = np.clip(v0, 0, h - 1), np.clip(v0 + 1, 0, h - 1)
    top = img[y0, x0] * (1 - fu) + img[y0, x1] * fu
    bot = img[y1, x0] * (1 - fu) + img[y1, x1] * fu
    return top * (1 - fv) + bot * fv


def equirect_to_view(image: np.ndarray, view: PinholeView) -> np.ndarray:
    """Resample an equirectangular ``image`` [H, W, 3] uint8 into ``view`` [s, s, 3] uint8."""
    h, w = image.shape[:2]
    u, v = directions_to_equirect(view_directions(view), w, h)
    out = sample_bilinear(image, u, v)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def split_frame(path: Path, views: list[PinholeView], out_dir: Path) -> list[str]:
    """Write every view of the 360 image ``path`` as ``out_dir/<view.name>/<stem>.jpg``.

    Returns:
        The written names relative to ``out_dir`` (POSIX), in ``views`` order.

    Raises:
        InputError: the image cannot be read or is not 2:1.
    """
    from PIL import Image

    from ..errors import InputError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise InputError(path, f"cannot read the 360 image ({exc})") from None
    h, w = arr.shape[:2]
    if not is_equirect_size(w, h):
        raise InputError(path, f"{w}x{h} is not an equirectangular (2:1) image",
                         hint="every frame of a 360 capture must be 2:1")
    names = []
    for view in views:
        d = out_dir / view.name
        d.mkdir(parents=True, exist_ok=True)
        rel = f"{view.name}/{path.stem}.jpg"
        Image.fromarray(equirect_to_view(arr, view)).save(out_dir / rel, quality=95)
        names.append(rel)
    return names
