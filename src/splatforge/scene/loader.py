"""``load_scene``: detect a dataset's format and read it into a :class:`Scene`.

Formats (auto-detected in this order for a folder; a ``.json`` file path is read directly):

1. nerfstudio / instant-ngp: ``transforms.json``.
2. Blender NeRF-synthetic: ``transforms_train.json`` (+ ``transforms_test.json``).
3. COLMAP: a model (``cameras`` + ``images`` [+ ``points3D``], ``.bin`` or ``.txt``) in
   ``sparse/0/``, ``sparse/``, ``dense/sparse/`` or the folder itself; images in the folder
   holding ``sparse/`` (``images/`` by default). A splatforge SfM workspace (``sfm.json`` +
   ``images/`` + ``sparse/0/``) is this layout, with its cache in ``<workspace>/cache``.

Then, for every format, the same steps: data_factor downsampling (``images_N/`` when present,
else a cached Lanczos copy), intrinsics rescaled to the actual file size, undistortion of
non-pinhole cameras to PINHOLE (cached, pycolmap), the train/test split, and optional
normalisation.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SceneConfig
from ..errors import InputError
from ..events import EventCallback, StageReporter
from ..paths import join_inside
from .colmap import ColmapCamera, ColmapImage, model_format, read_model
from .imageio import downsample_cached, image_size
from .llff import POSES_NAME, is_llff, read_llff
from .masks import find_mask_dir, match_masks, resample_masks
from .transforms import read_blender, read_nerfstudio, read_nerfstudio_points
from .types import Scene, SceneImage
from .undistort import (
    SUPPORTED_MODELS,
    UNDISTORTABLE_MODELS,
    UndistortJob,
    undistort_cached,
)
from .views import RawView

#: Model folders tried under a dataset root, in order, with the image base they imply
#: (the folder that holds ``sparse/``).
COLMAP_MODEL_DIRS = ("sparse/0", "sparse", "dense/sparse", ".")

_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".jpe"}


# --------------------------------------------------------------------------------------------
# Cache folder
# --------------------------------------------------------------------------------------------

def scene_cache_dir(root: str | Path, config: SceneConfig | None = None) -> Path:
    """The folder where a dataset's downsampled and undistorted images are cached.

    ``config.cache_dir`` when set (used as is: it belongs to this dataset); else
    ``<root>/cache`` for a splatforge workspace (``<root>/sfm.json`` exists); else
    ``$SPLATFORGE_CACHE_DIR`` (default ``~/.cache/splatforge``) ``/<name>-<hash>``, where
    ``name`` is the dataset folder's name and ``hash`` the first 10 hex digits of the SHA-1 of
    its absolute path. Nothing is ever written inside a dataset that is not a workspace.
    """
    root = Path(root)
    if config is not None and config.cache_dir is not None:
        return Path(config.cache_dir).expanduser()
    if (root / "sfm.json").is_file():
        return root / "cache"
    base = Path(os.environ.get("SPLATFORGE_CACHE_DIR") or "~/.cache/splatforge").expanduser()
    absolute = str(root.expanduser().resolve())
    digest = hashlib.sha1(absolute.encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", root.resolve().name) or "dataset"
    return base / f"{name}-{digest}"


# --------------------------------------------------------------------------------------------
# Camera helpers
# --------------------------------------------------------------------------------------------

_SINGLE_FOCAL = {"SIMPLE_PINHOLE": "PINHOLE", "SIMPLE_RADIAL": "OPENCV", "RADIAL": "OPENCV"}


def scale_camera(cam: ColmapCamera, width: int, height: int) -> ColmapCamera:
    """Rescale a camera to a ``width x height`` image of the same view.

    ``fx *= w_new / w_old``, ``cx *= w_new / w_old`` (likewise y), as gsplat's COLMAP parser
    and INRIA's loader do; distortion coefficients act on normalised coordinates and are
    unchanged. Single-focal models whose two axes scale differently become their two-focal
    equivalents (SIMPLE_PINHOLE -> PINHOLE, SIMPLE_RADIAL/RADIAL -> OPENCV), which is exact.
    """
    if (width, height) == (cam.width, cam.height):
        return ColmapCamera(cam.id, cam.model, cam.width, cam.height, cam.params.copy())
    sx, sy = width / cam.width, height / cam.height
    p = cam.params.copy()
    model = cam.model
    if model in _SINGLE_FOCAL:
        f, cx, cy, extra = p[0], p[1], p[2], p[3:]
        if model == "SIMPLE_PINHOLE":
            return ColmapCamera(cam.id, "PINHOLE", width, height,
                                [f * sx, f * sy, cx * sx, cy * sy])
        k = list(extra) + [0.0] * (4 - len(extra))  # k1, k2 -> k1, k2, p1=0, p2=0
        return ColmapCamera(cam.id, "OPENCV", width, height,
                            [f * sx, f * sy, cx * sx, cy * sy] + k[:2] + [0.0, 0.0])
    # fx, fy, cx, cy first for every other supported model
    p[0] *= sx
    p[1] *= sy
    p[2] *= sx
    p[3] *= sy
    return ColmapCamera(cam.id, model, width, height, p)


def pinhole_K(cam: ColmapCamera) -> np.ndarray:
    """[3, 3] K of a SIMPLE_PINHOLE (f, cx, cy) or PINHOLE (fx, fy, cx, cy) camera."""
    p = cam.params
    if cam.model == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    elif cam.model == "PINHOLE":
        fx, fy, cx, cy = p[:4]
    else:
        raise ValueError(f"not a pinhole camera: {cam.model}")
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------------------------
# Normalisation and split
# --------------------------------------------------------------------------------------------

def normalization_transform(camera_centers: np.ndarray) -> np.ndarray:
    """[4, 4] similarity ``T`` with ``x_scene = T @ x_source`` from [C, 3] camera centres.

    ``T = [[s I, -s c], [0, 1]]`` with ``c = mean_i C_i`` and ``s = 1 / max_i |C_i - c|``, so
    the mean camera centre moves to the origin and the farthest camera lies at distance 1
    (``s = 1`` when all cameras coincide). No rotation is applied. This is INRIA 3DGS's
    ``getNerfppNorm`` centre (mean of the camera centres) with a unit radius instead of
    ``1.1 x`` the largest distance.
    """
    c = np.asarray(camera_centers, dtype=np.float64).reshape(-1, 3)
    T = np.eye(4)
    if len(c) == 0:
        return T
    center = c.mean(axis=0)
    radius = float(np.linalg.norm(c - center, axis=1).max())
    s = 1.0 / radius if radius > 1e-12 else 1.0
    T[:3, :3] *= s
    T[:3, 3] = -s * center
    return T


def apply_similarity_to_viewmat(viewmat: np.ndarray, T: np.ndarray) -> np.ndarray:
    """World-to-camera [4, 4] in the frame ``x' = s x + b`` (``T = [[s I, b], [0, 1]]``).

    With ``x = (x' - b) / s``: ``R x + t = (R x' + s t - R b) / s``; scaling camera
    coordinates by ``s`` leaves every pixel unchanged, so the new viewmat is
    ``[R | s t - R b]``: the same rotation, the camera centre mapped by ``T``.
    """
    s = float(np.cbrt(np.linalg.det(T[:3, :3])))
    b = T[:3, 3]
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R
    out[:3, 3] = s * t - R @ b
    return out


def holdout_split(names: list[str], test_every: int) -> tuple[list[int], list[int]]:
    """INRIA's ``llffhold``: after sorting by name, index ``i`` is held out for testing when
    ``i % test_every == 0``; ``test_every = 0`` holds out nothing.

    Returns:
        (train indices, test indices) into ``names`` (which must already be sorted).
    """
    n = len(names)
    if test_every <= 0:
        return list(range(n)), []
    test = [i for i in range(n) if i % test_every == 0]
    train = [i for i in range(n) if i % test_every != 0]
    return train, test


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------

def _find_colmap_model(root: Path) -> tuple[Path, Path] | None:
    """(model folder, image base folder) for the first COLMAP layout found under ``root``."""
    for rel in COLMAP_MODEL_DIRS:
        d = (root / rel) if rel != "." else root
        if d.is_dir() and model_format(d) is not None:
            if rel == "sparse/0":
                return d, root
            if rel in ("sparse", "dense/sparse"):
                return d, d.parent
            # the model folder itself was given: sparse/0 or sparse inside a dataset
            r = Path(os.path.abspath(root))  # no symlink resolution: keep the user's path
            if r.parent.name == "sparse" and r.name.isdigit():
                return d, r.parent.parent
            if r.name == "sparse":
                return d, r.parent
            return d, root
    return None


def detect_format(path: str | Path) -> tuple[str, Path, Path]:
    """Decide how ``path`` is read.

    Returns:
        (format, root, descriptor) with format ``nerfstudio`` | ``blender`` | ``colmap``, root
        the dataset folder and descriptor the transforms file or the COLMAP model folder.

    Raises:
        InputError: ``path`` does not exist or is none of the known layouts (the message lists
            what was looked for).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_file():
        if path.suffix.lower() == ".json":
            if re.fullmatch(r"transforms_(train|test|val)\.json", path.name):
                return "blender", path.parent, path.parent / "transforms_train.json"
            return "nerfstudio", path.parent, path
        if path.name.startswith(("cameras.", "images.", "points3D.")) and model_format(path.parent):
            path = path.parent
            found = _find_colmap_model(path)
            if found:
                return "colmap", found[1], found[0]
        raise InputError(path, "is not a scene file",
                         "give a dataset folder or a transforms.json file")
    if (path / "transforms.json").is_file():
        return "nerfstudio", path, path / "transforms.json"
    if (path / "transforms_train.json").is_file():
        return "blender", path, path / "transforms_train.json"
    found = _find_colmap_model(path)
    if found:
        return "colmap", found[1], found[0]
    if is_llff(path):
        return "llff", path, path / POSES_NAME
    looked = ["transforms.json (nerfstudio / instant-ngp)",
              "transforms_train.json (Blender NeRF-synthetic)"]
    looked += [f"{rel}/cameras.bin|txt + images.bin|txt (COLMAP)" if rel != "."
               else "cameras.bin|txt + images.bin|txt here (COLMAP)" for rel in COLMAP_MODEL_DIRS]
    looked.append("poses_bounds.npy + images/ (LLFF)")
    raise InputError(path, "no dataset found here; looked for: " + "; ".join(looked),
                     "run `splatforge sfm` on a folder of photos to make a COLMAP model")


