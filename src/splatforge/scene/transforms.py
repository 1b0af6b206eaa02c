"""``transforms.json`` readers: nerfstudio / instant-ngp, and Blender NeRF-synthetic.

Conventions (nerfstudio ``nerfstudio/data/dataparsers/nerfstudio_dataparser.py`` and
``blender_dataparser.py``, instant-ngp ``docs/nerf_dataset_tips.md``; read, not copied):

* ``transform_matrix`` is camera-to-world with OpenGL/Blender camera axes (x right, y up,
  z backwards). OpenCV axes (x right, y down, z forward) are obtained by negating the camera's
  y and z axes, ``c2w[:3, 1:3] *= -1``; the viewmat is then ``inv(c2w)``.
* Intrinsics ``fl_x, fl_y, cx, cy, w, h, k1, k2, k3, k4, p1, p2, camera_model`` sit at the
  top level and any frame may override them (nerfstudio). Without ``fl_x`` the focal length
  comes from the horizontal field of view: ``fx = 0.5 * w / tan(0.5 * camera_angle_x)``
  (``fy`` likewise from ``camera_angle_y``, else ``fy = fx``); ``cx, cy`` default to the image
  centre ``w / 2, h / 2``.
* Distortion ``k1 k2 p1 p2 (k3)`` is COLMAP's OPENCV (FULL_OPENCV with k3) model,
  ``camera_model: OPENCV_FISHEYE`` (or instant-ngp's ``is_fisheye``) uses ``k1..k4`` as COLMAP's
  OPENCV_FISHEYE. Such images are undistorted to PINHOLE later by the loader.
* Blender NeRF-synthetic: ``transforms_{train,test}.json`` with ``camera_angle_x`` only,
  ``file_path`` without extension (``./train/r_0`` -> ``./train/r_0.png``), RGBA images,
  the split given by the files (``transforms_val.json`` is not read).

Every malformed input raises :class:`splatforge.errors.InputError` naming the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..paths import join_inside
from .colmap import ColmapCamera
from .imageio import image_size
from .views import RawView

#: OpenGL/Blender camera axes -> OpenCV camera axes (negate y and z): c2w_cv = c2w_gl @ GL_TO_CV.
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])

_IMAGE_EXTS_TRIED = (".png", ".jpg", ".jpeg", ".JPG", ".PNG")


def load_json(path: Path) -> dict[str, Any]:
    """Parse a transforms file into a dict with a non-empty ``frames`` list.

    Raises:
        InputError: missing/unreadable file, invalid JSON (line and column given), not an
            object, or no ``frames``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot be read ({e})") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
                         ) from None
    if not isinstance(meta, dict):
        raise InputError(path, "expected a JSON object with a 'frames' list")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(path, "has no 'frames' (a non-empty list of posed images is needed)")
    return meta


