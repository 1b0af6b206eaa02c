"""LLFF datasets (``nerf_llff_data`` layout): ``poses_bounds.npy`` + ``images/`` (+ ``images_4/``,
``images_8/``, optionally ``sparse/0/``).

``poses_bounds.npy`` is an ``[N, 17]`` float array, one row per image in sorted file-name order
of ``images/`` (Mildenhall et al. 2019, LLFF ``imgs2poses.py``): a ``3 x 5`` matrix flattened
row-major, whose first four columns are the camera-to-world matrix with the rotation columns in
LLFF's (down, right, backwards) axes and whose fifth column is ``(H, W, focal)`` in pixels of
the full-size images, then the near and far depth bounds. The camera is a pinhole with the
principal point at the image centre (LLFF's and NeRF's ``load_llff_data`` convention).

In OpenCV axes (x right, y down, z forward) the camera-to-world rotation is
``[c_right, c_down, c_forward] = [col1, col0, -col2]``.

With ``data_factor`` N, ``images_N/`` is used when it holds as many images (its intrinsics are
those of ``images/`` scaled to the actual file size, as NeRF's loader scales ``focal``); else
the loader downsamples ``images/``. SfM points come from ``sparse/0/points3D.bin|txt`` when
present (a COLMAP model without ``images.bin`` is fine: its cameras are not used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..config import SceneConfig
from ..errors import InputError
from ..paths import join_inside
from .colmap import ColmapCamera, read_points3D_binary, read_points3D_text
from .views import RawView

POSES_NAME = "poses_bounds.npy"
_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".jpe", ".tif", ".tiff", ".bmp", ".webp"}


def is_llff(root: Path) -> bool:
    """``root`` holds ``poses_bounds.npy`` and an ``images/`` folder, or only downscaled
    ``images_N/`` folders (as many LLFF downloads ship)."""
    return (root / POSES_NAME).is_file() and (
        (root / "images").is_dir() or bool(_scaled_folders(root, "images")))


def _scaled_folders(root: Path, name: str) -> dict[int, Path]:
    """factor -> ``<name>_<factor>/`` for the folders present (factors 2, 4, 8)."""
    return {f: root / f"{name}_{f}" for f in (2, 4, 8) if (root / f"{name}_{f}").is_dir()}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in _IMAGE_EXTS and not p.name.startswith("."))


def load_poses_bounds(path: Path) -> np.ndarray:
    """``[N, 17]`` float64 array of a ``poses_bounds.npy``.

    Raises:
        InputError: not a readable ``.npy`` of shape ``[N, 17]`` with finite values.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot be read as a numpy array ({e})") from None
    if arr.ndim != 2 or arr.shape[1] != 17 or not np.issubdtype(arr.dtype, np.number):
        raise InputError(path, f"expected an [N, 17] array (LLFF poses_bounds), got "
                               f"{list(arr.shape)} of {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(path, "holds NaN or infinite values")
    return arr


def llff_viewmat(pose: np.ndarray) -> np.ndarray:
    """``[3, 4]`` LLFF camera-to-world (down, right, back columns) -> ``[4, 4]`` OpenCV
    world-to-camera."""
    c2w = np.eye(4)
    c2w[:3, 0] = pose[:, 1]
    c2w[:3, 1] = pose[:, 0]
    c2w[:3, 2] = -pose[:, 2]
    c2w[:3, 3] = pose[:, 3]
    return np.linalg.inv(c2w)


def read_llff(root: Path, config: SceneConfig
              ) -> tuple[list[RawView], np.ndarray, np.ndarray, dict[str, Any]]:
    """Read an LLFF dataset (see the module docstring).

    Returns:
        (views, points [P, 3] float32, colours [P, 3] uint8, info).

    Raises:
        InputError: a malformed ``poses_bounds.npy``, or image folders whose image count does
            not match its rows.
    """
    root = Path(root)
    npy = root / POSES_NAME
    pb = load_poses_bounds(npy)
    name = config.images or "images"
    full = join_inside(root, name, "scene.images")
    f = config.data_factor
    if not full.is_dir():
        scaled = _scaled_folders(root, name)
        if not scaled:
            raise InputError(None, f"scene.images {name!r}: no such folder in the dataset")
        if f not in scaled:
            have = ", ".join(f"{p.name}/" for p in scaled.values())
            raise InputError(root, f"this LLFF dataset has no full-size {name}/ folder, only "
                                   f"{have}; data_factor {f} has no folder",
                             "choose the matching factor: "
                             + " or ".join(f"--data-factor {k}" for k in scaled))
        full = scaled[f]
    files = _image_files(full)
    if len(files) != len(pb):
        raise InputError(npy, f"has {len(pb)} poses but {name}/ holds {len(files)} images",
                         "LLFF pairs the rows with the sorted image names of images/")
    folder, prescaled = full, full.name != name
    if f > 1 and not prescaled:
        scaled = full.parent / f"{full.name}_{f}"
        if scaled.is_dir() and len(_image_files(scaled)) == len(pb):
            folder, prescaled = scaled, True
    used = _image_files(folder) if prescaled else files
    views = []
    for i, (row, path) in enumerate(zip(pb, used)):
        m = row[:15].reshape(3, 5)
        h, w, focal = m[:, 4]
        W, H = int(round(w)), int(round(h))
        if W <= 0 or H <= 0 or focal <= 0:
            raise InputError(npy, f"row {i}: image size {w}x{h} / focal {focal} not positive")
        cam = ColmapCamera(1, "PINHOLE", W, H, [focal, focal, W / 2.0, H / 2.0])
        views.append(RawView(name=files[i].name, path=path, camera=cam,
                             viewmat=llff_viewmat(m[:, :4]), camera_id=1, source=npy,
                             camera_source=npy, prescaled=prescaled))
    # one camera id per distinct (size, focal)
    ids: dict[tuple, int] = {}
    for v in views:
        key = (v.camera.width, v.camera.height, float(v.camera.params[0]))
        v.camera_id = v.camera.id = ids.setdefault(key, len(ids) + 1)
    pts = np.zeros((0, 3), np.float32)
    rgb = np.zeros((0, 3), np.uint8)
    for d in (root / "sparse" / "0", root / "sparse"):
        if (d / "points3D.bin").is_file():
            p = read_points3D_binary(d / "points3D.bin")
        elif (d / "points3D.txt").is_file():
            p = read_points3D_text(d / "points3D.txt")
        else:
            continue
        pts, rgb = p.xyz.astype(np.float32), p.rgb.astype(np.uint8)
        break
    info = {"model": str(npy), "image_folder": str(folder), "llff_bounds":
            [float(pb[:, 15].min()), float(pb[:, 16].max())]}
    return views, pts, rgb, info

