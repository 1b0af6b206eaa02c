"""What the viewer shows, read from files: splats, training cameras and SfM points.

Everything is in the ORIGINAL source frame (COLMAP's world, or the transforms.json world), the
frame of the PLYs the trainer writes and of ``cameras.json`` / ``input.ply`` in an INRIA model
folder (see :mod:`splatforge.export.model_dir`).

Accepted inputs (:func:`load_view_source`):

* a splat file: ``.ply`` (INRIA / gsplat / SuperSplat compressed), ``.splat``, ``.spz``
  (v1-v4), ``.sog`` (PlayCanvas SOG bundle) or a SOG ``meta.json`` (or a folder holding one);
  the ``cameras.json`` / ``input.ply`` of its folder (or of its model folder, for
  ``point_cloud/iteration_N/point_cloud.ply``) are shown too when they are there;
* an INRIA model folder (``point_cloud/iteration_N/point_cloud.ply``; the latest N is shown,
  with ``cameras.json`` and ``input.ply``);
* a ``reconstruct`` output folder (``<out>/model``) or a dataset / SfM workspace without
  splats (cameras and SfM points only, read by :func:`splatforge.scene.load_scene`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..export.model_dir import ModelDir

#: Zeroth-order SH basis constant ``1 / (2 sqrt(pi))`` (INRIA ``utils/sh_utils.py`` ``C0``).
SH_C0 = 0.28209479177387814

#: Default number of splats above which the viewer shows a random subset.
DEFAULT_MAX_SPLATS = 1_000_000


@dataclass
class ViewCamera:
    """One training camera to draw as a frustum.

    Attributes:
        name: image name.
        camtoworld: [4, 4] float64 camera-to-world, OpenCV axes (x right, y down, z forward).
        width, height: image size in pixels.
        fx, fy: focal lengths in pixels.
    """

    name: str
    camtoworld: np.ndarray
    width: int
    height: int
    fx: float
    fy: float

    @property
    def fov_y(self) -> float:
        """Vertical field of view in radians: ``2 atan(H / (2 fy))`` (pinhole model)."""
        return float(2.0 * np.arctan2(self.height / 2.0, self.fy))

    @property
    def aspect(self) -> float:
        """Width / height."""
        return float(self.width) / float(self.height)


@dataclass
class ViewSource:
    """Everything the viewer shows for one input.

    Attributes:
        name: short label (file or folder name).
        path: the input as given.
        splats: raw splat parameters (``means [N, 3]``, ``scales [N, 3]`` log, ``quats [N, 4]``
            wxyz, ``opacities [N]`` logit, ``sh0 [N, 1, 3]``, ...) or None (cameras/points only).
        splats_path: the splat file read, or None.
        cameras: training cameras (may be empty).
        points: [P, 3] float32 SfM points (P may be 0). points_rgb: [P, 3] uint8.
    """

    name: str
    path: Path
    splats: dict[str, np.ndarray] | None = None
    splats_path: Path | None = None
    cameras: list[ViewCamera] = field(default_factory=list)
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    points_rgb: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))


def latest_point_cloud(model_dir: Path) -> Path | None:
    """``<model_dir>/point_cloud/iteration_N/point_cloud.ply`` with the largest N, or None."""
    return ModelDir(model_dir).latest_point_cloud()


def read_cameras_json(path: Path) -> list[ViewCamera]:
    """Read an INRIA ``cameras.json`` (see :func:`splatforge.export.model_dir.camera_entries`).

    Raises:
        InputError: not JSON, or an entry without position/rotation/width/height/fx/fy.
    """
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read cameras.json ({e})") from e
    cams = []
    for i, e in enumerate(entries if isinstance(entries, list) else []):
        try:
            c2w = np.eye(4)
            c2w[:3, :3] = np.asarray(e["rotation"], np.float64).reshape(3, 3)
            c2w[:3, 3] = np.asarray(e["position"], np.float64).reshape(3)
            cams.append(ViewCamera(str(e.get("img_name", i)), c2w, int(e["width"]),
                                   int(e["height"]), float(e["fx"]), float(e["fy"])))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(path, f"camera entry {i} is malformed ({err!r})",
                             "expected INRIA cameras.json entries") from err
    return cams


def read_points_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read SfM points from an INRIA ``input.ply`` (``x y z`` and ``red green blue``).

    Returns:
        points [P, 3] float32 and colours [P, 3] uint8 (grey when the file has none).

    Raises:
        InputError: unreadable PLY or no ``vertex`` x/y/z.
    """
    from plyfile import PlyData

    try:
        v = PlyData.read(str(path))["vertex"]
        xyz = np.stack([np.asarray(v[k], np.float32) for k in "xyz"], 1)
    except Exception as e:  # plyfile raises many types for malformed files
        raise InputError(path, f"cannot read SfM points ({e})") from e
    names = v.data.dtype.names or ()
    if all(k in names for k in ("red", "green", "blue")):
        rgb = np.stack([np.asarray(v[k]) for k in ("red", "green", "blue")], 1).astype(np.uint8)
    else:
        rgb = np.full((len(xyz), 3), 128, np.uint8)
    return xyz, rgb


