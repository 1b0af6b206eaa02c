"""EWA projection of 3D Gaussians to the image plane, in pure PyTorch (autograd-differentiable).

The mathematics follows gsplat 1.5.3's CUDA projection kernel
(``gsplat/cuda/csrc/ProjectionEWA3DGSFused.cu`` and ``gsplat/cuda/include/Utils.cuh``) so the
torch backend and the gsplat backend agree:

* covariance from a (not necessarily normalised) wxyz quaternion and activated scales:
  ``Sigma = R S S^T R^T`` (Kerbl et al. 2023, "3D Gaussian Splatting for Real-Time Radiance
  Field Rendering", eq. 6);
* EWA splatting (Zwicker et al. 2002, "EWA Splatting", eq. 31): the 2D covariance is
  ``J W Sigma W^T J^T`` with ``W`` the world-to-camera rotation and ``J`` the Jacobian of the
  perspective projection at the camera-space mean, where ``x/z`` and ``y/z`` are clamped to
  the field of view widened by 30 % of the half-FOV tangent on each side (gsplat's
  ``persp_proj``: ``lim = (width - cx) / fx + 0.3 * tan_fovx``, i.e. 1.3x the FOV for a
  centred principal point) before they enter ``J``;
* the ``eps2d`` low-pass filter (0.3 px^2 by default) added to the diagonal of the 2D
  covariance, and for ``antialiased`` rendering the opacity compensation
  ``sqrt(det(Sigma2d) / det(Sigma2d + eps2d I))`` (Yu et al. 2024, "Mip-Splatting", eq. 10);
* per-axis radii ``ceil(extend * sqrt(Sigma2d_ii))`` with gsplat 1.5.3's opacity-aware
  ``extend = min(3.33, sqrt(2 ln(255 * opacity)))`` (Radl et al. 2024, "StopThePop",
  arXiv:2402.00525, Sec. B.2); Gaussians whose (compensated) opacity is below 1/255 are
  culled, as are those outside ``[near_plane, far_plane]`` in camera z, those with both radii
  ``<= radius_clip`` and those whose bounding box misses the image.

Units: means and scales in scene units; means2d, radii, conics and covariances in pixels
(conics in 1/px^2); depths are camera-space z in scene units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
"""Smallest alpha a Gaussian may contribute to a pixel (gsplat ``Common.h``)."""

MAX_EXTEND = 3.33
"""Largest bounding-box extent in standard deviations (gsplat 1.5.3)."""


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from wxyz quaternions (normalised here; they need not be).

    Args:
        quats: ``[..., 4]`` quaternions ``(w, x, y, z)``.

    Returns:
        ``[..., 3, 3]`` rotation matrices ``R`` such that ``R @ v`` rotates ``v``.

    Formula: the standard unit-quaternion rotation matrix (e.g. Shoemake 1985, "Animating
    Rotation with Quaternion Curves").
    """
    q = F.normalize(quats, p=2.0, dim=-1)
    w, x, y, z = q.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rows = (
        1.0 - 2.0 * (yy + zz), 2.0 * (xy - wz), 2.0 * (xz + wy),
        2.0 * (xy + wz), 1.0 - 2.0 * (xx + zz), 2.0 * (yz - wx),
        2.0 * (xz - wy), 2.0 * (yz + wx), 1.0 - 2.0 * (xx + yy),
    )
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


_TRIU = [0, 1, 2, 4, 5, 8]
_TRIU_T = [0, 3, 6, 4, 7, 8]


