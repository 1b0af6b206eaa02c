"""Real spherical harmonics up to degree 3, for view-dependent Gaussian colour.

Basis and constants are those of the INRIA 3DGS code (``utils/sh_utils.py`` of
graphdeco-inria/gaussian-splatting, itself from PlenOctrees / svox2), i.e. the real SH basis
of Sloan 2008 ("Stupid Spherical Harmonics (SH) Tricks") with the sign convention that gsplat's
``spherical_harmonics`` CUDA op also uses. Coefficient ``k`` of band ``l`` is stored at index
``l*l + k`` of the ``K`` axis (``K >= (degree + 1)^2``), as in gsplat / INRIA PLY files
(``f_dc_*`` = index 0, ``f_rest_*`` = the rest).

The rasterizer turns the result into a colour with ``max(sh + 0.5, 0)`` (done by the caller,
like ``gsplat.rendering.rasterization``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per channel for ``degree``: ``(degree + 1)^2``."""
    return (degree + 1) ** 2


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """Evaluate the real SH basis functions at unit directions.

    Args:
        degree: 0..3.
        dirs: ``[..., 3]`` unit vectors.

    Returns:
        ``[..., (degree + 1)^2]`` basis values.

    Raises:
        ConfigError: ``degree`` outside 0..3.
    """
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ConfigError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
        if degree >= 2:
            xx, yy, zz = x * x, y * y, z * z
            xy, yz, xz = x * y, y * z, x * z
            out += [
                SH_C2[0] * xy,
                SH_C2[1] * yz,
                SH_C2[2] * (2.0 * zz - xx - yy),
                SH_C2[3] * xz,
                SH_C2[4] * (xx - yy),
            ]
            if degree >= 3:
                out += [
                    SH_C3[0] * y * (3.0 * xx - yy),
                    SH_C3[1] * xy * z,
                    SH_C3[2] * y * (4.0 * zz - xx - yy),
                    SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
                    SH_C3[4] * x * (4.0 * zz - xx - yy),
                    SH_C3[5] * z * (xx - yy),
                    SH_C3[6] * x * (xx - 3.0 * yy),
                ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """View-dependent colour from SH coefficients (before the +0.5 offset and clamp).

    Args:
        degree: SH degree to use, 0..3 (bands above it are ignored).
        dirs: ``[..., 3]`` viewing directions (camera centre to Gaussian); normalised here,
            any length > 0 works. Differentiable.
        coeffs: ``[..., K, 3]`` coefficients, ``K >= (degree + 1)^2``.

    Returns:
        ``[..., 3]`` = ``sum_b basis_b(dir) * coeffs[..., b, :]``.

    Raises:
        ConfigError: ``degree`` outside 0..3 or ``K`` too small.
    """
    nb = num_sh_bases(degree)
    if coeffs.shape[-2] < nb:
        raise ConfigError(
            f"sh_degree={degree} needs at least {nb} SH coefficients per channel, "
            f"got colors with K={coeffs.shape[-2]}"
        )
    if degree == 0:
        return SH_C0 * coeffs[..., 0, :]
    d = F.normalize(dirs, p=2.0, dim=-1)
    basis = sh_bases(degree, d)  # [..., nb]
    return torch.einsum("...b,...bc->...c", basis, coeffs[..., :nb, :])


__all__ = ["MAX_SH_DEGREE", "SH_C0", "SH_C1", "SH_C2", "SH_C3", "eval_sh", "num_sh_bases", "sh_bases"]