def _add_model_dir_extras(src: ViewSource, folder: Path) -> None:
    files = ModelDir(folder)
    if files.cameras.is_file():
        src.cameras = read_cameras_json(files.cameras)
    if files.input_ply.is_file():
        src.points, src.points_rgb = read_points_ply(files.input_ply)


def scene_cameras(scene) -> list[ViewCamera]:
    """Cameras of a loaded :class:`splatforge.scene.Scene`, in its SOURCE frame (the scene's
    normalisation ``x_scene = s x_source + b`` undone: positions mapped back, rotations kept)."""
    inv = np.linalg.inv(np.asarray(scene.transform, np.float64))
    s = scene.scale
    cams = []
    for im in scene.images:
        c2w = np.linalg.inv(np.asarray(im.viewmat, np.float64))
        out = np.eye(4)
        out[:3, :3] = (inv[:3, :3] * s) @ c2w[:3, :3]
        out[:3, 3] = inv[:3, :3] @ c2w[:3, 3] + inv[:3, 3]
        cams.append(ViewCamera(im.name, out, int(im.width), int(im.height),
                               float(im.K[0, 0]), float(im.K[1, 1])))
    return cams


def scene_points(scene) -> tuple[np.ndarray, np.ndarray]:
    """SfM points [P, 3] float32 (source frame) and colours [P, 3] uint8 of a loaded scene."""
    pts = np.asarray(scene.points, np.float64).reshape(-1, 3)
    return scene.to_source(pts).astype(np.float32), np.asarray(scene.points_rgb, np.uint8)


def load_view_source(path: str | Path) -> ViewSource:
    """Read what to show for ``path`` (see the module docstring for the accepted inputs).

    Raises:
        InputError: missing path, unknown file type, unreadable splats/cameras, or a folder
            that is neither a model folder nor a readable dataset.
    """
    from ..export import SPLAT_EXTENSIONS, read_splats, splat_format
    from ..export.sog import META_NAME

    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist",
                         "give a .ply/.splat/.spz/.sog file, a model folder or a workspace")
    if path.is_dir() and (path / META_NAME).is_file():  # an unbundled SOG scene
        return ViewSource(path.name, path, read_splats(path), path / META_NAME)
    if path.is_file():
        try:
            splat_format(path)
        except InputError:
            raise InputError(path, f"unknown file type {path.suffix!r}",
                             f"expected one of {', '.join(sorted(SPLAT_EXTENSIONS))} or a "
                             "SOG meta.json") from None
        src = ViewSource(path.name, path, read_splats(path), path)
        folder = path.parent
        if folder.parent.name == "point_cloud":  # <model>/point_cloud/iteration_N/x.ply
            folder = folder.parent.parent
        _add_model_dir_extras(src, folder)
        return src
    folder = path
    if latest_point_cloud(folder) is None and latest_point_cloud(folder / "model") is not None:
        folder = folder / "model"  # a `reconstruct` output folder
    ply = latest_point_cloud(folder)
    if ply is not None:
        src = ViewSource(path.name or str(path), path, read_splats(ply), ply)
        _add_model_dir_extras(src, folder)
        return src
    for name in ("workspace", "."):  # a reconstruct output without a model, or a dataset
        candidate = path / name
        if candidate.is_dir() and (name == "." or (candidate / "sparse").exists()):
            from ..config import SceneConfig
            from ..scene import load_scene

            try:
                scene = load_scene(candidate, SceneConfig(normalize=False))
            except InputError as e:
                raise InputError(path, "no splats (point_cloud/iteration_N/point_cloud.ply) "
                                 f"and not a readable dataset: {e}") from e
            src = ViewSource(path.name or str(path), path)
            src.cameras = scene_cameras(scene)
            src.points, src.points_rgb = scene_points(scene)
            return src
    raise InputError(path, "nothing to show")  # unreachable: "." always matches a folder