def quat_scale_to_covar_preci(
    quats: Tensor,
    scales: Tensor,
    compute_covar: bool = True,
    compute_preci: bool = True,
    triu: bool = False,
) -> tuple[Tensor | None, Tensor | None]:
    """Covariance ``R S S^T R^T`` and precision ``R S^-1 S^-1 R^T`` of 3D Gaussians.

    Same interface and conventions as ``gsplat.quat_scale_to_covar_preci`` (a CUDA op), so it
    can stand in for it on CPU/MPS tensors (see :mod:`splatforge.raster.mcmc`).

    Args:
        quats: ``[..., 4]`` wxyz quaternions (need not be normalised).
        scales: ``[..., 3]`` activated scales (scene units).
        compute_covar / compute_preci: which matrices to return (the other is ``None``).
        triu: return the upper triangle ``[..., 6]`` (xx, xy, xz, yy, yz, zz) instead of
            ``[..., 3, 3]`` (symmetrised, as gsplat does).

    Returns:
        ``(covars, precis)``: ``[..., 3, 3]`` (scene units^2 and 1/scene units^2) or
        ``[..., 6]`` when ``triu``.
    """
    R = quat_to_rotmat(quats)
    covars = precis = None
    if compute_covar:
        M = R * scales[..., None, :]
        covars = M @ M.transpose(-1, -2)
        if triu:
            flat = covars.reshape(covars.shape[:-2] + (9,))
            covars = 0.5 * (flat[..., _TRIU] + flat[..., _TRIU_T])
    if compute_preci:
        P = R / scales[..., None, :]
        precis = P @ P.transpose(-1, -2)
        if triu:
            flat = precis.reshape(precis.shape[:-2] + (9,))
            precis = 0.5 * (flat[..., _TRIU] + flat[..., _TRIU_T])
    return covars, precis


