"""The Gaussian parameter set and its initialisation.

A splat set is a dict of raw (unactivated) tensors, gsplat's ``simple_trainer`` names:

========== ============== ======================================================
name       shape          meaning (activation)
========== ============== ======================================================
means      [N, 3]         centres in scene units
scales     [N, 3]         log of the standard deviations (``exp``)
quats      [N, 4]         rotation quaternions, wxyz, not normalised (``normalize``)
opacities  [N]            opacity logits (``sigmoid``)
sh0        [N, 1, 3]      SH DC coefficients (``rgb = 0.5 + C0 * sh0``)
shN        [N, K - 1, 3]  higher SH coefficients, ``K = (sh_degree + 1)^2``
========== ============== ======================================================

Initialisation follows Kerbl et al. 2023 (INRIA ``scene/gaussian_model.py``
``create_from_pcd``) with gsplat's random initialisation for scenes with too few SfM points
(``examples/simple_trainer.py``, ``init_type="random"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .scene import Scene

#: Zeroth-order real spherical-harmonics constant ``1 / (2 sqrt(pi))`` (INRIA ``utils/sh_utils``).
SH_C0 = 0.28209479177387814

#: The parameter names, in the order they are saved and optimised.
PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per colour channel for ``degree``: ``(degree + 1)^2``."""
    return (degree + 1) ** 2


def rgb_to_sh(rgb: torch.Tensor | np.ndarray):
    """RGB in [0, 1] -> SH DC coefficient: ``(rgb - 0.5) / C0`` (INRIA ``RGB2SH``)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: torch.Tensor | np.ndarray):
    """SH DC coefficient -> RGB: ``sh * C0 + 0.5`` (INRIA ``SH2RGB``)."""
    return sh * SH_C0 + 0.5


def knn_mean_sq_dist(points: np.ndarray, k: int = 3) -> np.ndarray:
    """[N] mean squared distance of each point to its ``k`` nearest other points.

    The quantity of INRIA's ``distCUDA2`` (simple-knn, k = 3), computed exactly with
    :class:`scipy.spatial.cKDTree`. Duplicate points give 0; callers clamp.

    Args:
        points: [N, 3] positions (any float dtype), scene units.

    Returns:
        [N] float64 squared distances (scene units^2); ones when N < 2.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    n = len(pts)
    if n < 2:
        return np.ones(n)
    kk = min(k, n - 1)
    dist, _ = cKDTree(pts).query(pts, k=kk + 1)  # the first neighbour is the point itself
    return (np.asarray(dist).reshape(n, -1)[:, 1:] ** 2).mean(axis=1)


@dataclass
class SplatInit:
    """Initial splats and how they were made.

    Attributes:
        params: name -> float32 CPU tensor (see the module table).
        method: ``sfm`` or ``random``.
        reason: why that method was used (for the progress log).
    """

    params: dict[str, torch.Tensor]
    method: str
    reason: str