# --------------------------------------------------------------------------------------------
# COLMAP datasets
# --------------------------------------------------------------------------------------------

def _list_image_dirs(base: Path) -> list[Path]:
    return sorted(p for p in base.glob("images*") if p.is_dir())


def _folder_matches(folder: Path, images: list[ColmapImage], cameras: dict[int, ColmapCamera]
                    ) -> bool:
    for im in images:
        p = folder / im.name
        if not p.is_file():
            return False
        try:
            size = image_size(p)
        except InputError:
            return False
        cam = cameras[im.camera_id]
        if size != (cam.width, cam.height):
            return False
    return True


def _colmap_image_folder(base: Path, config: SceneConfig, images: list[ColmapImage],
                         cameras: dict[int, ColmapCamera], images_file: Path,
                         rep: StageReporter) -> tuple[Path, bool]:
    """(image folder, prescaled) for a COLMAP dataset; see :func:`load_scene`."""
    factor = config.data_factor
    name = config.images or "images"
    join_inside(base, name, "scene.images")
    if factor > 1 and (base / f"{name}_{factor}").is_dir():
        join_inside(base, f"{name}_{factor}", "scene.images")
        return base / f"{name}_{factor}", True
    folder = base / name
    if folder.is_dir():
        return folder, False
    others = [p for p in _list_image_dirs(base) if p != folder]
    if config.images is None:
        matching = [p for p in others if _folder_matches(p, images, cameras)]
        if len(matching) == 1:
            rep.info(f"no {name}/ folder; using {matching[0].name}/, whose images match the "
                     f"camera sizes in {images_file.name}", folder=str(matching[0]))
            return matching[0], False
    listed = ", ".join(p.name + "/" for p in others) or "none"
    raise InputError(folder, "image folder not found",
                     f"image folders in {base}: {listed}; choose one with the `images` option "
                     "(INRIA's --images)")


