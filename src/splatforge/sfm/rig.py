"""COLMAP rigs for 360 frames: the pinhole views of one equirectangular frame share one pose.

COLMAP 4 (pycolmap 4.x) models a multi-camera capture as *rigs* (sensors with a fixed
``sensor_from_rig``) and *frames* (one rig pose per capture instant, holding one image per
sensor). :func:`apply_view_rig` writes one rig whose sensors are the views of
:func:`splatforge.ingest.equirect.make_views`, their ``cam_from_rig`` fixed to the known
rotations (the views share the 360 camera's centre, so the translations are zero), and groups
``<view>/<frame>.jpg`` images with the same ``<frame>`` into one frame
(``pycolmap.apply_rig_config``, COLMAP ``src/colmap/sensor/rig.h``). The mapper then estimates
one ``rig_from_world`` per frame; the bundle adjuster keeps ``sensor_from_rig`` fixed
(:data:`RIG_MAPPER_OPTIONS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..ingest.equirect import PinholeView

#: IncrementalPipelineOptions for rigs of known geometry: the view rotations and the ideal
#: pinhole intrinsics of the resampled views are exact, so bundle adjustment keeps them.
RIG_MAPPER_OPTIONS = {
    "ba_refine_sensor_from_rig": False,
    "ba_refine_focal_length": False,
    "ba_refine_principal_point": False,
    "ba_refine_extra_params": False,
}


def camera_params(view: PinholeView) -> str:
    """``fx,fy,cx,cy`` of the view's PINHOLE camera, as ImageReaderOptions.camera_params."""
    f, c = view.focal, view.size / 2.0
    return f"{f!r},{f!r},{c!r},{c!r}"


def apply_view_rig(pycolmap: Any, db_path: Path, views: list[PinholeView]) -> int:
    """Make ``views`` one rig in the database and group their images into frames.

    Args:
        pycolmap: the imported module.
        db_path: database whose images are named ``<view.name>/<frame>`` (features
            extracted, one camera per view).
        views: the views, the first being the rig's reference sensor.

    Returns:
        Number of frames in the database afterwards.
    """
    cams = []
    for i, view in enumerate(views):
        rc = pycolmap.RigConfigCamera()
        rc.image_prefix = f"{view.name}/"
        rc.ref_sensor = i == 0
        rc.cam_from_rig = pycolmap.Rigid3d(
            np.hstack([view.cam_from_rig, np.zeros((3, 1))]))
        cams.append(rc)
    cfg = pycolmap.RigConfig()
    cfg.cameras = cams
    with pycolmap.Database.open(db_path) as db:
        pycolmap.apply_rig_config([cfg], db)
        return db.num_frames()