def splats_from_points(points: np.ndarray, rgb: np.ndarray, sh_degree: int,
                       init_opacity: float = 0.1, init_scale: float = 1.0,
                       device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Gaussians centred on ``points`` (INRIA ``create_from_pcd``).

    * means: the points; sh0: ``rgb_to_sh(rgb)``; shN: zeros.
    * scales: ``log(init_scale * sqrt(max(d2, 1e-7)))`` on all three axes, ``d2`` the mean
      squared distance to the 3 nearest neighbours (INRIA's ``distCUDA2``).
    * quats: identity ``(1, 0, 0, 0)``; opacities: ``logit(init_opacity)``.

    Args:
        points: [N, 3] positions in scene units.
        rgb: [N, 3] colours in [0, 1] (float) or [0, 255] (uint8).
        sh_degree: highest SH degree (0..3): ``shN`` is [N, (d + 1)^2 - 1, 3].
        device: where the nearest-neighbour search runs without SciPy.

    Returns:
        name -> float32 CPU tensor.
    """
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    col = np.asarray(rgb)
    col = col.astype(np.float32) / 255.0 if col.dtype == np.uint8 else col.astype(np.float32)
    n = len(pts)
    d2 = np.maximum(knn_mean_sq_dist(pts, 3), 1e-7)
    scales = np.log(init_scale * np.sqrt(d2)).astype(np.float32)
    k = num_sh_bases(sh_degree)
    quats = np.zeros((n, 4), np.float32)
    quats[:, 0] = 1.0
    return {
        "means": torch.from_numpy(pts.copy()),
        "scales": torch.from_numpy(np.repeat(scales[:, None], 3, axis=1)),
        "quats": torch.from_numpy(quats),
        "opacities": torch.full((n,), float(np.log(init_opacity / (1.0 - init_opacity)))),
        "sh0": torch.from_numpy(rgb_to_sh(col.reshape(n, 1, 3))).float(),
        "shN": torch.zeros((n, k - 1, 3)),
    }


def random_points(n: int, center: np.ndarray, half_size: float,
                  generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uniform points in the cube ``center +- half_size`` and uniform colours in [0, 1]
    (gsplat ``simple_trainer`` random init: ``init_extent * scene_scale * (2 rand - 1)``).

    Returns:
        ([n, 3] float32 points, [n, 3] float32 colours).
    """
    pts = (torch.rand((n, 3), generator=generator, dtype=torch.float64) * 2 - 1) * half_size
    rgb = torch.rand((n, 3), generator=generator)
    return (pts.numpy() + np.asarray(center, np.float64)).astype(np.float32), rgb.numpy()


def init_splats(scene: Scene, sh_degree: int = 3, init_type: str = "auto",
                min_points: int = 100, num_random: int = 100_000, init_extent: float = 3.0,
                init_opacity: float = 0.1, init_scale: float = 1.0, seed: int = 0,
                device: str | torch.device = "cpu") -> SplatInit:
    """Initial Gaussians for ``scene``.

    ``init_type``: ``sfm`` uses the scene's SfM points; ``random`` places ``num_random``
    points uniformly in a cube of half-size ``init_extent * scene.extent()`` around the mean
    camera centre (the origin of a normalised scene) with random colours; ``auto`` uses
    ``sfm`` unless the scene has fewer than ``min_points`` points
    (``SceneConfig.min_points``). ``device`` is used for the nearest-neighbour search only
    (see :func:`knn_mean_sq_dist`); the tensors returned are on the CPU.

    Returns:
        :class:`SplatInit` with float32 CPU tensors.

    Raises:
        ValueError: ``init_type="sfm"`` on a scene without points.
    """
    n_pts = len(scene.points)
    if init_type == "sfm" or (init_type == "auto" and n_pts >= max(min_points, 1)):
        if n_pts == 0:
            raise ValueError("init_type 'sfm' needs SfM points, and the scene has none")
        params = splats_from_points(scene.points, scene.points_rgb, sh_degree, init_opacity,
                                    init_scale, device)
        return SplatInit(params, "sfm", f"{n_pts} SfM points")
    gen = torch.Generator().manual_seed(int(seed))
    centers = scene.camera_centers()
    center = centers.mean(0) if len(centers) else np.zeros(3)
    half = init_extent * scene.extent()
    pts, rgb = random_points(num_random, center, half, gen)
    params = splats_from_points(pts, rgb, sh_degree, init_opacity, init_scale, device)
    reason = ("requested" if init_type == "random"
              else f"only {n_pts} SfM points (< min_points {min_points})")
    return SplatInit(params, "random", f"{num_random} random points in a cube of half-size "
                                       f"{half:.3g} ({reason})")


def splats_to_source_frame(params: dict[str, torch.Tensor], scene: Scene
                           ) -> dict[str, np.ndarray]:
    """Raw splat parameters as float32 numpy arrays in the scene's source (e.g. COLMAP) frame.

    The reader's normalisation is ``x_scene = s x_source + b`` (``Scene.transform``,
    translation and uniform scale only), so: means -> ``Scene.to_source``; log scales ->
    ``scales - log(s)``; quats, opacities and SH unchanged (no rotation, so view directions
    and orientations are the same in both frames).

    Returns:
        ``means [N, 3], scales [N, 3], quats [N, 4], opacities [N], sh0 [N, 1, 3],
        shN [N, K - 1, 3]`` (float32).

    Raises:
        ValueError: ``Scene.transform`` contains a rotation (not produced by the readers).
    """
    T = np.asarray(scene.transform, np.float64)
    s = scene.scale
    if not np.allclose(T[:3, :3], s * np.eye(3), atol=1e-9 * max(s, 1.0)):
        raise ValueError("Scene.transform has a rotation; exporting rotated splats is not "
                         "supported")
    out = {k: v.detach().float().cpu().numpy() for k, v in params.items()}
    out["means"] = scene.to_source(out["means"].astype(np.float64)).astype(np.float32)
    out["scales"] = (out["scales"].astype(np.float64) - np.log(s)).astype(np.float32)
    return out
