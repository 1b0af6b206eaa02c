"""Undistortion of images with lens distortion to PINHOLE, as COLMAP's image undistorter does.

Every 3DGS rasterizer assumes a pinhole camera, so images whose camera has lens distortion
(``SIMPLE_RADIAL``, ``OPENCV``, fisheye, ...) are resampled to a PINHOLE camera: by the SfM
stage for the model it estimated (:func:`undistort_reconstruction`) and by the scene loader for
datasets that ship distorted cameras (:func:`undistort_cached`, cached). Both use one core:

- each camera is undistorted by COLMAP itself (``pycolmap.undistort_camera`` with its default
  ``UndistortCameraOptions``: ``blank_pixels=0``, ``min_scale=0.2``, ``max_scale=2``), so the
  PINHOLE camera and image size are the ones COLMAP's ``image_undistorter`` picks;
- the warp is computed once per camera: every target pixel centre ``(x + 0.5, y + 0.5)`` is
  unprojected by the PINHOLE camera and projected by the distorted one (pycolmap's
  ``cam_from_img`` / ``img_from_cam``), the mapping of COLMAP's ``WarpImageBetweenCameras``
  (``src/colmap/image/warp.cc``), with its bounds: a target pixel whose source lacks a
  bilinear neighbour is black;
- every image is resampled bilinearly by ``torch.nn.functional.grid_sample`` and written
  several at a time (threads); 2D points move as in COLMAP's ``UndistortReconstruction``:
  ``xy' = pinhole.img_from_cam(distorted.cam_from_img(xy))``;
- while each image is in memory, the colours of its observations are read too, and every 3D
  point gets the mean of them, rounded (COLMAP's ``ExtractColorsForAllImages``), so the mapper
  need not read every image a second time for them.

It writes the cameras and 2D points ``pycolmap.undistort_images`` writes and its pixels within
rounding (``tests/test_sfm.py::test_undistortion_equals_colmaps``). Unlike COLMAP, it keeps an
image's transparency (:func:`undistort_image`): an object cut out of its background stays cut
out, and the scene loader composites it on the configured background, in training as in the
held-out scores. COLMAP writes such images as RGB, whose transparent pixels then show as
black (or whatever colour they hold) in front of which the trainer, rendering on the
configured background, must paint the background itself. It is faster where many
images share a camera, as SfM's frames do (260 frames of 720x1280: 3.7 s against 7.65 s on 2
cores), and slower where each image needs its own grid or images are very large (71 frames with
a camera each: 2.99 s against 2.19 s; 11 photos of 6 MP: 3.27 s against 2.92 s;
``benchmarks/undistort.py``, ``benchmarks/results/undistort_cpu.json``).

Loader results live in ``<cache>/undistorted/<tag>-<key>/`` where ``key`` hashes every input
(source file paths, sizes and mtimes, camera models and parameters, pycolmap version), so a
second load reuses them and any change rebuilds them.

pycolmap is imported lazily, after numpy (see shared/NOTES.md: pycolmap first in a process
corrupts the heap when Pillow later saves a PNG).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

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
from .imageio import has_alpha

#: Models that are undistorted to PINHOLE; SIMPLE_PINHOLE and PINHOLE are used directly.
UNDISTORTABLE_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE")
PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
SUPPORTED_MODELS = PINHOLE_MODELS + UNDISTORTABLE_MODELS
#: COLMAP's undistorter writes JPEGs at quality 100 (quantisation tables of ones), 4:2:0.
COLMAP_JPEG_QUALITY = 100


def start_loading() -> None:
    """Start importing torch (the resampler, about 1.2 s on 2 cores) in a background thread,
    so that it overlaps work that leaves a core idle, such as SfM's one-thread mapping.

    The thread is not a daemon: a process that exits meanwhile waits for the import (never
    more than the import takes) instead of tearing it down half done. A failed import is left
    for the real ``import torch`` to report. Does nothing when torch is already imported.
    """
    if "torch" in sys.modules:
        return

    def load() -> None:
        try:
            import torch  # noqa: F401
        except Exception:  # the resampler's own import raises it where it is needed
            pass

    threading.Thread(target=load, name="import-torch").start()


def warp_grid(distorted: Any, pinhole: Any, src_w: int, src_h: int) -> tuple[Any, Any]:
    """The bilinear sampling grid from a distorted image to its PINHOLE camera.

    Args:
        distorted: the image's ``pycolmap.Camera`` at ``src_w x src_h`` px.
        pinhole: the target ``pycolmap.Camera`` (``pycolmap.undistort_camera`` of it).
        src_w, src_h: the distorted image's size (px).

    Returns:
        ``(grid, outside)``: ``grid`` a ``[1, H, W, 2]`` float32 tensor of
        ``grid_sample`` coordinates (``align_corners=False``) for the ``H x W`` target,
        ``outside`` a ``[H, W]`` bool tensor of target pixels COLMAP leaves black.
    """
    import torch

    w, h = pinhole.width, pinhole.height
    fx, fy, cx, cy = (float(v) for v in pinhole.params)  # PINHOLE: fx, fy, cx, cy
    # the target pixel centres unprojected by the PINHOLE camera (its cam_from_img, written
    # out: one [H * W, 3] array of rays (x, y, 1), x varying fastest)
    rays = np.empty((h * w, 3), np.float64)
    rays[:, 0] = np.tile((np.arange(w, dtype=np.float64) + 0.5 - cx) / fx, h)
    rays[:, 1] = np.repeat((np.arange(h, dtype=np.float64) + 0.5 - cy) / fy, w)
    rays[:, 2] = 1.0
    src = distorted.img_from_cam(rays, check_cheirality=False)
    sx, sy = src[:, 0], src[:, 1]
    outside = ~_interpolable(sx, sy, src_w, src_h)
    # grid_sample with align_corners=False puts index i at (2 i + 1) / size - 1 = 2 s / size - 1
    g = np.empty((h * w, 2), np.float32)
    g[:, 0] = sx * (2.0 / src_w) - 1.0
    g[:, 1] = sy * (2.0 / src_h) - 1.0
    return (torch.from_numpy(g.reshape(1, h, w, 2)), torch.from_numpy(outside.reshape(h, w)))


def _interpolable(sx: np.ndarray, sy: np.ndarray, w: int, h: int) -> np.ndarray:
    """Where COLMAP's bilinear interpolation has all four neighbours in a ``w`` x ``h`` image,
    for points ``(sx, sy)`` (px, pixel centres at +0.5): it interpolates at ``i = s - 0.5``
    (pixel-index coordinates) only where 0 <= floor(i) and floor(i) + 1 <= size - 1, that is
    0.5 <= s < size - 0.5."""
    return (sx >= 0.5) & (sx < w - 0.5) & (sy >= 0.5) & (sy < h - 0.5)


def sample_bilinear(arr: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colours of ``arr`` (``[H, W, C]`` uint8) at image points ``xy`` (``[N, 2]`` px, pixel
    centres at +0.5), bilinear, as COLMAP's ``Bitmap::InterpolateBilinear(x - 0.5, y - 0.5)``.

    Returns:
        ``([N, C]`` float64 colours, ``[N]`` bool valid): a point without all four
        neighbours inside the image is not valid (its colour is 0).
    """
    h, w = arr.shape[:2]
    ix, iy = xy[:, 0] - 0.5, xy[:, 1] - 0.5
    x0, y0 = np.floor(ix), np.floor(iy)
    ok = _interpolable(xy[:, 0], xy[:, 1], w, h)
    x0i, y0i = np.where(ok, x0, 0).astype(np.int64), np.where(ok, y0, 0).astype(np.int64)
    dx, dy = (ix - x0)[:, None], (iy - y0)[:, None]
    a = arr.reshape(h, w, -1)

    def at(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return a[y, x].astype(np.float64)

    out = ((1 - dx) * (1 - dy) * at(y0i, x0i) + dx * (1 - dy) * at(y0i, x0i + 1)
           + (1 - dx) * dy * at(y0i + 1, x0i) + dx * dy * at(y0i + 1, x0i + 1))
    out[~ok] = 0.0
    return out, ok


def undistort_image(src: Path, dst: Path, distorted: Any, pinhole: Any,
                    grids: dict[tuple[int, int], tuple[Any, Any]],
                    jpeg_quality: int = COLMAP_JPEG_QUALITY,
                    sample_xy: np.ndarray | None = None,
                    lock: threading.Lock | None = None
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """Resample the image file ``src`` to ``pinhole`` and write it to ``dst``.

    Grayscale images stay grayscale (masks). Images with transparency (RGBA PNGs of an object
    cut out of its background, as the NeRF-synthetic scenes) keep it: they are written as
    RGBA, the colour resampled premultiplied by alpha (so that the colour of transparent
    pixels does not bleed into the edge) and divided by the resampled alpha again; target
    pixels outside the source are transparent. Where the resampled alpha is 0, also outside,
    the colour is the straight resampled one (an RGBA mask of one colour stays one colour).
    Every other image is written as RGB, as COLMAP's undistorter writes every image. EXIF is
    kept. ``grids`` caches :func:`warp_grid` per source size; an image whose size differs from
    ``distorted``'s is warped with the camera rescaled to it (as COLMAP does). ``lock``, when
    given, guards ``grids`` (images of one camera in several threads build its grid once). An
    image whose camera has no distortion is copied unchanged.

    Returns:
        with ``sample_xy`` (``[N, 2]`` points of the distorted image, px), the
        :func:`sample_bilinear` colours there, read from the image already decoded; else None.

    Raises:
        InputError: ``src`` cannot be read as an image (names the file).
    """
    import torch
    from PIL import Image

    try:
        with Image.open(src) as im:
            exif = im.info.get("exif")
            mode = "L" if im.mode in ("L", "1") else "RGBA" if has_alpha(im) else "RGB"
            arr = np.array(im.convert(mode))
    except OSError as e:
        raise InputError(src, f"cannot read the image to undistort it ({e})") from None
    h, w = arr.shape[:2]
    colour = arr[..., :3] if mode == "RGBA" else arr  # what the points' colours come from
    if distorted.is_undistorted() and (w, h) == (distorted.width, distorted.height) \
            == (pinhole.width, pinhole.height):
        # no distortion (a PINHOLE view of a 360 rig, known PINHOLE poses): the file is
        # copied as it is, as COLMAP's undistorter copies it
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        return None if sample_xy is None else sample_bilinear(colour, sample_xy)
    with lock or contextlib.nullcontext():
        if (w, h) not in grids:
            cam = distorted
            if (distorted.width, distorted.height) != (w, h):
                cam = copy.copy(distorted)
                cam.rescale(w, h)
            grids[(w, h)] = warp_grid(cam, pinhole, w, h)
        grid, outside = grids[(w, h)]
    x = torch.from_numpy(arr.reshape(h, w, -1)).permute(2, 0, 1)[None].float()
    jpeg = dst.suffix.lower() in (".jpg", ".jpeg")
    # a JPEG cannot hold alpha (and its source cannot have had it)
    keep_alpha = mode == "RGBA" and not jpeg
    if keep_alpha:
        # [premultiplied colour, straight colour, alpha], resampled together
        x = torch.cat([x[:, :3] * (x[:, 3:] / 255.0), x], 1)
    elif mode == "RGBA":
        x = x[:, :3]
    y = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                        align_corners=False)[0]
    if keep_alpha:
        a = y[6:]
        rgb = torch.where(a > 0, y[:3] * 255.0 / a.clamp_min(1e-6), y[3:6])
        y = torch.cat([rgb, a])
        y[3, outside] = 0.0  # transparent; the colour stays (an RGBA mask keeps one colour)
    else:
        y[:, outside] = 0.0
    out = y.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(np.ascontiguousarray(out[..., 0] if out.shape[2] == 1 else out))
    dst.parent.mkdir(parents=True, exist_ok=True)
    kw: dict[str, Any] = {}
    if jpeg:
        kw = {"quality": jpeg_quality, "subsampling": 2}
    if exif:
        kw["exif"] = exif
    img.save(dst, **kw)
    return None if sample_xy is None else sample_bilinear(colour, sample_xy)


def undistort_files(jobs: Sequence[tuple[Path, Path, Any, Any]], num_threads: int = -1,
                    jpeg_quality: int = COLMAP_JPEG_QUALITY,
                    progress: Callable[[int, int], None] | None = None,
                    sample_xy: Sequence[np.ndarray] | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Run :func:`undistort_image` over ``(src, dst, distorted, pinhole)`` jobs, several at
    a time (``num_threads``; -1: all cores). Jobs that share a ``pinhole`` camera object share
    its warp grid (built once, by whichever of them comes first; other cameras' images go on in
    the other threads). ``progress(k, n)`` is called as images finish.

    Returns:
        per job, the colours at ``sample_xy[i]`` (see :func:`undistort_image`), or None.

    Raises:
        InputError: an image cannot be read (the first such file is named).
    """
    grids: dict[int, dict[tuple[int, int], tuple[Any, Any]]] = {}
    locks: dict[int, threading.Lock] = {}
    for _, _, _, pinhole in jobs:
        grids.setdefault(id(pinhole), {})
        locks.setdefault(id(pinhole), threading.Lock())
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(jobs)

    def one(i: int) -> None:
        src, dst, distorted, pinhole = jobs[i]
        results[i] = undistort_image(src, dst, distorted, pinhole, grids[id(pinhole)],
                                     jpeg_quality, None if sample_xy is None else sample_xy[i],
                                     locks[id(pinhole)])

    workers = (os.cpu_count() or 1) if num_threads < 1 else num_threads
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k, f in enumerate([pool.submit(one, i) for i in range(len(jobs))]):
            f.result()
            if progress is not None:
                progress(k + 1, len(jobs))
    return results


def undistort_reconstruction(pycolmap: Any, model: Any, image_dir: Path, out: Path,
                             num_threads: int = -1,
                             progress: Callable[[int, int], None] | None = None) -> None:
    """Write ``model`` undistorted to PINHOLE: ``out/images/<name>`` and ``out/sparse/``,
    as ``pycolmap.undistort_images(out, model, image_dir, output_type="COLMAP")`` does.

    Args:
        pycolmap: the imported module.
        model: a ``pycolmap.Reconstruction``; changed in place (PINHOLE cameras, 2D points
            moved to them).
        image_dir: the distorted images the model names.
        out: the output folder.
        num_threads: images undistorted at a time (-1: all cores).
        progress: called with ``(k, n)`` as images finish.

    Raises:
        InputError: an image cannot be read (names the file).
    """
    opts = pycolmap.UndistortCameraOptions()
    pairs: dict[int, tuple[Any, Any]] = {}
    for cam_id, cam in model.cameras.items():
        cam = copy.copy(cam)  # a view into the model, whose camera is replaced below
        pinhole = pycolmap.undistort_camera(opts, cam)
        pinhole.camera_id = cam_id
        pairs[cam_id] = (cam, pinhole)
    jobs, samples, sample_ids = [], [], []
    registered = [model.images[i] for i in model.reg_image_ids()]
    for image in sorted(registered, key=lambda im: im.name):
        distorted, pinhole = pairs[image.camera_id]
        pts = image.points2D
        # the distorted positions of observed points, for their colours
        obs = [(p.xy, p.point3D_id) for p in pts if p.has_point3D()]
        samples.append(np.array([o[0] for o in obs], np.float64).reshape(-1, 2))
        sample_ids.append(np.array([o[1] for o in obs], np.int64))
        if len(pts):
            rays = distorted.cam_from_img(pts)
            xy = pinhole.img_from_cam(np.concatenate([rays, np.ones((len(rays), 1))], 1),
                                      check_cheirality=False)
            for p, q in zip(pts, xy):
                p.xy = q
        jobs.append((image_dir / image.name, out / "images" / image.name, distorted, pinhole))
    for cam_id, (_, pinhole) in pairs.items():
        model.cameras[cam_id] = pinhole
    colours = undistort_files(jobs, num_threads, COLMAP_JPEG_QUALITY, progress, samples)
    # each point's colour: the mean of its observations' bilinear colours, rounded (COLMAP's
    # Reconstruction::ExtractColorsForAllImages, computed here from the images read above)
    ids = np.concatenate(sample_ids) if sample_ids else np.zeros(0, np.int64)
    rgb = np.concatenate([c[0] for c in colours]) if colours else np.zeros((0, 3))
    ok = np.concatenate([c[1] for c in colours]) if colours else np.zeros(0, bool)
    uniq, inv = np.unique(ids[ok], return_inverse=True)
    sums = np.zeros((len(uniq), rgb.shape[1] if rgb.ndim == 2 else 3))
    np.add.at(sums, inv, rgb[ok])
    counts = np.bincount(inv, minlength=len(uniq))
    means = np.clip(np.round(sums / np.maximum(counts, 1)[:, None]), 0, 255).astype(np.uint8)
    if means.shape[1] == 1:
        means = np.repeat(means, 3, 1)
    black = np.zeros(3, np.uint8)
    for pid in model.point3D_ids():
        model.points3D[pid].color = black
    for pid, c in zip(uniq.tolist(), means):
        model.points3D[pid].color = c
    (out / "sparse").mkdir(parents=True, exist_ok=True)
    model.write_binary(str(out / "sparse"))


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
    h.update(f"splatforge-undistort-v3 pycolmap={version}\n".encode())
    for j in jobs:
        st = os.stat(j.source)
        c = j.camera
        h.update(f"{Path(j.source).resolve()}|{st.st_size}|{st.st_mtime_ns}|{c.model}|"
                 f"{c.width}|{c.height}|{','.join(repr(float(p)) for p in c.params)}\n".encode())
    return h.hexdigest()[:16]


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
        InputError: an image cannot be read (the file is named).
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
    cameras: dict[tuple, tuple[ColmapCamera, Any, Any]] = {}
    images: dict[int, ColmapImage] = {}
    files = []
    opts = pycolmap.UndistortCameraOptions()
    for i, j in enumerate(jobs):
        c = j.camera
        k = (c.model, c.width, c.height, tuple(c.params.tolist()))
        if k not in cameras:
            distorted = pycolmap.Camera(model=c.model, width=c.width, height=c.height,
                                        params=c.params)
            p = pycolmap.undistort_camera(opts, distorted)
            cameras[k] = (ColmapCamera(len(cameras) + 1, "PINHOLE", p.width, p.height,
                                       np.asarray(p.params, np.float64)), distorted, p)
        name = f"{i:05d}{Path(j.source).suffix.lower()}"
        cam, distorted, pinhole = cameras[k]
        files.append((Path(j.source), tmp / "images" / name, distorted, pinhole))
        images[i + 1] = ColmapImage(i + 1, [1.0, 0, 0, 0], [0.0, 0, 0], cam.id, name)
    if reporter is not None:
        reporter.info(f"undistorting {len(jobs)} images to PINHOLE",
                      models=sorted({c.model for c in (j.camera for j in jobs)}))
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    undistort_files(files, jpeg_quality=95)
    write_model(tmp / "sparse",
                ColmapModel({c.id: c for c, _, _ in cameras.values()}, images,
                            ColmapPoints3D.empty()))
    (tmp / "done.json").write_text(json.dumps({"images": len(jobs)}))