def _read_colmap(root: Path, model_dir: Path, config: SceneConfig, rep: StageReporter
                 ) -> tuple[list[RawView], np.ndarray, np.ndarray, dict[str, Any]]:
    ext = model_format(model_dir)
    model = read_model(model_dir, ext=ext, read_points2D=False)
    images_file = model_dir / f"images{ext}"
    cameras_file = model_dir / f"cameras{ext}"
    if not model.images:
        raise InputError(images_file, "the model has no registered images")
    ims = sorted(model.images.values(), key=lambda im: im.name)
    # every name must lie inside the image folder before any file is touched
    for im in ims:
        join_inside(root / (config.images or "images"), im.name,
                       f"{images_file.name} image name")
    folder, prescaled = _colmap_image_folder(root, config, ims, model.cameras, images_file, rep)
    for im in ims:
        join_inside(folder, im.name, f"{images_file.name} image name")
    mask_dir = find_mask_dir(root, root, config.masks)
    masks = match_masks(mask_dir, [im.name for im in ims]) if mask_dir else [None] * len(ims)
    views = []
    for im, mask in zip(ims, masks):
        views.append(RawView(name=im.name, path=folder / im.name,
                             camera=model.cameras[im.camera_id], viewmat=im.viewmat(),
                             camera_id=im.camera_id, source=images_file,
                             camera_source=cameras_file, prescaled=prescaled, mask_path=mask))
    pts = model.points3D
    info = {"model": str(model_dir), "image_folder": str(folder)}
    if mask_dir is not None:
        info["mask_folder"] = str(mask_dir)
    return views, pts.xyz.astype(np.float32), pts.rgb.astype(np.uint8), info


