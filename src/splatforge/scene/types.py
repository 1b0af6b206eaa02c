"""The one in-memory scene type that every dataset reader produces.

Conventions (as gsplat and COLMAP): ``viewmat`` is world-to-camera with OpenCV camera axes
(x right, y down, z forward); ``K`` is the 3x3 pinhole intrinsic matrix in pixels of the image
as it will be loaded (after undistortion and ``data_factor`` downsampling); ``camtoworld`` is
the inverse of ``viewmat``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class SceneImage:
    """One posed image.

    Attributes:
        name: image name relative to the image folder (COLMAP's ``name``), e.g. ``"0001.jpg"``.
        path: file to load (already undistorted and downsampled when needed).
        width, height: size in pixels of the file at ``path``.
        K: [3, 3] float64 pinhole intrinsics in pixels (fx, fy, cx, cy).
        viewmat: [4, 4] float64 world-to-camera, OpenCV axes.
        camera_id: id of the shared camera (COLMAP camera id, or 1 for a single camera).
        mask_path: optional mask (white = keep) of the same size.
    """

    name: str
    path: Path
    width: int
    height: int
    K: np.ndarray
    viewmat: np.ndarray
    camera_id: int = 1
    mask_path: Path | None = None

    @property
    def camtoworld(self) -> np.ndarray:
        """[4, 4] camera-to-world matrix (OpenCV axes)."""
        return np.linalg.inv(self.viewmat)

    @property
    def camera_center(self) -> np.ndarray:
        """[3] camera position in world units."""
        R = self.viewmat[:3, :3]
        t = self.viewmat[:3, 3]
        return -R.T @ t


@dataclass
class Scene:
    """A posed image set with optional SfM points.

    Attributes:
        images: every image, sorted by name.
        points: [P, 3] float32 SfM points in world units (P may be 0).
        points_rgb: [P, 3] uint8 colours of ``points``.
        train_indices: indices into ``images`` used for training.
        test_indices: indices into ``images`` held out for evaluation.
        transform: [4, 4] float64 similarity applied to the source frame
            (``x_scene = transform @ x_source``); identity when not normalised. Exports apply
            its inverse to write splats in the original (COLMAP) frame.
        source_format: ``colmap`` | ``nerfstudio`` | ``blender``.
        root: the dataset folder that was read.
        background: RGB in [0, 1] that RGBA images are composited on.
        info: reader details for ``splatforge info`` (source camera models, image folder,
            cache folder, data_factor, ...).
    """

    images: list[SceneImage]
    points: np.ndarray
    points_rgb: np.ndarray
    train_indices: list[int]
    test_indices: list[int]
    transform: np.ndarray = field(default_factory=lambda: np.eye(4))
    source_format: str = "colmap"
    root: Path = Path(".")
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    info: dict = field(default_factory=dict)

    @property
    def scale(self) -> float:
        """Similarity scale of ``transform`` (1.0 when not normalised)."""
        return float(np.cbrt(abs(np.linalg.det(self.transform[:3, :3]))))

    def camera_centers(self) -> np.ndarray:
        """[C, 3] camera positions in scene units."""
        return np.stack([im.camera_center for im in self.images]) if self.images else np.zeros((0, 3))

    def extent(self) -> float:
        """INRIA's ``cameras_extent``: 1.1 x the largest camera distance from their mean."""
        c = self.camera_centers()
        if len(c) == 0:
            return 1.0
        return float(1.1 * np.linalg.norm(c - c.mean(0), axis=1).max())

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """Map [N, 3] scene-frame points back to the source (e.g. COLMAP) frame."""
        inv = np.linalg.inv(self.transform)
        return points @ inv[:3, :3].T + inv[:3, 3]