def c2w_gl_to_viewmat(c2w: np.ndarray) -> np.ndarray:
    """[4, 4] camera-to-world in OpenGL axes -> [4, 4] world-to-camera in OpenCV axes."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape == (3, 4):
        c2w = np.vstack([c2w, [0.0, 0.0, 0.0, 1.0]])
    return np.linalg.inv(c2w @ GL_TO_CV)


def _frame_matrix(frame: dict, path: Path, idx: int) -> np.ndarray:
    try:
        m = np.array(frame["transform_matrix"], dtype=np.float64)
    except KeyError:
        raise InputError(path, f"frame {idx} has no 'transform_matrix'") from None
    except (TypeError, ValueError):
        raise InputError(path, f"frame {idx}: 'transform_matrix' is not a numeric matrix"
                         ) from None
    if m.shape not in ((4, 4), (3, 4)) or not np.isfinite(m).all():
        raise InputError(path, f"frame {idx}: 'transform_matrix' must be a finite 4x4 (or "
                               f"3x4) matrix, got shape {m.shape}")
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise InputError(path, f"frame {idx}: 'transform_matrix' is singular")
    return m


def _file_path(frame: dict, path: Path, idx: int) -> str:
    fp = frame.get("file_path")
    if not isinstance(fp, str) or not fp:
        raise InputError(path, f"frame {idx} has no 'file_path'")
    return fp


def _clean_name(file_path: str) -> str:
    p = file_path.replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def _resolve_image(base: Path, file_path: str) -> tuple[Path, str]:
    """(file, name): append an image extension when ``file_path`` has none (Blender)."""
    name = _clean_name(file_path)
    join_inside(base, name, "transforms file_path")
    p = base / name
    if p.suffix == "" and not p.exists():
        for ext in _IMAGE_EXTS_TRIED:
            if p.with_name(p.name + ext).exists():
                return p.with_name(p.name + ext), name + ext
        return p.with_name(p.name + ".png"), name + ".png"
    return p, name


def _num(v: Any, key: str, path: Path, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise InputError(path, f"{where}: '{key}' must be a number, got {v!r}") from None
    if not math.isfinite(x):
        raise InputError(path, f"{where}: '{key}' must be finite, got {v!r}")
    return x


def frame_camera(meta: dict, frame: dict, image_path: Path, json_path: Path, idx: int
                 ) -> ColmapCamera:
    """The (possibly distorted) camera of one frame as a COLMAP camera (id 0, set later).

    Per-frame keys override top-level ones. Width and height come from ``w``/``h`` or, when
    absent, from the image file's header.

    Raises:
        InputError: no focal length, non-numeric values, an unsupported ``camera_model``, or
            a k4 radial term on a perspective camera (no COLMAP equivalent).
    """
    where = f"frame {idx}"

    def get(key: str) -> Any:
        v = frame.get(key, meta.get(key))
        return None if v is None else _num(v, key, json_path, where)

    w, h = get("w"), get("h")
    if w is None or h is None:
        if not image_path.is_file():
            raise InputError(image_path, f"image file not found (listed in {json_path.name}, "
                                         f"{where})")
        w, h = image_size(image_path)
    w, h = int(round(w)), int(round(h))
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None:
        ax = get("camera_angle_x")
        if ax is None:
            raise InputError(json_path, f"{where}: no focal length",
                             "give 'fl_x' (pixels) or 'camera_angle_x' (radians)")
        fx = 0.5 * w / math.tan(0.5 * ax)
    if fy is None:
        ay = get("camera_angle_y")
        fy = 0.5 * h / math.tan(0.5 * ay) if ay is not None and get("fl_x") is None else fx
    cx = get("cx")
    cy = get("cy")
    cx = 0.5 * w if cx is None else cx
    cy = 0.5 * h if cy is None else cy
    k1, k2, k3, k4, p1, p2 = (get(k) or 0.0 for k in ("k1", "k2", "k3", "k4", "p1", "p2"))
    model = frame.get("camera_model", meta.get("camera_model", "OPENCV"))
    if frame.get("is_fisheye", meta.get("is_fisheye", False)):
        model = "OPENCV_FISHEYE"
    model = str(model).upper()
    if model == "OPENCV_FISHEYE":
        if k1 == k2 == k3 == k4 == 0.0:
            return ColmapCamera(0, "PINHOLE", w, h, [fx, fy, cx, cy])
        return ColmapCamera(0, "OPENCV_FISHEYE", w, h, [fx, fy, cx, cy, k1, k2, k3, k4])
    if model in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "PERSPECTIVE"):
        if k4 != 0.0:
            raise InputError(json_path, f"{where}: radial term k4 on a perspective camera is "
                                        "not supported (no COLMAP equivalent)")
        if k1 == k2 == k3 == p1 == p2 == 0.0:
            return ColmapCamera(0, "PINHOLE", w, h, [fx, fy, cx, cy])
        if k3 == 0.0:
            return ColmapCamera(0, "OPENCV", w, h, [fx, fy, cx, cy, k1, k2, p1, p2])
        return ColmapCamera(0, "FULL_OPENCV", w, h,
                            [fx, fy, cx, cy, k1, k2, p1, p2, k3, 0.0, 0.0, 0.0])
    raise InputError(json_path, f"{where}: camera_model {model!r} is not supported",
                     "supported: OPENCV (k1 k2 p1 p2 k3), OPENCV_FISHEYE (k1..k4)")


def _assign_camera_ids(views: list[RawView]) -> None:
    ids: dict[tuple, int] = {}
    for v in views:
        c = v.camera
        key = (c.model, c.width, c.height, tuple(c.params.tolist()))
        v.camera_id = ids.setdefault(key, len(ids) + 1)
        c.id = v.camera_id


def _frame_view(meta: dict, frame: Any, idx: int, json_path: Path, base: Path) -> RawView:
    """The posed view of ``frames[idx]`` of a transforms file (camera id assigned later).

    Raises:
        InputError: the frame is not an object, or its image, camera or matrix is bad.
    """
    if not isinstance(frame, dict):
        raise InputError(json_path, f"frame {idx} is not a JSON object")
    path, name = _resolve_image(base, _file_path(frame, json_path, idx))
    cam = frame_camera(meta, frame, path, json_path, idx)
    viewmat = c2w_gl_to_viewmat(_frame_matrix(frame, json_path, idx))
    return RawView(name=name, path=path, camera=cam, viewmat=viewmat, camera_id=0,
                   source=json_path, camera_source=json_path)


def read_nerfstudio(json_path: Path, data_factor: int = 1) -> tuple[list[RawView], dict]:
    """Read a nerfstudio / instant-ngp ``transforms.json``.

    With ``data_factor`` N > 1, nerfstudio's ``images_N/<file name>`` copies beside the file
    are used when every frame has one (``prescaled``); otherwise the loader downsamples.

    Returns:
        (views in file order, the parsed JSON).

    Raises:
        InputError: see :func:`load_json`, :func:`frame_camera`; bad frames.
    """
    json_path = Path(json_path)
    meta = load_json(json_path)
    base = json_path.parent
    views: list[RawView] = []
    for idx, frame in enumerate(meta["frames"]):
        view = _frame_view(meta, frame, idx, json_path, base)
        mask = frame.get("mask_path")
        if isinstance(mask, str):
            join_inside(base, _clean_name(mask), "transforms mask_path")
            view.mask_path = base / _clean_name(mask)
        views.append(view)
    _assign_camera_ids(views)
    if data_factor > 1:
        scaled = [base / f"images_{data_factor}" / v.path.name for v in views]
        if all(p.is_file() for p in scaled):
            for v, p in zip(views, scaled):
                v.path, v.prescaled = p, True
    return views, meta


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``x y z`` (+ ``red green blue``) vertices of a PLY with plyfile.

    Returns:
        ([P, 3] float32 positions, [P, 3] uint8 colours; grey 128 when the PLY has none).

    Raises:
        InputError: missing file, not a PLY, or no ``vertex`` x/y/z.
    """
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path))
    except FileNotFoundError:
        raise InputError(path, "PLY file not found") from None
    except Exception as e:  # plyfile raises PlyParseError, ValueError, struct errors
        raise InputError(path, f"cannot be read as PLY ({e})") from None
    try:
        v = ply["vertex"].data
        xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    except (KeyError, ValueError):
        raise InputError(path, "PLY has no 'vertex' element with x, y, z") from None
    names = v.dtype.names or ()
    if all(c in names for c in ("red", "green", "blue")):
        rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1)
        if rgb.dtype.kind == "f":
            rgb = np.clip(np.rint(rgb * (255.0 if rgb.max() <= 1.0 else 1.0)), 0, 255)
        rgb = rgb.astype(np.uint8)
    else:
        rgb = np.full((len(xyz), 3), 128, np.uint8)
    return xyz, rgb


