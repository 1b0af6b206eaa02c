"""SIFT on downscaled copies of the images, with keypoints and cameras in full-size pixels.

COLMAP's feature extractor downscales every image whose longer side exceeds
``max_image_size`` itself (``ImageResizerThread`` in ``src/colmap/feature/extractor.cc``), and
then multiplies the keypoints by the inverse scale (``FeatureKeypoint::Rescale``). Its resize
costs more than the smaller image saves: 260 video frames of 720x1280 extracted at 1024 px in
38.2 s against 35.2 s at their own size (2 cores, octave 0); through Pillow's copies in 21.6 s,
1.2 s of it the downscale (``benchmarks/sift_extraction.py``, README "sfm").

:func:`downscale_images` writes those copies (greyscale JPEG at quality 95, EXIF kept so that
COLMAP's focal-length prior, proportional to the image size, is the same); COLMAP imports and
extracts them; :func:`restore_full_size` then does what COLMAP's extractor does after its own
resize: every keypoint ``(x, y, a11, a12, a21, a22)`` is multiplied by the per-axis scale
``(sx, sy) = (W / w, H / h)`` (full size over extraction size) as ``(x sx, y sy, a11 sx,
a12 sy, a21 sx, a22 sy)``, and every camera is rescaled to the full size (focal lengths and
principal point times the same scales, ``Camera::Rescale``). Matching, mapping and
undistortion then see the same database as after COLMAP's own resize.

Only for sets whose images share one size and one camera (the caller checks): images of
different sizes downscaled to one size would otherwise merge into one COLMAP camera.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..scene.imageio import num_workers

__all__ = ["scaled_size", "downscale_images", "restore_full_size"]


def scaled_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(w, h) in pixels of a ``width`` x ``height`` image whose longer side is brought to
    ``max_size`` px, truncated as COLMAP's extractor truncates it
    (``int(width * max_size / max(width, height))``); the size itself when it already fits."""
    longest = max(width, height)
    if longest <= max_size:
        return width, height
    scale = max_size / longest
    return int(width * scale), int(height * scale)


def _downscale_one(src: Path, dst: Path, max_size: int) -> tuple[int, int]:
    with Image.open(src) as im:
        full = im.size
        exif = im.info.get("exif")
        w, h = scaled_size(*full, max_size)
        im.draft("L", (w, h))  # JPEG: decode at the smallest DCT scale still >= (w, h)
        grey = im.convert("L").resize((w, h), Image.Resampling.BILINEAR)
    dst.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"quality": 95}
    if exif:
        kwargs["exif"] = exif
    grey.save(dst, "JPEG", **kwargs)
    return full


def downscale_images(image_dir: Path, names: list[str], max_size: int,
                     dst_dir: Path) -> dict[str, tuple[int, int]]:
    """Write each ``image_dir/<name>`` brought to ``max_size`` px on its longer side into
    ``dst_dir/<name>`` (same name, JPEG content), several images at a time.

    Returns:
        name -> the full (width, height) in pixels read from the original.

    Raises:
        OSError: an image cannot be read or the copy cannot be written (PIL's
            ``UnidentifiedImageError`` is an ``OSError``).
    """
    with ThreadPoolExecutor(num_workers()) as pool:
        sizes = pool.map(lambda n: _downscale_one(image_dir / n, dst_dir / n, max_size), names)
        return dict(zip(names, sizes))


def restore_full_size(pycolmap: Any, db_path: Path, full: dict[str, tuple[int, int]]) -> None:
    """Bring the keypoints and cameras of the images named in ``full`` (name -> full
    (width, height), px) from the extraction size stored in the database to the full size.

    The scale of each image is its full size over its camera's size in the database (the
    size COLMAP imported from the downscaled copy). Cameras are rescaled once each.
    """
    with pycolmap.Database.open(db_path) as db:
        cameras = {c.camera_id: c for c in db.read_all_cameras()}
        camera_full: dict[int, tuple[int, int]] = {}
        for image in db.read_all_images():
            if image.name not in full:
                continue
            cam = cameras[image.camera_id]
            fw, fh = full[image.name]
            camera_full[cam.camera_id] = (fw, fh)
            sx, sy = fw / cam.width, fh / cam.height
            if db.exists_keypoints(image.image_id):
                kp = db.read_keypoints(image.image_id).astype(np.float64)
                kp[:, [0, 2, 4]] *= sx  # x, a11, a21
                kp[:, [1, 3, 5]] *= sy  # y, a12, a22
                db.update_keypoints(image.image_id, kp.astype(np.float32))
        for cam_id, (fw, fh) in camera_full.items():
            cam = cameras[cam_id]
            cam.rescale(fw, fh)
            db.update_camera(cam)
