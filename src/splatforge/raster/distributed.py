"""Rasterization of a Gaussian scene sharded over the ranks of a ``torch.distributed`` group.

The scheme is Grendel's ("On Scaling Up 3D Gaussian Splatting Training", Zhao et al. 2024) as
gsplat 1.5.3 implements it in ``rasterization(..., distributed=True)``: every rank holds a
shard of the Gaussians and a few cameras of its own;

1. the ranks' cameras are all-gathered, so each rank knows every camera of the step;
2. each rank projects *its* Gaussians into *all* cameras (EWA projection, SH colours for the
   visible pairs only);
3. the projected 2D Gaussians are exchanged all-to-all: the pairs visible in camera ``c`` go to
   the rank that owns ``c``;
4. each rank composites whole images of its own cameras from what it received;

and in the backward pass the gradients of the received 2D Gaussians travel back along the same
exchange (:class:`AllToAllV`), so each rank ends with the gradients of its own shard.

:func:`rasterize_distributed` runs steps 1-4 with splatforge's PyTorch rasterizer and a
variable-size all-to-all built from point-to-point sends, which works on every backend
(``gloo`` on CPU has no ``all_to_all``); with ``backend="gsplat"`` (CUDA tensors, NCCL) it
calls gsplat's own distributed rasterization instead. Both return the same
``(colors, alphas, meta)`` for the rank's own cameras.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError
from .composite import rasterize_to_pixels
from .projection import project_gaussians
from .sh import eval_sh
from .tiles import intersect_tiles, isect_offset_encode, tile_grid

#: float channels of one exchanged 2D Gaussian: means2d (2), conics (3), opacity (1),
#: depth (1), then the D colour channels
_FIXED = 7


def _exchange(chunks: list[Tensor], recv_counts: list[int], group: Any) -> list[Tensor]:
    """Send ``chunks[r]`` to rank ``r`` and receive ``recv_counts[r]`` rows from each rank.

    Point-to-point ``isend``/``irecv`` pairs (every backend has them); the rank's own chunk is
    copied. All chunks share trailing shape and dtype.
    """
    rank = dist.get_rank(group)
    world = dist.get_world_size(group)
    tail = chunks[0].shape[1:]
    out = [chunks[rank].clone() if r == rank else
           torch.empty((recv_counts[r], *tail), dtype=chunks[0].dtype, device=chunks[0].device)
           for r in range(world)]
    reqs = []
    for r in range(world):
        if r == rank:
            continue
        peer = dist.get_global_rank(group, r) if group is not None else r
        if chunks[r].shape[0]:
            reqs.append(dist.isend(chunks[r].contiguous(), peer, group=group))
        if recv_counts[r]:
            reqs.append(dist.irecv(out[r], peer, group=group))
    for q in reqs:
        q.wait()
    return out


class AllToAllV(torch.autograd.Function):
    """Differentiable variable-size all-to-all of rows.

    ``forward(x [sum(send_counts), D])`` sends rows ``x[offset_r : offset_r + send_counts[r]]``
    to rank ``r`` and returns the rows received, ordered by source rank
    (``[sum(recv_counts), D]``); ``backward`` sends the output's gradient back the same way
    (send and receive counts swapped), so each rank gets the gradient of the rows it sent.
    """

    @staticmethod
    def forward(ctx, x: Tensor, send_counts: list[int], recv_counts: list[int], group: Any):
        ctx.counts = (send_counts, recv_counts)
        ctx.group = group
        return torch.cat(_exchange(list(x.split(send_counts)), recv_counts, group), dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        send_counts, recv_counts = ctx.counts
        back = _exchange(list(grad.contiguous().split(recv_counts)), send_counts, ctx.group)
        return torch.cat(back, dim=0), None, None, None


def exchange_counts(send_counts: list[int], group: Any, device: torch.device) -> list[int]:
    """All ranks' ``send_counts`` -> this rank's receive counts (one all-gather of ``[W]``)."""
    world = dist.get_world_size(group)
    mine = torch.tensor(send_counts, dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    rank = dist.get_rank(group)
    return [int(every[r][rank]) for r in range(world)]


def all_gather_cameras(viewmats: Tensor, Ks: Tensor, group: Any
                       ) -> tuple[Tensor, Tensor, list[int]]:
    """Every rank's ``viewmats [C_r, 4, 4]`` and ``Ks [C_r, 3, 3]``, concatenated in rank
    order, and the counts ``C_r``."""
    world = dist.get_world_size(group)
    n = torch.tensor([viewmats.shape[0]], dtype=torch.int64, device=viewmats.device)
    ns = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(ns, n, group=group)
    counts = [int(x) for x in ns]
    cmax = max(counts)
    packed = torch.zeros((cmax, 25), dtype=viewmats.dtype, device=viewmats.device)
    packed[:viewmats.shape[0], :16] = viewmats.reshape(-1, 16)
    packed[:viewmats.shape[0], 16:] = Ks.reshape(-1, 9).to(viewmats.dtype)
    every = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(every, packed, group=group)
    flat = torch.cat([e[:c] for e, c in zip(every, counts)], dim=0)
    return flat[:, :16].reshape(-1, 4, 4), flat[:, 16:].reshape(-1, 3, 3), counts


def rasterize_distributed(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, sh_degree: int | None = None,
    near_plane: float = 0.01, far_plane: float = 1e10, radius_clip: float = 0.0,
    eps2d: float = 0.3, tile_size: int = 16, backgrounds: Tensor | None = None,
    rasterize_mode: str = "classic", backend: str = "torch", group: Any = None,
    chunk_budget: int | None = None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render this rank's cameras from the Gaussians of all ranks (see the module docstring).

    A collective: every rank of ``group`` calls it (with its own shard and cameras, possibly
    zero cameras or zero Gaussians) in the same order, and later runs backward through the
    result (every rank, once per call; the result always depends on the exchange, so autograd
    reaches it even when a rank received nothing).

    Args:
        means, quats, scales, opacities, colors: this rank's shard, as
            :func:`splatforge.raster.rasterize` takes them (``[N_r, 3]``, ``[N_r, 4]`` wxyz,
            ``[N_r, 3]`` activated, ``[N_r]`` activated, SH ``[N_r, K, 3]`` with ``sh_degree``
            or features ``[N_r, D]``).
        viewmats, Ks: this rank's cameras ``[C_r, 4, 4]`` (world-to-camera, OpenCV) and
            ``[C_r, 3, 3]`` (pixels); all cameras of all ranks share ``width`` x ``height``.
        backgrounds: ``[C_r, D]`` or None.
        backend: ``"torch"`` (any device and process-group backend) or ``"gsplat"`` (CUDA
            tensors, NCCL: gsplat's ``rasterization(..., distributed=True)``).
        group: the process group (None = the default group).

    Returns:
        ``(colors [C_r, H, W, D], alphas [C_r, H, W, 1], meta)``. ``meta`` holds what the
        densification strategies read, for this rank's shard: ``means2d`` ``[C, N_r, 2]``
        over all ``C = sum_r C_r`` cameras of the step (its ``.grad`` after backward is the
        2D-mean gradient of each (camera, Gaussian) pair), ``radii`` ``[C, N_r, 2]`` int32,
        ``depths`` ``[C, N_r]``, ``width``, ``height``, ``n_cameras`` = 1 (each image's loss
        is its own rank's, not a batch mean, so gsplat's strategies must not rescale the
        gradient by the batch size), ``camera_counts`` (the ``C_r``), ``num_received`` (2D
        Gaussians this rank composited) and ``backend``.

    Raises:
        ConfigError: unknown ``backend`` or ``rasterize_mode``, or ``backend="gsplat"`` with
            non-CUDA tensors.
    """
    if rasterize_mode not in ("classic", "antialiased"):
        raise ConfigError(f"rasterize_mode must be classic or antialiased, got "
                          f"{rasterize_mode!r}")
    if backend == "gsplat":
        return _rasterize_gsplat_distributed(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
            near_plane, far_plane, radius_clip, eps2d, tile_size, backgrounds, rasterize_mode)
    if backend != "torch":
        raise ConfigError(f"distributed rasterization backend must be torch or gsplat, got "
                          f"{backend!r}")
    device = means.device
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    vm_all, K_all, cam_counts = all_gather_cameras(viewmats, Ks, group)
    N = means.shape[0]
    proj = project_gaussians(means, quats, scales, opacities, vm_all, K_all, width, height,
                             eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
                             radius_clip=radius_clip,
                             calc_compensations=rasterize_mode == "antialiased")
    vis_c, vis_g = torch.nonzero(proj.valid, as_tuple=True)   # sorted by camera
    opac = opacities[vis_g]
    if proj.compensations is not None:
        opac = opac * proj.compensations[vis_c, vis_g]
    if sh_degree is None:
        feats = colors[vis_g]
    else:
        campos = torch.linalg.inv(vm_all)[:, :3, 3]
        feats = torch.clamp_min(eval_sh(int(sh_degree), means[vis_g] - campos[vis_c],
                                        colors[vis_g]) + 0.5, 0.0)
    rows = torch.cat([proj.means2d[vis_c, vis_g], proj.conics[vis_c, vis_g], opac[:, None],
                      proj.depths[vis_c, vis_g][:, None], feats], dim=1)
    owner = torch.repeat_interleave(torch.arange(world, device=device),
                                    torch.tensor(cam_counts, device=device))
    first_cam = [sum(cam_counts[:r]) for r in range(world)]
    send_counts = torch.bincount(owner[vis_c], minlength=world).tolist()
    recv_counts = exchange_counts(send_counts, group, device)
    # integer side channel: the destination's camera index and the pixel radii
    local_cam = vis_c - torch.tensor(first_cam, device=device)[owner[vis_c]]
    ints = torch.cat([local_cam[:, None].to(torch.int32), proj.radii[vis_c, vis_g]], dim=1)
    got_ints = torch.cat(_exchange(list(ints.split(send_counts)), recv_counts, group), dim=0)
    got = AllToAllV.apply(rows, send_counts, recv_counts, group)

    C_r = cam_counts[rank]
    D = feats.shape[1]
    m2d, con = got[:, 0:2], got[:, 2:5]
    op, dep, col = got[:, 5], got[:, 6], got[:, _FIXED:]
    cam_ids = got_ints[:, 0].long()
    radii = got_ints[:, 1:3].contiguous()
    tw, th = tile_grid(int(width), int(height), int(tile_size))
    _, isect_ids, flatten_ids = intersect_tiles(m2d, radii, dep.detach(), cam_ids, C_r,
                                                int(tile_size), tw, th)
    offsets = isect_offset_encode(isect_ids, C_r, tw, th)
    render, alphas = rasterize_to_pixels(m2d, con, col, op, int(width), int(height),
                                         int(tile_size), offsets, flatten_ids,
                                         backgrounds=backgrounds, chunk_budget=chunk_budget)
    # keep the exchange in the graph even when nothing was received (backward is collective)
    render = render + 0.0 * got.sum()
    meta = {"means2d": proj.means2d, "radii": proj.radii, "depths": proj.depths,
            "width": int(width), "height": int(height), "n_cameras": 1, "n_batches": 1,
            "camera_counts": cam_counts, "num_received": int(got.shape[0]),
            "gaussian_ids": None, "camera_ids": None, "backend": "torch",
            "num_channels": D, "num_gaussians": N}
    return render, alphas, meta


def _rasterize_gsplat_distributed(means, quats, scales, opacities, colors, viewmats, Ks,
                                  width, height, sh_degree, near_plane, far_plane, radius_clip,
                                  eps2d, tile_size, backgrounds, rasterize_mode):
    """gsplat 1.5.3 ``rasterization(..., distributed=True)`` (NCCL all-to-all inside)."""
    if means.device.type != "cuda":
        raise ConfigError("backend='gsplat' distributed rasterization needs CUDA tensors "
                          f"(got {means.device}); use backend='torch' with the gloo backend")
    from gsplat.rendering import rasterization

    render, alphas, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height),
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
        sh_degree=sh_degree, packed=False, tile_size=tile_size, backgrounds=backgrounds,
        rasterize_mode=rasterize_mode, distributed=True)
    meta = dict(meta)
    meta["n_cameras"] = 1
    meta["backend"] = "gsplat"
    return render, alphas, meta


__all__ = ["AllToAllV", "all_gather_cameras", "exchange_counts", "rasterize_distributed"]