def quats_to_rotmats(quats: np.ndarray) -> np.ndarray:
    """[N, 4] quaternions (wxyz, any norm) -> [N, 3, 3] rotation matrices (normalised first;
    the standard unit-quaternion formula, as INRIA ``utils/general_utils.py build_rotation``)."""
    q = np.asarray(quats, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    w, x, y, z = q.T
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], 1).reshape(-1, 3, 3)


@dataclass
class DisplaySplats:
    """Splats in the form viser's ``add_gaussian_splats`` takes.

    Attributes:
        centers: [M, 3] float32. covariances: [M, 3, 3] float32. rgbs: [M, 3] float32 in
            [0, 1]. opacities: [M, 1] float32 in [0, 1].
        total: splats in the model (N, after dropping non-finite rows). shown: M <= total.
    """

    centers: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray
    total: int
    shown: int

    @property
    def subsampled(self) -> bool:
        return self.shown < self.total


def display_splats(splats: dict[str, np.ndarray], max_splats: int = DEFAULT_MAX_SPLATS,
                   seed: int = 0) -> DisplaySplats:
    """Turn raw splat parameters into viser's display form, subsampled above ``max_splats``.

    Covariance ``Sigma = R S S^T R^T`` with ``S = diag(exp(scales))`` and ``R`` from the quats
    (Kerbl et al. 2023, "3D Gaussian Splatting", eq. 6); colour is the view-independent DC term
    ``0.5 + SH_C0 sh0`` clipped to [0, 1] (INRIA ``SH2RGB``; the browser renderer has no view-
    dependent SH); opacity ``sigmoid(logit)``. Above ``max_splats`` a uniformly random subset
    of ``max_splats`` rows (fixed ``seed``) is kept, so the browser stays responsive.

    Args:
        splats: ``means [N, 3]``, ``scales [N, 3]`` (log), ``quats [N, 4]`` (wxyz),
            ``opacities [N]`` (logit), ``sh0 [N, 1, 3]`` (or ``[N, 3]``).
        max_splats: display budget (>= 1).

    Raises:
        ValueError: ``max_splats < 1`` or a missing/mis-shaped parameter.
    """
    if max_splats < 1:
        raise ValueError(f"max_splats must be >= 1, got {max_splats}")
    try:
        means = np.asarray(splats["means"], np.float32).reshape(-1, 3)
        n = len(means)
        scales = np.asarray(splats["scales"], np.float32).reshape(n, 3)
        quats = np.asarray(splats["quats"], np.float32).reshape(n, 4)
        opac = np.asarray(splats["opacities"], np.float32).reshape(n)
        sh0 = np.asarray(splats["sh0"], np.float32).reshape(n, 3)
    except (KeyError, ValueError) as e:
        raise ValueError(f"splats need means/scales/quats/opacities/sh0 of matching N: {e!r}"
                         ) from e
    ok = (np.isfinite(means).all(1) & np.isfinite(scales).all(1) & np.isfinite(quats).all(1)
          & np.isfinite(opac) & np.isfinite(sh0).all(1))
    idx = np.flatnonzero(ok)
    total = len(idx)
    if total > max_splats:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_splats, replace=False))
    R = quats_to_rotmats(quats[idx])
    s = np.exp(np.clip(scales[idx].astype(np.float64), -30.0, 30.0))
    M = R * s[:, None, :]  # R @ diag(s)
    cov = M @ np.transpose(M, (0, 2, 1))
    rgb = np.clip(0.5 + SH_C0 * sh0[idx], 0.0, 1.0)
    alpha = 1.0 / (1.0 + np.exp(-opac[idx].astype(np.float64)))
    return DisplaySplats(means[idx], cov.astype(np.float32), rgb.astype(np.float32),
                         alpha.astype(np.float32)[:, None], total, len(idx))


def up_direction(cameras: list[ViewCamera]) -> np.ndarray:
    """The scene's "up" guessed from the cameras: the normalised mean of their up vectors
    (``-y`` of each camera in OpenCV axes), as nerfstudio's ``auto_orient_and_center_poses``
    "up" method. ``[0, 0, 1]`` when there are no cameras or they cancel out."""
    if not cameras:
        return np.array([0.0, 0.0, 1.0])
    up = -np.mean([c.camtoworld[:3, 1] for c in cameras], axis=0)
    norm = np.linalg.norm(up)
    return up / norm if norm > 1e-9 else np.array([0.0, 0.0, 1.0])
