"""Undistortion of images with lens distortion to PINHOLE, through pycolmap, cached.

The images are staged (symlinks, or copies where links are not possible) into a throw-away
COLMAP model written with our own writer, then ``pycolmap.undistort_images`` (COLMAP's
``COLMAPUndistorter``, ``src/colmap/image/undistortion.cc``) warps them; it chooses the
undistorted PINHOLE camera (size and intrinsics) so that the output has no blank border
(``UndistortCameraOptions`` defaults: ``blank_pixels=0``, ``min_scale=0.2``,
``max_scale=2``). The result lives in ``<cache>/undistorted/<tag>-<key>/`` where ``key`` hashes
every input (source file paths, sizes and mtimes, camera models and parameters, pycolmap
version), so a second load reuses it and any change rebuilds it.

pycolmap is imported lazily, after numpy (see shared/NOTES.md: pycolmap first in a process
corrupts the heap when Pillow later saves a PNG).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np  # noqa: F401  (must precede pycolmap, imported lazily below)

from ..errors import InputError
from .colmap import (
    ColmapCamera,
    ColmapImage,
    ColmapModel,
    ColmapPoints3D,
    read_model,
    write_model,
)

#: Models that are undistorted to PINHOLE; SIMPLE_PINHOLE and PINHOLE are used directly.
UNDISTORTABLE_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE")
PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
SUPPORTED_MODELS = PINHOLE_MODELS + UNDISTORTABLE_MODELS


@dataclass
class UndistortJob:
    """One image to undistort.

    Attributes:
        source: the distorted image file.
        camera: its camera at the file's pixel size (``width``/``height`` must match the file).
    """

    source: Path
    camera: ColmapCamera


@dataclass
class UndistortResult:
    """One undistorted image: its file and PINHOLE camera (``params`` = fx, fy, cx, cy)."""

    path: Path
    camera: ColmapCamera


def _cache_key(jobs: Sequence[UndistortJob], version: str) -> str:
    h = hashlib.sha256()
    h.update(f"splatforge-undistort-v1 pycolmap={version}\n".encode())
    for j in jobs:
        st = os.stat(j.source)
        c = j.camera
        h.update(f"{Path(j.source).resolve()}|{st.st_size}|{st.st_mtime_ns}|{c.model}|"
                 f"{c.width}|{c.height}|{','.join(repr(float(p)) for p in c.params)}\n".encode())
    return h.hexdigest()[:16]


def _stage(src: Path, dst: Path) -> None:
    try:
        os.symlink(Path(src).resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def undistort_cached(jobs: Sequence[UndistortJob], cache_root: Path, tag: str = "f1",
                     reporter=None) -> tuple[list[UndistortResult], bool]:
    """Undistort ``jobs`` to PINHOLE, reusing ``cache_root/undistorted/<tag>-<key>`` if present.

    Older results with the same ``tag`` (e.g. the same data_factor) are removed when a new one
    is built, so a changed dataset does not leave stale copies behind.

    Args:
        jobs: images and their distorted cameras (models in :data:`UNDISTORTABLE_MODELS`).
        cache_root: the dataset's cache folder.
        tag: prefix of the result folder.
        reporter: optional :class:`splatforge.events.StageReporter` for info/progress.

    Returns:
        (one result per job, in order; True when the cache was reused).

    Raises:
        InputError: pycolmap could not read or undistort an image (the file is named).
    """
    import pycolmap  # lazy: numpy is already imported (module top)

    base = Path(cache_root) / "undistorted"
    key = _cache_key(jobs, getattr(pycolmap, "__version__", "?"))
    final = base / f"{tag}-{key}"
    reused = (final / "done.json").is_file()
    if not reused:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{tag}-{key}-", dir=base))
        try:
            _build(jobs, tmp, pycolmap, reporter)
            for old in base.glob(f"{tag}-*"):
                if old.is_dir() and old.name != final.name:
                    shutil.rmtree(old, ignore_errors=True)
            if final.exists():  # a concurrent build finished first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    model = read_model(final / "sparse", read_points2D=False)
    by_name = {im.name: im for im in model.images.values()}
    results = []
    for i, j in enumerate(jobs):
        name = f"{i:05d}{Path(j.source).suffix.lower()}"
        im = by_name.get(name)
        out = final / "images" / name
        if im is None or not out.is_file():
            raise InputError(final, f"undistortion cache is incomplete (missing {name})",
                             f"delete {final} and load again")
        results.append(UndistortResult(out, model.cameras[im.camera_id]))
    return results, reused


def _build(jobs: Sequence[UndistortJob], tmp: Path, pycolmap, reporter) -> None:
    stage_images = tmp / "stage" / "images"
    stage_images.mkdir(parents=True)
    cameras: dict[tuple, ColmapCamera] = {}
    images: dict[int, ColmapImage] = {}
    for i, j in enumerate(jobs):
        c = j.camera
        k = (c.model, c.width, c.height, tuple(c.params.tolist()))
        if k not in cameras:
            cameras[k] = ColmapCamera(len(cameras) + 1, c.model, c.width, c.height, c.params)
        name = f"{i:05d}{Path(j.source).suffix.lower()}"
        _stage(Path(j.source), stage_images / name)
        images[i + 1] = ColmapImage(i + 1, [1.0, 0, 0, 0], [0.0, 0, 0], cameras[k].id, name)
    write_model(tmp / "stage" / "sparse",
                ColmapModel({c.id: c for c in cameras.values()}, images, ColmapPoints3D.empty()))
    if reporter is not None:
        reporter.info(f"undistorting {len(jobs)} images to PINHOLE with pycolmap",
                      models=sorted({c.model for c in cameras.values()}))
    old_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2  # keep COLMAP's per-image INFO lines off stderr
    try:
        pycolmap.undistort_images(
            output_path=str(tmp / "out"), input_path=str(tmp / "stage" / "sparse"),
            image_path=str(stage_images), jpeg_quality=95)
    except Exception as e:  # pycolmap raises plain RuntimeError/ValueError
        raise InputError(jobs[0].source.parent if jobs else tmp,
                         f"pycolmap could not undistort the images ({e})") from None
    finally:
        pycolmap.logging.minloglevel = old_level
    out = tmp / "out"
    missing = [f"{i:05d}" for i in range(len(jobs))
               if not (out / "images" / f"{i:05d}{Path(jobs[i].source).suffix.lower()}").is_file()]
    if missing:
        j = jobs[int(missing[0])]
        raise InputError(j.source, "pycolmap could not undistort this image (unreadable?)")
    # Keep only what the loader needs: the images and the undistorted sparse model.
    for p in out.iterdir():
        if p.name not in ("images", "sparse"):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    shutil.rmtree(tmp / "stage")
    for p in (out / "images", out / "sparse"):
        os.replace(p, tmp / p.name)
    out.rmdir()
    (tmp / "done.json").write_text(json.dumps({"images": len(jobs)}))
