"""Tile binning: which Gaussians touch which 16x16 tile, sorted by (image, tile, depth).

Same encoding as gsplat 1.5.3 (``gsplat/cuda/csrc/IntersectTile.cu``): every intersection of
a projected Gaussian's bounding box with a tile gets a 64-bit key

    image_id << (32 + tile_n_bits) | tile_id << 32 | float32 bits of the depth

(``tile_id = tile_y * tile_width + tile_x``, ``tile_n_bits`` = bit length of the number of
tiles per image), and the keys are sorted. For positive depths the IEEE-754 bit pattern
orders like the value, so one integer sort gives the front-to-back order inside each tile.
Ties keep the original entry order (stable sort), like gsplat's radix sort. The bounding box
of an entry is ``[floor((x - rx) / ts), ceil((x + rx) / ts))`` x the same in y, clamped to the
tile grid, with ``rx, ry`` the integer pixel radii from the projection.

Everything here is integer book-keeping under ``torch.no_grad()``: the binning is not
differentiable (and need not be).
"""

from __future__ import annotations

import torch
from torch import Tensor


def tile_grid(width: int, height: int, tile_size: int) -> tuple[int, int]:
    """``(tile_width, tile_height)``: tiles per row and per column (ceil division)."""
    return (width + tile_size - 1) // tile_size, (height + tile_size - 1) // tile_size


@torch.no_grad()
def intersect_tiles(
    means2d: Tensor,
    radii: Tensor,
    depths: Tensor,
    image_ids: Tensor,
    n_images: int,
    tile_size: int,
    tile_width: int,
    tile_height: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Enumerate and sort the (Gaussian entry, tile) intersections.

    Args:
        means2d: ``[M, 2]`` projected centres of the M entries (pixels). An entry is one
            (camera, Gaussian) pair: M = C*N in the dense layout, nnz in the packed one.
        radii: ``[M, 2]`` int pixel radii; entries with any radius 0 are skipped.
        depths: ``[M]`` camera z (scene units, > 0 for visible entries).
        image_ids: ``[M]`` int64 camera index of each entry.
        n_images: number of cameras C.
        tile_size: tile side, pixels.
        tile_width, tile_height: tile grid size (see :func:`tile_grid`).

    Returns:
        ``(tiles_per_gauss [M] int32, isect_ids [n_isects] int64, flatten_ids [n_isects]
        int32)``: the number of tiles each entry touches, the sorted keys, and for each key
        the entry index (into the M entries) it belongs to.
    """
    device = means2d.device
    M = means2d.shape[0]
    n_tiles = tile_width * tile_height
    tile_n_bits = int(n_tiles).bit_length()
    image_n_bits = int(n_images).bit_length()
    if image_n_bits + tile_n_bits > 32:
        raise ValueError(
            f"too many cameras x tiles to encode ({n_images} cameras, {n_tiles} tiles per image)"
        )

    ok = (radii > 0).all(dim=-1)
    m2 = means2d.detach().float()
    r = radii.float()
    ts = float(tile_size)
    # float32 arithmetic like the CUDA kernel.
    tx, ty = m2[:, 0] / ts, m2[:, 1] / ts
    trx, try_ = r[:, 0] / ts, r[:, 1] / ts
    x0 = torch.floor(tx - trx).clamp(0, tile_width).long()
    x1 = torch.ceil(tx + trx).clamp(0, tile_width).long()
    y0 = torch.floor(ty - try_).clamp(0, tile_height).long()
    y1 = torch.ceil(ty + try_).clamp(0, tile_height).long()
    w = (x1 - x0).clamp_min(0)
    counts = w * (y1 - y0).clamp_min(0)
    counts = torch.where(ok, counts, torch.zeros_like(counts))
    tiles_per_gauss = counts.to(torch.int32)

    n_isects = int(counts.sum())
    if n_isects == 0:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return tiles_per_gauss, empty, empty.to(torch.int32)

    entry = torch.repeat_interleave(torch.arange(M, device=device), counts)  # [n_isects]
    start = torch.cumsum(counts, 0) - counts  # exclusive prefix sum
    local = torch.arange(n_isects, device=device) - start[entry]
    we = w[entry]
    tile_y = y0[entry] + torch.div(local, we, rounding_mode="floor")
    tile_x = x0[entry] + local % we
    tile_id = tile_y * tile_width + tile_x

    depth_bits = depths.detach()[entry].float().contiguous().view(torch.int32).long() & 0xFFFFFFFF
    isect_ids = (image_ids[entry].long() << (32 + tile_n_bits)) | (tile_id << 32) | depth_bits
    isect_ids, order = torch.sort(isect_ids, stable=True)
    flatten_ids = entry[order].to(torch.int32)
    return tiles_per_gauss, isect_ids, flatten_ids


@torch.no_grad()
def isect_offset_encode(isect_ids: Tensor, n_images: int, tile_width: int, tile_height: int) -> Tensor:
    """Start of each tile's run in the sorted intersection list.

    Args:
        isect_ids: ``[n_isects]`` sorted keys from :func:`intersect_tiles`.
        n_images, tile_width, tile_height: grid size.

    Returns:
        ``[n_images, tile_height, tile_width]`` int32 offsets (an empty tile gets the offset
        of the next non-empty one; the run of the last tile ends at ``n_isects``), as
        gsplat's ``isect_offset_encode``.
    """
    n_tiles = tile_width * tile_height
    tile_n_bits = int(n_tiles).bit_length()
    key = isect_ids >> 32
    img = key >> tile_n_bits
    tid = key & ((1 << tile_n_bits) - 1)
    flat = img * n_tiles + tid
    counts = torch.bincount(flat, minlength=n_images * n_tiles)
    offsets = torch.cumsum(counts, 0) - counts
    return offsets.to(torch.int32).reshape(n_images, tile_height, tile_width)


__all__ = ["intersect_tiles", "isect_offset_encode", "tile_grid"]
