"""Known poses instead of incremental mapping: triangulate the matches with fixed poses.

A capture device (ARKit, a motion-capture rig) or an earlier reconstruction often knows every
camera's pose already. :func:`read_pose_priors` reads such poses from a nerfstudio /
instant-ngp / ARKit-style ``transforms.json`` (``transform_matrix`` = camera-to-world in
OpenGL axes, as nerfstudio's ``process_data`` writes ARKit poses) or from a COLMAP model
(``cameras``/``images`` ``.bin`` or ``.txt``). :func:`triangulate_with_priors` loads the
database's cameras, rigs and frames into a ``pycolmap.Reconstruction`` (``DatabaseCache``),
gives every frame its known pose, and runs COLMAP's point triangulator
(``pycolmap.triangulate_points``, COLMAP ``src/colmap/controllers/automatic_reconstruction``'s
``point_triangulator``) over the verified matches; optionally a bundle adjustment then refines
poses and points together. Feature extraction and matching are the usual steps; only mapping is
replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import InputError, SfmError
from ..events import StageReporter
from .mapping import empty_image_dir

#: OpenGL <-> OpenCV camera axes (flip y and z); its own inverse.
_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class PosePrior:
    """One known camera.

    Attributes:
        name: image name as the pose file gives it (relative, POSIX).
        model: COLMAP camera model name of its intrinsics.
        width, height: image size in pixels the intrinsics refer to.
        params: COLMAP-order intrinsics (pixels).
        viewmat: [4, 4] float64 world-to-camera, OpenCV axes (COLMAP's ``cam_from_world``).
    """

    name: str
    model: str
    width: int
    height: int
    params: np.ndarray
    viewmat: np.ndarray


def find_prior_model(path: Path) -> tuple[str, Path]:
    """``("transforms", file)`` or ``("colmap", folder)`` for a pose file or model folder.

    A folder is searched as COLMAP lays models out: the folder itself, ``sparse/0``,
    ``sparse``, then ``transforms.json`` inside it.

    Raises:
        InputError: nothing usable at ``path``.
    """
    from ..scene.colmap import model_format

    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "transforms", path
        raise InputError(path, "not a pose file (give a transforms.json or a folder with a "
                               "COLMAP model: cameras.bin/images.bin or .txt)")
    if path.is_dir():
        for cand in (path, path / "sparse" / "0", path / "sparse"):
            if model_format(cand) is not None:
                return "colmap", cand
        if (path / "transforms.json").is_file():
            return "transforms", path / "transforms.json"
    raise InputError(path, "no pose priors found (looked for a COLMAP model in it, sparse/0, "
                           "sparse, and transforms.json)")


def read_pose_priors(path: Path, world_to_cam: bool = False) -> list[PosePrior]:
    """Known poses and intrinsics from a ``transforms.json`` or a COLMAP model.

    Args:
        path: a ``transforms.json`` file, or a folder (see :func:`find_prior_model`).
        world_to_cam: transforms.json only: ``transform_matrix`` holds world-to-camera
            (OpenGL axes) rather than camera-to-world (the AWS toolbox's
            ``poseIsWorldToCam``).

    Returns:
        One :class:`PosePrior` per image, in file order.

    Raises:
        InputError: a missing, malformed or empty pose file (naming it).
    """
    kind, src = find_prior_model(path)
    out: list[PosePrior] = []
    if kind == "colmap":
        from ..scene.colmap import read_model

        model = read_model(src, read_points2D=False)
        for im in sorted(model.images.values(), key=lambda i: i.name):
            cam = model.cameras[im.camera_id]
            out.append(PosePrior(im.name, cam.model, cam.width, cam.height, cam.params.copy(),
                                 im.viewmat()))
    else:
        from ..scene.transforms import read_nerfstudio

        views, _ = read_nerfstudio(src)
        for v in views:
            vm = v.viewmat
            if world_to_cam:
                # read_nerfstudio computed inv(M @ FLIP) from M = world-to-camera (GL);
                # the camera's world-to-camera in OpenCV axes is FLIP @ M.
                vm = _FLIP @ np.linalg.inv(_FLIP @ vm)
            c = v.camera
            out.append(PosePrior(v.name, c.model, c.width, c.height, c.params.copy(), vm))
    if not out:
        raise InputError(src, "the pose file lists no images")
    return out


def _key(name: str) -> str:
    """Match names across a pose file and the ingested frames: folder-less stem, lower case
    (ingest writes ``<stem>.jpg``/``.png``)."""
    return PurePosixPath(name.replace("\\", "/")).stem.lower()


def match_priors(priors: list[PosePrior], db_names: list[str]) -> dict[str, PosePrior]:
    """Database image name -> its prior (exact name first, then the file stem)."""
    exact = {p.name: p for p in priors}
    by_stem: dict[str, PosePrior] = {}
    for p in priors:
        by_stem.setdefault(_key(p.name), p)
    out = {}
    for n in db_names:
        p = exact.get(n) or by_stem.get(_key(n))
        if p is not None:
            out[n] = p
    return out


def _scaled_params(p: PosePrior, width: int, height: int) -> np.ndarray:
    """``p.params`` for an image of ``width x height`` (focal lengths and principal point
    scale with the image; distortion terms do not)."""
    from ..scene.colmap import ColmapCamera
    from ..scene.loader import scale_camera

    if (width, height) == (p.width, p.height):
        return p.params
    cam = scale_camera(ColmapCamera(0, p.model, p.width, p.height, p.params), width, height)
    return cam.params


def triangulate_with_priors(pycolmap: Any, priors: list[PosePrior], db_path: Path,
                            image_dir: Path, out: Path, *, refine: bool, num_threads: int,
                            rep: StageReporter) -> Any:
    """A model with the known poses and points triangulated from the database's matches.

    The database must have one camera per image (``CameraMode.PER_IMAGE``): each camera is set
    to its prior's intrinsics (scaled to the image size) before triangulation.

    Args:
        pycolmap: the imported module.
        priors: from :func:`read_pose_priors`.
        db_path: COLMAP database with features and verified matches.
        image_dir: the images (named in the error message; the points are coloured later,
            by the undistortion step).
        out: folder for the triangulated model (created).
        refine: run a global bundle adjustment (poses, points; intrinsics fixed) afterwards.
        num_threads: triangulator threads (-1 = all cores).
        rep: where progress and warnings go.

    Returns:
        The ``pycolmap.Reconstruction``.

    Raises:
        SfmError: fewer than 3 images have a prior.
    """
    with pycolmap.Database.open(db_path) as db:
        images = db.read_all_images()
        names = [im.name for im in images]
        matched = match_priors(priors, names)
        if len(matched) < 3:
            raise SfmError(
                f"only {len(matched)} of {len(names)} images have a pose in the pose priors "
                f"(names compared by file stem, e.g. {names[:1]} vs "
                f"{[p.name for p in priors[:1]]}); at least 3 are needed")
        for im in images:
            p = matched.get(im.name)
            if p is None:
                continue
            cam = db.read_camera(im.camera_id)
            new = pycolmap.Camera(model=p.model, width=cam.width, height=cam.height,
                                  params=_scaled_params(p, cam.width, cam.height),
                                  camera_id=cam.camera_id)
            new.has_prior_focal_length = True
            db.update_camera(new)
        cache = pycolmap.DatabaseCache.create(db, pycolmap.DatabaseCacheOptions())
    missing = len(names) - len(matched)
    if missing:
        rep.warning(f"{missing} of {len(names)} images have no pose prior and stay "
                    "unregistered")
    rec = pycolmap.Reconstruction()
    rec.load(cache)
    by_id = {im.image_id: matched.get(im.name) for im in images}
    for frame_id, frame in rec.frames.items():
        ids = [d.id for d in frame.data_ids if d.sensor_id.type == pycolmap.SensorType.CAMERA]
        pri = [by_id.get(i) for i in ids]
        if not ids or pri[0] is None:
            continue
        vm = pri[0].viewmat
        cam_from_world = pycolmap.Rigid3d(vm[:3, :4])
        # A trivial rig: rig_from_world == cam_from_world of its one (reference) camera.
        frame.rig_from_world = cam_from_world
        rec.register_frame(frame_id)
    out.mkdir(parents=True, exist_ok=True)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = num_threads
    rep.info(f"triangulating with {len(matched)} known poses")
    rec = pycolmap.triangulate_points(rec, db_path, empty_image_dir(out), out, clear_points=True,
                                      options=opts, refine_intrinsics=False)
    if refine:
        ba = pycolmap.BundleAdjustmentOptions()
        ba.refine_focal_length = False
        ba.refine_principal_point = False
        ba.refine_extra_params = False
        rep.info("bundle adjustment of the known poses")
        pycolmap.bundle_adjustment(rec, ba)
    if rec.num_points3D() == 0:
        raise SfmError(f"{image_dir}: no points could be triangulated with the given poses "
                       "(do the pose priors belong to these images?)")
    return rec
