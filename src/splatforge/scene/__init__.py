"""Dataset readers: COLMAP (bin + txt), nerfstudio / instant-ngp and Blender transforms.json.

Every reader produces the one in-memory :class:`Scene` (see :mod:`splatforge.scene.types`):

>>> from splatforge.scene import load_scene, describe_scene, load_image
>>> scene = load_scene("datasets/plush_dog")                    # doctest: +SKIP
>>> print(describe_scene(scene))                                # doctest: +SKIP
>>> rgb = load_image(scene.images[0], scene.background)         # [H, W, 3] uint8

numpy is imported before anything that may load pycolmap (see shared/NOTES.md).
"""

import numpy  # noqa: F401  (import-order guard: numpy before pycolmap)

from .colmap import (
    CAMERA_MODELS,
    ColmapCamera,
    ColmapImage,
    ColmapModel,
    ColmapPoints3D,
    qvec_to_rotmat,
    read_cameras_binary,
    read_cameras_text,
    read_images_binary,
    read_images_text,
    read_model,
    read_points3D_binary,
    read_points3D_text,
    rotmat_to_qvec,
    write_cameras_binary,
    write_cameras_text,
    write_images_binary,
    write_images_text,
    write_model,
    write_points3D_binary,
    write_points3D_text,
)
from .imageio import image_size, load_image
from .loader import (
    describe_scene,
    detect_format,
    holdout_split,
    load_scene,
    normalization_transform,
    scene_cache_dir,
    scene_summary,
)
from .types import Scene, SceneImage

__all__ = [
    "CAMERA_MODELS", "ColmapCamera", "ColmapImage", "ColmapModel", "ColmapPoints3D",
    "Scene", "SceneImage", "describe_scene", "detect_format", "holdout_split", "image_size",
    "load_image", "load_scene", "normalization_transform", "qvec_to_rotmat",
    "read_cameras_binary", "read_cameras_text", "read_images_binary", "read_images_text",
    "read_model", "read_points3D_binary", "read_points3D_text", "rotmat_to_qvec",
    "scene_cache_dir", "scene_summary", "write_cameras_binary", "write_cameras_text",
    "write_images_binary", "write_images_text", "write_model", "write_points3D_binary",
    "write_points3D_text",
]
