"""The pure-PyTorch rasterizer: projection -> colours (SH) -> tile binning -> compositing.

Same inputs, outputs and ``meta`` keys as ``gsplat.rasterization`` (gsplat 1.5.3,
``gsplat/rendering.py``) for the unbatched pinhole case, so that
``gsplat.strategy.DefaultStrategy`` and ``MCMCStrategy`` run on it unchanged. Runs on any
device PyTorch supports (CPU, MPS, also CUDA: useful for parity tests), in float32 or float64,
and is differentiable by autograd w.r.t. means, quats, scales, opacities, colors (plain or SH)
and backgrounds (and viewmats through the projection).

Pipeline (each step documented in its module):

1. :func:`splatforge.raster.projection.project_gaussians` - EWA projection, radii, culling;
2. :func:`splatforge.raster.sh.eval_sh` - view-dependent colour ``max(SH(dir) + 0.5, 0)``
   with ``dir = mean - camera centre`` (only for visible pairs);
3. :func:`splatforge.raster.tiles.intersect_tiles` - (image, tile, depth)-sorted
   intersections;
4. :func:`splatforge.raster.composite.rasterize_to_pixels` - memory-bounded, chunked
   front-to-back compositing.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ..errors import ConfigError
from .composite import rasterize_to_pixels
from .projection import project_gaussians
from .sh import MAX_SH_DEGREE, eval_sh, num_sh_bases
from .tiles import intersect_tiles, isect_offset_encode, tile_grid

log = logging.getLogger("splatforge.raster")

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def validate_inputs(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    sh_degree: int | None,
    tile_size: int,
    backgrounds: Tensor | None,
    render_mode: str,
    rasterize_mode: str,
) -> tuple[int, int]:
    """Check shapes and options of :func:`splatforge.raster.rasterize`; return ``(N, C)``.

    Raises:
        ValueError: a tensor has the wrong shape (the message names it and both shapes).
        ConfigError: ``render_mode`` / ``rasterize_mode`` / ``sh_degree`` / ``tile_size`` /
            image size outside the allowed values.
    """
    if render_mode not in RENDER_MODES:
        raise ConfigError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise ConfigError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}")
    if int(width) <= 0 or int(height) <= 0:
        raise ConfigError(f"image size must be positive, got width={width}, height={height}")
    if int(tile_size) <= 0:
        raise ConfigError(f"tile_size must be a positive number of pixels, got {tile_size}")
    _check(means.dim() == 2 and means.shape[-1] == 3, f"means must be [N, 3], got {tuple(means.shape)}")
    N = means.shape[0]
    _check(tuple(quats.shape) == (N, 4), f"quats must be [N, 4] = [{N}, 4], got {tuple(quats.shape)}")
    _check(tuple(scales.shape) == (N, 3), f"scales must be [N, 3] = [{N}, 3], got {tuple(scales.shape)}")
    _check(tuple(opacities.shape) == (N,), f"opacities must be [N] = [{N}], got {tuple(opacities.shape)}")
    _check(viewmats.dim() == 3 and tuple(viewmats.shape[1:]) == (4, 4),
           f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}")
    C = viewmats.shape[0]
    _check(tuple(Ks.shape) == (C, 3, 3), f"Ks must be [C, 3, 3] = [{C}, 3, 3], got {tuple(Ks.shape)}")
    if sh_degree is None:
        _check(
            (colors.dim() == 2 and colors.shape[0] == N)
            or (colors.dim() == 3 and tuple(colors.shape[:2]) == (C, N)),
            f"colors must be [N, D] or [C, N, D] with N={N}, C={C} (or pass sh_degree for SH "
            f"coefficients [N, K, 3]), got {tuple(colors.shape)}",
        )
    else:
        if not 0 <= int(sh_degree) <= MAX_SH_DEGREE:
            raise ConfigError(f"sh_degree must be in 0..{MAX_SH_DEGREE} or None, got {sh_degree}")
        _check(
            ((colors.dim() == 3 and colors.shape[0] == N)
             or (colors.dim() == 4 and tuple(colors.shape[:2]) == (C, N)))
            and colors.shape[-1] == 3,
            f"with sh_degree set, colors must be SH coefficients [N, K, 3] or [C, N, K, 3] "
            f"with N={N}, C={C}, got {tuple(colors.shape)}",
        )
        nb = num_sh_bases(int(sh_degree))
        _check(colors.shape[-2] >= nb,
               f"sh_degree={sh_degree} needs K >= {nb} SH coefficients, got K={colors.shape[-2]}")
    if backgrounds is not None:
        D = 3 if sh_degree is not None else colors.shape[-1]
        _check(tuple(backgrounds.shape) == (C, D),
               f"backgrounds must be [C, D] = [{C}, {D}], got {tuple(backgrounds.shape)}")
    return N, C


def rasterize_torch(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    chunk_budget: int | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Pure-PyTorch rasterization; see :func:`splatforge.raster.rasterize` for the contract.

    ``sparse_grad`` is accepted for signature compatibility and ignored (gradients are dense).
    """
    N, C = validate_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                           sh_degree, tile_size, backgrounds, render_mode, rasterize_mode)
    width, height, tile_size = int(width), int(height), int(tile_size)
    device, dtype = means.device, means.dtype
    antialiased = rasterize_mode == "antialiased"
    if sparse_grad:
        log.debug("sparse_grad is ignored by the torch backend (gradients are dense)")

    proj = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        eps2d=eps2d, near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
        calc_compensations=antialiased,
    )
    opac_cn = opacities[None, :].expand(C, N)
    if proj.compensations is not None:
        opac_cn = opac_cn * proj.compensations

    vis_c, vis_g = torch.nonzero(proj.valid, as_tuple=True)  # visible pairs, (camera, gaussian) order

    # Per-entry tensors: dense [C, N, ...] or packed [nnz, ...].
    if packed:
        means2d = proj.means2d[vis_c, vis_g]
        radii = proj.radii[vis_c, vis_g]
        depths = proj.depths[vis_c, vis_g]
        conics = proj.conics[vis_c, vis_g]
        opac_e = opac_cn[vis_c, vis_g]
        image_ids = vis_c
    else:
        means2d, radii, depths, conics, opac_e = proj.means2d, proj.radii, proj.depths, proj.conics, opac_cn
        image_ids = torch.arange(C, device=device).repeat_interleave(N)

    if sh_degree is None:
        if packed:
            feats = colors[vis_g] if colors.dim() == 2 else colors[vis_c, vis_g]
        else:
            feats = colors[None].expand(C, N, colors.shape[-1]) if colors.dim() == 2 else colors
    else:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3] camera centres, world frame
        coeffs = colors[vis_g] if colors.dim() == 3 else colors[vis_c, vis_g]  # [nnz, K, 3]
        dirs = means[vis_g] - campos[vis_c]
        rgb = torch.clamp_min(eval_sh(int(sh_degree), dirs, coeffs) + 0.5, 0.0)  # [nnz, 3]
        if packed:
            feats = rgb
        else:
            flat = torch.zeros((C * N, 3), dtype=rgb.dtype, device=device)
            feats = flat.index_copy(0, vis_c * N + vis_g, rgb).reshape(C, N, 3)

    bgs = backgrounds
    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([feats, depths[..., None]], dim=-1)
        if bgs is not None:
            bgs = torch.cat([bgs, torch.zeros((C, 1), dtype=bgs.dtype, device=bgs.device)], dim=-1)
    elif render_mode in ("D", "ED"):
        feats = depths[..., None]
        if bgs is not None:
            bgs = torch.zeros((C, 1), dtype=bgs.dtype, device=bgs.device)

    tile_width, tile_height = tile_grid(width, height, tile_size)
    tiles_per_gauss, isect_ids, flatten_ids = intersect_tiles(
        means2d.reshape(-1, 2), radii.reshape(-1, 2), depths.reshape(-1), image_ids,
        C, tile_size, tile_width, tile_height,
    )
    isect_offsets = isect_offset_encode(isect_ids, C, tile_width, tile_height)
    tiles_per_gauss = tiles_per_gauss.reshape(radii.shape[:-1])

    render_colors, render_alphas = rasterize_to_pixels(
        means2d, conics, feats, opac_e, width, height, tile_size, isect_offsets, flatten_ids,
        backgrounds=bgs, absgrad=absgrad, chunk_budget=chunk_budget,
    )
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )
    if absgrad:
        # Overwritten by the backward pass (as gsplat does); zeros until then.
        means2d.absgrad = torch.zeros_like(means2d, requires_grad=False)

    meta = {
        "batch_ids": torch.zeros_like(vis_c) if packed else None,
        "camera_ids": vis_c if packed else None,
        "gaussian_ids": vis_g if packed else None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opac_e,
        "tile_width": tile_width,
        "tile_height": tile_height,
        "tiles_per_gauss": tiles_per_gauss,
        "isect_ids": isect_ids,
        "flatten_ids": flatten_ids,
        "isect_offsets": isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_batches": 1,
        "n_cameras": C,
        "backend": "torch",
    }
    assert render_colors.dtype == dtype
    return render_colors, render_alphas, meta


__all__ = ["RASTERIZE_MODES", "RENDER_MODES", "rasterize_torch", "validate_inputs"]