@dataclass
class Projection:
    """Result of :func:`project_gaussians` (dense ``[C, N, ...]`` layout).

    Entries of culled (camera, Gaussian) pairs are zero and their radii are 0, as in gsplat.

    Attributes:
        means2d: ``[C, N, 2]`` projected centres, pixels (x right, y down; pixel ``(i, j)``
            covers ``[j, j+1) x [i, i+1)``, centre at ``+0.5``).
        depths: ``[C, N]`` camera-space z, scene units.
        conics: ``[C, N, 3]`` upper triangle ``(a, b, c)`` of the inverse 2D covariance
            (with ``eps2d`` added), 1/px^2.
        compensations: ``[C, N]`` Mip-Splatting opacity factor, or ``None`` (classic mode).
        radii: ``[C, N, 2]`` int32 per-axis bounding-box half sizes, pixels; 0 = culled.
        valid: ``[C, N]`` bool, ``(radii > 0).all(-1)``.
    """

    means2d: Tensor
    depths: Tensor
    conics: Tensor
    compensations: Tensor | None
    radii: Tensor
    valid: Tensor


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor | None,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    calc_compensations: bool = False,
) -> Projection:
    """Project 3D Gaussians into C pinhole cameras (EWA splatting, gsplat 1.5.3 conventions).

    Differentiable w.r.t. ``means``, ``quats``, ``scales`` (and ``viewmats``) by autograd;
    radii and the culling mask are not differentiable (as in gsplat). Culled pairs are
    computed on safe placeholder values so that no NaN/inf reaches the gradients.

    Args:
        means: ``[N, 3]`` centres, world frame, scene units.
        quats: ``[N, 4]`` wxyz rotations (need not be normalised).
        scales: ``[N, 3]`` activated standard deviations along the local axes, scene units.
        opacities: ``[N]`` activated opacities in [0, 1], used only for gsplat 1.5.3's
            opacity-aware radius and the < 1/255 cull; ``None`` gives the plain
            ``ceil(3.33 sigma)`` radius of gsplat's ``_torch_impl._fully_fused_projection``.
        viewmats: ``[C, 4, 4]`` world-to-camera transforms (OpenCV axes: x right, y down,
            z forward).
        Ks: ``[C, 3, 3]`` intrinsics (fx, fy, cx, cy in pixels).
        width, height: image size, pixels.
        eps2d: low-pass variance added to the 2D covariance diagonal, px^2.
        near_plane, far_plane: camera-z range kept (inclusive), scene units.
        radius_clip: pairs whose radii are both ``<= radius_clip`` pixels are culled.
        calc_compensations: also return the antialiasing compensation (Mip-Splatting) and
            apply it to the opacity used for the radius.

    Returns:
        A :class:`Projection`.
    """
    dtype = means.dtype
    R = viewmats[:, :3, :3]  # [C, 3, 3]
    t = viewmats[:, :3, 3]  # [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    x, y, z = means_c.unbind(-1)

    with torch.no_grad():
        depth_ok = (z >= near_plane) & (z <= far_plane)
    # Placeholder depth for culled pairs keeps the graph finite (no 1/0 in the backward).
    z_safe = torch.where(depth_ok, z, torch.ones_like(z))

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    rz = 1.0 / z_safe
    # gsplat persp_proj: clamp x/z and y/z to the FOV widened by 0.3 * tan(fov/2) per side.
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx = z_safe * torch.clamp(x * rz, min=-lim_x_neg, max=lim_x_pos)
    ty = z_safe * torch.clamp(y * rz, min=-lim_y_neg, max=lim_y_pos)

    zero = torch.zeros_like(x)
    # Jacobian of (fx x/z + cx, fy y/z + cy) w.r.t. camera-space (x, y, z): [C, N, 2, 3].
    J = torch.stack(
        [
            torch.stack([fx * rz, zero, -fx * tx * rz * rz], dim=-1),
            torch.stack([zero, fy * rz, -fy * ty * rz * rz], dim=-1),
        ],
        dim=-2,
    )
    # cov2d = J W (R S)(R S)^T W^T J^T = A A^T with A = J W R S, [C, N, 2, 3].
    Rq = quat_to_rotmat(quats)  # [N, 3, 3]
    M = Rq * scales[:, None, :]  # [N, 3, 3] = R S
    JW = torch.einsum("cnij,cjk->cnik", J, R)  # [C, N, 2, 3]
    A = torch.einsum("cnij,njk->cnik", JW, M)  # [C, N, 2, 3]
    cov2d = A @ A.transpose(-1, -2)  # [C, N, 2, 2]

    mean2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # [C, N, 2]

    c00, c01, c11 = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = c00 * c11 - c01 * c01
    c00 = c00 + eps2d
    c11 = c11 + eps2d
    det = c00 * c11 - c01 * c01
    with torch.no_grad():
        det_ok = det > 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c11 / det_safe, -c01 / det_safe, c00 / det_safe], dim=-1)

    compensations = None
    if calc_compensations:
        ratio = det_orig / det_safe
        pos = ratio > 0
        # sqrt(max(0, ratio)) without an infinite derivative at 0.
        compensations = torch.where(
            pos, torch.sqrt(torch.where(pos, ratio, torch.ones_like(ratio))), torch.zeros_like(ratio)
        )

    with torch.no_grad():
        valid = depth_ok & det_ok
        extend = torch.full_like(det, MAX_EXTEND)
        if opacities is not None:
            op = opacities.detach()[None, :].expand_as(det)
            if compensations is not None:
                op = op * compensations.detach()
            valid &= op >= ALPHA_THRESHOLD
            extend = torch.minimum(
                extend, torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
            )
        rx = torch.ceil(extend * torch.sqrt(c00.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c11.detach().clamp_min(0)))
        valid &= ~((rx <= radius_clip) & (ry <= radius_clip))
        mx, my = mean2d.detach().unbind(-1)
        valid &= ~((mx + rx <= 0) | (mx - rx >= width) | (my + ry <= 0) | (my - ry >= height))
        radii = torch.stack([rx, ry], dim=-1)
        radii = torch.where(valid[..., None], radii, torch.zeros_like(radii)).to(torch.int32)

    vmask = valid[..., None]
    mean2d = torch.where(vmask, mean2d, torch.zeros_like(mean2d))
    conics = torch.where(vmask, conics, torch.zeros_like(conics))
    depths = torch.where(valid, z, torch.zeros_like(z))
    if compensations is not None:
        compensations = torch.where(valid, compensations, torch.zeros_like(compensations))
    assert mean2d.dtype == dtype
    return Projection(mean2d, depths, conics, compensations, radii, valid)


def fov_limits(width: int, height: int, K: Tensor) -> tuple[float, float, float, float]:
    """The clamping limits of x/z and y/z used in the projection Jacobian (for documentation
    and tests): ``(lim_x_neg, lim_x_pos, lim_y_neg, lim_y_pos)`` for one ``[3, 3]`` K."""
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    tx, ty = 0.5 * width / fx, 0.5 * height / fy
    return (cx / fx + 0.3 * tx, (width - cx) / fx + 0.3 * tx,
            cy / fy + 0.3 * ty, (height - cy) / fy + 0.3 * ty)


__all__ = [
    "ALPHA_THRESHOLD",
    "MAX_EXTEND",
    "Projection",
    "fov_limits",
    "project_gaussians",
    "quat_scale_to_covar_preci",
    "quat_to_rotmat",
]