def read_nerfstudio_points(json_path: Path, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Points of ``ply_file_path`` (relative to the JSON file) or empty ``[0, 3]`` arrays."""
    ply = meta.get("ply_file_path")
    if not ply:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    join_inside(Path(json_path).parent, _clean_name(str(ply)), "transforms ply_file_path")
    return read_ply_points(Path(json_path).parent / _clean_name(str(ply)))


def read_blender(root: Path) -> list[RawView]:
    """Read Blender NeRF-synthetic ``transforms_train.json`` and ``transforms_test.json``.

    Views carry ``split`` = ``"train"`` / ``"test"``; names are the ``file_path`` with the
    extension added, e.g. ``train/r_0.png``. ``transforms_test.json`` is optional;
    ``transforms_val.json`` is not read.

    Raises:
        InputError: a missing train file, malformed JSON or frames, a missing image.
    """
    root = Path(root)
    views: list[RawView] = []
    for split in ("train", "test"):
        jp = root / f"transforms_{split}.json"
        if split == "test" and not jp.is_file():
            continue
        meta = load_json(jp)
        for idx, frame in enumerate(meta["frames"]):
            view = _frame_view(meta, frame, idx, jp, root)
            view.split = split
            views.append(view)
    _assign_camera_ids(views)
    return views
