"""The reader-neutral record every format parser produces before resampling (internal)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .colmap import ColmapCamera


@dataclass
class RawView:
    """One posed image as a dataset describes it, before downsampling and undistortion.

    Attributes:
        name: unique name (COLMAP: relative to the image folder; transforms: ``file_path``).
        path: the file to read (may already be an ``images_N`` copy, see ``prescaled``).
        camera: its camera, possibly distorted, at ``camera.width x camera.height`` (the
            pipeline rescales it to the actual file size).
        viewmat: [4, 4] float64 world-to-camera, OpenCV axes.
        camera_id: id shared by images of one camera.
        source: the file that listed this image (named in errors).
        camera_source: the file that defined its camera (named in camera-model errors).
        prescaled: ``path`` is already the data_factor copy (an ``images_N`` folder).
        split: ``"train"`` / ``"test"`` / ``"val"`` when the dataset fixes the split.
        mask_path: optional mask file (kept only when the image is not resampled).
    """

    name: str
    path: Path
    camera: ColmapCamera
    viewmat: np.ndarray
    camera_id: int
    source: Path
    camera_source: Path
    prescaled: bool = False
    split: str | None = None
    mask_path: Path | None = None
