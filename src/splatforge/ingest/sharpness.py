"""Sharpness (focus) measures and the selections built on them.

The focus measure is the **variance of the Laplacian** (Pech-Pacheco, Cristobal,
Chamorro-Martinez and Fernandez-Valdivia, "Diatom autofocusing in brightfield microscopy: a
comparative study", ICPR 2000): the image is filtered with the 4-neighbour Laplacian kernel
``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` and the variance of the response is the score. Sharp
images have strong second derivatives (edges, texture) and score high; defocus and motion blur
remove them and the score falls. The score depends on content, so it only ranks images of one
capture against each other; there is no universal threshold.

Everything here is plain numpy (no OpenCV).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

#: Image folders: the grayscale image is downscaled so its longer side is at most this many
#: pixels before the Laplacian is taken (speed, and a score less tied to the photo's size).
IMAGE_SHARPNESS_LONG_SIDE = 640

#: Video: frames are downscaled so their longer side is at most this many pixels.
VIDEO_SHARPNESS_LONG_SIDE = 320


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a grayscale image (Pech-Pacheco et al. 2000).

    The Laplacian ``L = g[y-1,x] + g[y+1,x] + g[y,x-1] + g[y,x+1] - 4 g[y,x]`` is evaluated on
    the interior pixels only (no border padding), in float32, and its population variance is
    returned in float64.

    Args:
        gray: ``[H, W]`` grayscale image, any real dtype (uint8 images give scores in
            grey-level^2 units; the scale of the input scales the score quadratically).

    Returns:
        The variance of the Laplacian response (>= 0). 0.0 for images smaller than 3x3.

    Raises:
        ValueError: ``gray`` is not two-dimensional.
    """
    if gray.ndim != 2:
        raise ValueError(f"expected a [H, W] grayscale array, got shape {gray.shape}")
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    g = gray.astype(np.float32, copy=False)
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var(dtype=np.float64))


def scaled_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """``(width, height)`` shrunk so the longer side is at most ``long_side`` pixels.

    Aspect ratio is kept (rounded to whole pixels, at least 1); images already small enough
    are returned unchanged (never upscaled).
    """
    longer = max(width, height)
    if longer <= long_side:
        return width, height
    s = long_side / longer
    return max(1, round(width * s)), max(1, round(height * s))


def image_sharpness(image: Image.Image, long_side: int = IMAGE_SHARPNESS_LONG_SIDE) -> float:
    """Sharpness score of a Pillow image: variance of the Laplacian of its downscaled gray.

    The image is converted to 8-bit grayscale (``L``, ITU-R 601 luma) and downscaled with a
    box filter so its longer side is at most ``long_side`` pixels (never upscaled), then
    :func:`laplacian_variance` is applied. Downscaling makes the measure fast and compares
    photos of different resolutions at a similar scale.

    Args:
        image: any Pillow image (already EXIF-transposed or not: the 4-neighbour Laplacian is
            invariant to 90-degree rotations and flips).
        long_side: target longer side in pixels.

    Returns:
        The score in grey-level^2 units (8-bit scale).
    """
    gray = image.convert("L")
    size = scaled_size(gray.width, gray.height, long_side)
    if size != gray.size:
        gray = gray.resize(size, Image.Resampling.BOX, reducing_gap=None)
    return laplacian_variance(np.asarray(gray))


def window_bounds(n_items: int, n_windows: int) -> list[tuple[int, int]]:
    """Split ``n_items`` consecutive items into ``n_windows`` windows of (nearly) equal length.

    Window ``j`` is the half-open index range ``[floor(j*n/N), floor((j+1)*n/N))``; the windows
    are consecutive, cover every item exactly once, and none is empty when ``N <= n``.

    Raises:
        ValueError: ``n_windows`` is not in ``1..n_items``.
    """
    if not 1 <= n_windows <= n_items:
        raise ValueError(f"need 1 <= n_windows <= n_items, got {n_windows} and {n_items}")
    edges = [(j * n_items) // n_windows for j in range(n_windows + 1)]
    return [(edges[j], edges[j + 1]) for j in range(n_windows)]


def sharpest_per_window(
    sharpness: Sequence[float] | np.ndarray, n_windows: int
) -> tuple[list[int], list[tuple[int, int]]]:
    """Pick the sharpest item of each of ``n_windows`` equal windows (see :func:`window_bounds`).

    A simplification of the "best frame per period" selection in the AWS 3D-reconstruction
    toolbox (``source/container/src/pipeline/image_processing/filter_blurry_images.py``,
    ``select_frames``, which works in two passes over 1 s and 4 s periods): here the clip is
    cut into exactly as many windows as frames wanted, so the selection spans the whole clip,
    and each window contributes its highest variance-of-Laplacian frame (the earliest one on
    ties).

    Args:
        sharpness: ``[n]`` scores of consecutive items (frames in time order).
        n_windows: number of windows = number of items to pick, ``1 <= n_windows <= n``.

    Returns:
        ``(chosen, windows)``: ``chosen[j]`` is the index (into ``sharpness``) of the sharpest
        item of window ``j``, increasing with ``j``; ``windows[j]`` is ``(lo, hi)``, half-open.
    """
    s = np.asarray(sharpness, dtype=np.float64)
    windows = window_bounds(len(s), n_windows)
    chosen = [lo + int(np.argmax(s[lo:hi])) for lo, hi in windows]
    return chosen, windows


def blur_filter_count(n_images: int, percent: float, min_images: int) -> int:
    """How many of ``n_images`` the blur filter drops.

    ``round(percent / 100 * n_images)`` (halves rounded up), clamped so that at least
    ``min_images`` remain (and never negative). Dropping a fixed percentage of the blurriest
    images, rather than thresholding the score, follows the AWS 3D-reconstruction toolbox's
    blur filter: a percentage works across scenes, an absolute variance-of-Laplacian
    threshold does not.
    """
    if percent <= 0 or n_images <= 0:
        return 0
    n_drop = math.floor(percent / 100.0 * n_images + 0.5)
    return max(0, min(n_drop, n_images - min_images))


def blurriest(scores: dict[str, float], n_drop: int) -> list[str]:
    """Names of the ``n_drop`` lowest-scoring items (ties broken by name), blurriest first."""
    if n_drop <= 0:
        return []
    order = sorted(scores, key=lambda name: (scores[name], name))
    return order[:n_drop]