# --------------------------------------------------------------------------------------------
# The common pipeline
# --------------------------------------------------------------------------------------------

def _cache_rel(root: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        digest = hashlib.sha1(str(path.resolve().parent).encode()).hexdigest()[:10]
        return f"_external/{digest}/{path.name}"


def _build(views: list[RawView], points: np.ndarray, rgb: np.ndarray, fmt: str, root: Path,
           config: SceneConfig, rep: StageReporter, info: dict[str, Any]) -> Scene:
    # 1. camera models: fail before any work
    for v in views:
        if v.camera.model not in SUPPORTED_MODELS:
            raise InputError(
                v.camera_source,
                f"camera {v.camera_id} uses the {v.camera.model} camera model, which splatforge "
                "cannot undistort",
                f"supported: {', '.join(SUPPORTED_MODELS)}; undistort with COLMAP's "
                "image_undistorter first")
    # 2. every image file exists
    for v in views:
        if not v.path.is_file():
            raise InputError(v.path, f"image file not found (listed in {v.source.name} as "
                                     f"{v.name!r})",
                             f"{v.source} refers to it")
    cache = scene_cache_dir(root, config)
    factor = config.data_factor
    # 3. downsampling
    sizes: list[tuple[int, int] | None] = [None] * len(views)
    todo = [i for i, v in enumerate(views) if factor > 1 and not v.prescaled]
    n_down = 0
    if todo:
        rep.start_steps(f"downsampling {len(todo)} images by {factor}", len(todo))
        outs, out_sizes, n_down = downsample_cached(
            [views[i].path for i in todo], [_cache_rel(root, views[i].path) for i in todo],
            factor, cache / f"downsample_{factor}", progress=lambda k, n: rep.step(k))
        for i, p, s in zip(todo, outs, out_sizes):
            views[i].path, sizes[i] = p, s
        if n_down:
            rep.info(f"downsampled {n_down} images by {factor} into {cache}")
        else:
            rep.info(f"reused {len(todo)} downsampled images from {cache}")
    for i, v in enumerate(views):
        if sizes[i] is None:
            sizes[i] = image_size(v.path)
    # 4. cameras at the actual file size
    cams = []
    warned = False
    for v, (w, h) in zip(views, sizes):
        c = v.camera
        if not warned and (w, h) != (c.width, c.height):
            s = w / c.width
            if abs(h - c.height * s) > 1.0 + 0.01 * h:
                rep.warning(f"{v.path}: image is {w}x{h} but its camera is {c.width}x{c.height} "
                            "(another aspect ratio); intrinsics are scaled per axis",
                            path=str(v.path))
                warned = True
        cams.append(scale_camera(c, w, h))
    # 5. undistortion
    need = [i for i, c in enumerate(cams) if c.model in UNDISTORTABLE_MODELS]
    need_set = set(need)
    pre_sizes = list(sizes)
    pre_cams = list(cams)
    if need:
        jobs = [UndistortJob(views[i].path, cams[i]) for i in need]
        results, reused = undistort_cached(jobs, cache, tag=f"f{factor}", reporter=rep)
        rep.info(("reused" if reused else "made") + f" {len(need)} undistorted images in {cache}")
        for i, r in zip(need, results):
            views[i].path = r.path
            cams[i] = r.camera
            sizes[i] = (r.camera.width, r.camera.height)
    # 5b. masks: resampled to the size their image had before undistortion (the same Lanczos
    # downsampling), then undistorted with the image's camera
    masks = [v.mask_path for v in views]
    with_mask = [i for i, m in enumerate(masks) if m is not None]
    if with_mask:
        pre = [pre_sizes[i] for i in with_mask]
        out = resample_masks([masks[i] for i in with_mask],
                             [_cache_rel(root, masks[i]) for i in with_mask], pre,
                             cache / f"masks_f{factor}")
        for i, m in zip(with_mask, out):
            masks[i] = m
        und = [i for i in with_mask if i in need_set]
        if und:
            mjobs = [UndistortJob(masks[i], pre_cams[i]) for i in und]
            mres, _ = undistort_cached(mjobs, cache, tag=f"masks-f{factor}", reporter=None)
            for i, r in zip(und, mres):
                masks[i] = r.path
        rep.info(f"{len(with_mask)} of {len(views)} images have a mask",
                 masks=len(with_mask))
    # 6. SceneImages sorted by name
    images: list[SceneImage] = []
    for i, v in enumerate(views):
        w, h = sizes[i]
        images.append(SceneImage(name=v.name, path=v.path, width=w, height=h,
                                 K=pinhole_K(cams[i]), viewmat=np.asarray(v.viewmat, np.float64),
                                 camera_id=v.camera_id, mask_path=masks[i]))
    order = sorted(range(len(images)), key=lambda i: images[i].name)
    images = [images[i] for i in order]
    splits = [views[i].split for i in order]
    # 7. split
    if any(s is not None for s in splits):
        train = [i for i, s in enumerate(splits) if s == "train"]
        test = [i for i, s in enumerate(splits) if s == "test"]
    else:
        train, test = holdout_split([im.name for im in images], config.test_every)
    # 8. normalisation
    points = np.asarray(points, np.float32).reshape(-1, 3)
    rgb = np.asarray(rgb, np.uint8).reshape(-1, 3)
    T = np.eye(4)
    if config.normalize and images:
        T = normalization_transform(np.stack([im.camera_center for im in images]))
        for im in images:
            im.viewmat = apply_similarity_to_viewmat(im.viewmat, T)
        points = (points.astype(np.float64) @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
    scene = Scene(images=images, points=points, points_rgb=rgb, train_indices=train,
                  test_indices=test, transform=T, source_format=fmt, root=root,
                  background=tuple(float(c) for c in config.background))
    models = Counter(v.camera.model for v in views)
    info.update(
        format=fmt, cache_dir=str(cache), data_factor=factor,
        source_camera_models=dict(models), undistorted=len(need), downsampled=len(todo),
        normalized=bool(config.normalize),
    )
    scene.info = info
    return scene


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

def load_scene(path: str | Path, config: SceneConfig | None = None,
               events: EventCallback | None = None) -> Scene:
    """Read a dataset into a :class:`Scene`, auto-detecting its format.

    Args:
        path: a dataset folder (nerfstudio/instant-ngp ``transforms.json``, Blender
            ``transforms_train.json``, a COLMAP layout or a splatforge workspace), or a
            ``transforms*.json`` file.
        config: :class:`SceneConfig` (defaults when None):

            * ``images``: COLMAP image folder name (default ``images``). When the default
              folder is missing and exactly one other ``images*`` folder holds every image at
              its camera's size, that folder is used (plush_dog's ``images_4``).
            * ``data_factor`` N: ``<images>_N/`` (nerfstudio: ``images_N/``) when present,
              else Lanczos copies of size ``round(W/N) x round(H/N)`` in the cache.
            * ``test_every``: hold-out every N-th image by sorted name (Blender: its split).
            * ``normalize``: see :func:`normalization_transform`.
            * ``background``: recorded in the scene for :func:`load_image`.
            * ``cache_dir``: see :func:`scene_cache_dir`.
        events: optional callback; the ``scene`` stage reports info, warnings and progress.

    Returns:
        A :class:`Scene` whose images are sorted by name, with PINHOLE ``K`` [3, 3] in pixels
        of the files at ``SceneImage.path`` (downsampled/undistorted copies where needed),
        viewmats [4, 4] world-to-camera in OpenCV axes, points [P, 3] float32 (P may be 0)
        and colours [P, 3] uint8.

    Raises:
        InputError: unknown layout, malformed model/JSON/PLY files, missing or undecodable
            image files, unsupported camera models (THIN_PRISM_FISHEYE, FOV, ...). Each names
            the offending file.
    """
    config = config or SceneConfig()
    rep = StageReporter("scene", events)
    fmt, root, desc = detect_format(path)
    root, desc = Path(os.path.abspath(root)), Path(os.path.abspath(desc))
    rep.started(f"reading {fmt} dataset {root}", format=fmt, root=str(root))
    if fmt == "nerfstudio":
        views, meta = read_nerfstudio(desc, config.data_factor)
        points, rgb = read_nerfstudio_points(desc, meta)
        info: dict[str, Any] = {"transforms": str(desc)}
    elif fmt == "blender":
        views = read_blender(root)
        points, rgb = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        info = {"transforms": str(desc)}
    elif fmt == "llff":
        views, points, rgb, info = read_llff(root, config)
        mask_dir = find_mask_dir(root, root, config.masks)
        if mask_dir is not None:
            for v, m in zip(views, match_masks(mask_dir, [v.name for v in views])):
                v.mask_path = m
            info["mask_folder"] = str(mask_dir)
    else:
        views, points, rgb, info = _read_colmap(root, desc, config, rep)
        if (root / "sfm.json").is_file():
            info["workspace"] = True
    scene = _build(views, points, rgb, fmt, root, config, rep, info)
    rep.finished(f"{len(scene.images)} images, {len(scene.points)} points",
                 images=len(scene.images), points=int(len(scene.points)))
    return scene


def scene_summary(scene: Scene) -> dict[str, Any]:
    """The facts :func:`describe_scene` prints, as a JSON-friendly dict."""
    info = scene.info
    sizes = Counter((im.width, im.height) for im in scene.images)
    cams = {im.camera_id for im in scene.images}
    K = [im.K for im in scene.images]
    simple = bool(K) and all(abs(k[0, 0] - k[1, 1]) <= 1e-6 * abs(k[0, 0]) for k in K)
    return {
        "format": scene.source_format,
        "root": str(scene.root),
        "num_images": len(scene.images),
        "num_train": len(scene.train_indices),
        "num_test": len(scene.test_indices),
        "image_sizes": {f"{w}x{h}": n for (w, h), n in sorted(sizes.items())},
        "num_cameras": len(cams),
        "camera_model": "PINHOLE" + (" (fx = fy)" if simple else ""),
        "source_camera_models": info.get("source_camera_models", {}),
        "undistorted_images": info.get("undistorted", 0),
        "num_points": int(len(scene.points)),
        "normalized": not np.allclose(scene.transform, np.eye(4)),
        "scale": scene.scale,
        "extent": scene.extent(),
        "data_factor": info.get("data_factor"),
        "image_folder": info.get("image_folder"),
        "model": info.get("model") or info.get("transforms"),
        "cache_dir": info.get("cache_dir"),
    }


def describe_scene(scene: Scene) -> str:
    """A readable multi-line summary of a scene (``splatforge info <path>``)."""
    s = scene_summary(scene)
    sizes = ", ".join(f"{k} x{n}" for k, n in s["image_sizes"].items())
    src_models = ", ".join(f"{m} ({n} images)" for m, n in s["source_camera_models"].items())
    lines = [
        f"format:       {s['format']}",
        f"root:         {s['root']}",
    ]
    if s["model"]:
        lines.append(f"read from:    {s['model']}")
    if s["image_folder"]:
        lines.append(f"image folder: {s['image_folder']}")
    lines += [
        f"images:       {s['num_images']} (train {s['num_train']}, test {s['num_test']})",
        f"image sizes:  {sizes or '-'}" + (f" (data_factor {s['data_factor']})"
                                           if s["data_factor"] and s["data_factor"] > 1 else ""),
        f"cameras:      {s['num_cameras']}, {s['camera_model']}"
        + (f"; source model {src_models}" if src_models else "")
        + (f"; {s['undistorted_images']} images undistorted" if s["undistorted_images"] else ""),
        f"points:       {s['num_points']}" + ("" if s["num_points"] else
                                               " (Gaussians will be initialised randomly)"),
        f"extent:       {s['extent']:.4g} scene units (1.1 x the largest camera distance "
        "from their mean)",
        "normalised:   " + (f"yes (x_scene = {s['scale']:.4g} * (x_source - mean camera "
                             "centre))" if s["normalized"] else "no"),
    ]
    if s["cache_dir"]:
        lines.append(f"cache:        {s['cache_dir']}")
    return "\n".join(lines)
