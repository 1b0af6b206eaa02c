"""Front-to-back alpha compositing of depth-sorted 2D Gaussians, tile by tile, in PyTorch.

Semantics (per pixel, identical to gsplat 1.5.3's ``RasterizeToPixels3DGSFwd.cu``): the pixel
centre is ``(x + 0.5, y + 0.5)``; for the Gaussians of its tile in front-to-back order,

    sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy        (d = mean2d - pixel centre, conic (a,b,c))
    alpha = min(0.999, opacity * exp(-sigma))
    skip the Gaussian if sigma < 0 or alpha < 1/255
    stop (exclusive) as soon as T * (1 - alpha) <= 1e-4
    C += color * alpha * T;  T *= 1 - alpha

and finally ``C += T * background``, ``alpha_out = 1 - T``. (gsplat's kernel clamps alpha at
0.999; the INRIA rasterizer uses 0.99. We follow gsplat, the backend we must match.) The
skip and stop tests are non-differentiable selections, as in gsplat: gradients flow through
the alphas that were used, and not through the choice of which were used.

Work saved up front. The tile lists come from bounding boxes (as in gsplat); before
compositing, intersections whose ellipse cannot reach alpha >= 1/255 at any pixel centre of
the tile are dropped (:func:`_cull_isects`; exact: those pairs would be skipped pixel by
pixel anyway). The ``meta`` returned to callers keeps gsplat's full lists.

Memory bound. Work is organised in *segments*: a set of ``b`` tiles times a window of ``L``
consecutive positions in each tile's depth-sorted list, evaluated for all ``P = tile_size^2``
pixels of those tiles at once as dense ``[b, L, P]`` tensors, with ``b * L * P <=
chunk_budget`` (the number of Gaussian-pixel pairs evaluated per step). Tiles are sorted by
their number of Gaussians (descending) and grouped so that a group shares one window length
``L = min(longest list in the group, MAX_WINDOW, chunk_budget // P)``, padded where a tile's
list is shorter; lists longer than ``L`` are walked in several segments that carry the
transmittance ``T`` and the per-pixel "done" flag from one window to the next. A tile leaves
its group once its list is exhausted or all its pixels are done (gsplat's early exit). Peak
memory is therefore O(chunk_budget) floats for the evaluation, plus O(number of Gaussians)
for parameters and gradients, plus O(number of intersections) integers for the lists, plus
``P`` floats per (tile, segment) for the saved transmittances; it does not grow with the
number of Gaussian-pixel pairs.

Gradients. :class:`_RasterizeToPixels` is an autograd Function whose forward runs without
recording a graph and whose backward *recomputes* each segment with autograd enabled and
calls ``torch.autograd.grad`` on it, walking the segments back to front and passing
``dL/dT`` from a window to the one before it (checkpointing by hand: the same idea as
``torch.utils.checkpoint``, but with the per-Gaussian gradients accumulated into one buffer
with ``index_add_`` instead of materialising a full-size gradient per segment). All
derivatives are thus produced by PyTorch's autograd on the forward formulas above.
With ``absgrad`` the backward also sums, over pixels, the absolute value of each pixel's
gradient w.r.t. the 2D mean (AbsGS, Ye et al. 2024, arXiv:2404.10484; what gsplat stores in
``means2d.absgrad``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .projection import ALPHA_THRESHOLD

ALPHA_MAX = 0.999
"""Largest alpha of one Gaussian at one pixel (gsplat 1.5.3 kernels)."""

T_STOP = 1e-4
"""A pixel stops accumulating once its transmittance would drop to this value or below."""

SIGMA_CAP = 50.0
"""``sigma`` is capped here before ``exp`` (any value above ``ln 255`` gives alpha < 1/255,
which is skipped; the cap only avoids slow denormals)."""

MAX_WINDOW = 32
"""Longest window of a tile's depth-sorted list evaluated in one segment (CPU/MPS). Short
windows let a tile drop out as soon as all its pixels have stopped (gsplat's early exit),
which on trained, opaque scenes skips a large share of the work; measured on CPU, 32 was
about 2x faster than whole-list windows on a real 15k-Gaussian model at 640x480 and no slower
on synthetic scenes."""

MAX_WINDOW_CUDA = 128
"""Same on CUDA, where each segment costs kernel launches and longer windows pay off."""

DEFAULT_CHUNK_BUDGET_CUDA = 1 << 22
"""Default chunk budget for CUDA tensors (4.2 M pairs, a few hundred MB of GPU memory): fewer,
larger segments amortise kernel-launch overhead."""

DEFAULT_CHUNK_BUDGET = 1 << 18
"""Default number of Gaussian-pixel pairs evaluated per segment on CPU/MPS (262 144). Measured
peak memory grows by about 100-150 bytes per pair of budget in float32 (the backward's
recomputation under autograd dominates), so this costs about 30 MB of transient memory; it
also keeps the working set inside a CPU's L2/L3 cache, which measured 10-25 % faster than
2^21 on CPU.
Override per call (``chunk_budget=``) or with the environment variable
``SPLATFORGE_RASTER_CHUNK_BUDGET``."""


def default_chunk_budget(device: torch.device | str | None = None) -> int:
    """The chunk budget used when none is given: ``$SPLATFORGE_RASTER_CHUNK_BUDGET``, else
    :data:`DEFAULT_CHUNK_BUDGET_CUDA` for a CUDA ``device`` and :data:`DEFAULT_CHUNK_BUDGET`
    otherwise.

    Raises:
        ValueError: the environment variable is set but not a positive integer.
    """
    env = os.environ.get("SPLATFORGE_RASTER_CHUNK_BUDGET")
    if env:
        try:
            val = int(env)
        except ValueError:
            val = 0
        if val <= 0:
            raise ValueError(f"SPLATFORGE_RASTER_CHUNK_BUDGET must be a positive integer, got {env!r}")
        return val
    if device is not None and torch.device(device).type == "cuda":
        return DEFAULT_CHUNK_BUDGET_CUDA
    return DEFAULT_CHUNK_BUDGET


def _segment_math(
    dx: Tensor,
    dy: Tensor,
    conic: Tensor,
    opac: Tensor,
    color: Tensor,
    valid: Tensor,
    T_in: Tensor,
    done_in: Tensor,
    want_done: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Composite one window of ``L`` Gaussians over ``P`` pixels for ``b`` tiles.

    Args:
        dx, dy: ``[b, L, P]`` mean2d minus pixel centre, pixels.
        conic: ``[b, L, 3]`` inverse 2D covariance (a, b, c), 1/px^2.
        opac: ``[b, L]`` opacity (compensated in antialiased mode).
        color: ``[b, L, D]`` features.
        valid: ``[b, L]`` bool, False for padding.
        T_in: ``[b, P]`` transmittance before this window (> 1e-4 where not done).
        done_in: ``[b, P]`` bool, pixel already stopped (or outside the image).
        want_done: also compute the updated done flags.

    Returns:
        ``(color_part [b, P, D], T_out [b, P], done_out [b, P] or None)``.

    One cumulative product serves both the stop test and the weights: with ``a0`` the alphas
    that pass the per-Gaussian tests and ``cp = cumprod(1 - a0)``, the transmittance after
    Gaussian ``l`` is ``T_in * cp[l]``. It only drops at used Gaussians and never rises, so
    the Gaussians kept by the exclusive ``T <= 1e-4`` stop form a prefix ``l < n_alive`` of
    the window, on which ``cp`` equals the product over the kept Gaussians; weights are
    ``a0[l] * T_in * cp[l-1]`` on that prefix and 0 after it, and ``T_out = T_in *
    cp[n_alive - 1]``. The masks are computed without gradient (selections, as in gsplat).
    """
    half = 0.5 * conic
    ha, cb, hc = half[..., 0, None], conic[..., 1, None], half[..., 2, None]
    # sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2 = dx (0.5 a dx + b dy) + 0.5 c dy^2
    sigma = torch.addcmul(hc * dy * dy, dx, torch.addcmul(cb * dy, ha, dx))
    dt = sigma.dtype
    op = opac * valid.to(dt)
    # exp(-sigma) underflows to denormals for far pixels, which are ~20x slower on x86 CPUs;
    # capping sigma at 50 changes nothing visible (alpha < 2e-22 is skipped either way).
    raw = op[..., None] * torch.exp(-torch.clamp_max(sigma, SIGMA_CAP))
    with torch.no_grad():
        used = ((raw >= ALPHA_THRESHOLD) & (sigma >= 0)).to(dt)
        clamp = bool((raw > ALPHA_MAX).any())
    # (masks are applied by multiplication: much faster than torch.where on CPU)
    alpha = torch.clamp_max(raw, ALPHA_MAX) if clamp else raw
    a0 = alpha * used
    cp = torch.cumprod(1.0 - a0, dim=1)  # [b, L, P]
    L = cp.shape[1]
    with torch.no_grad():
        above = cp > (T_STOP / T_in)[:, None, :]  # T_in * cp > 1e-4: a prefix along L
        alive = above & ~done_in[:, None, :]
        n_alive = alive.sum(dim=1, keepdim=True)  # [b, 1, P]
        done_out = (done_in | ~above[:, -1, :]) if want_done else None
        alive = alive.to(dt)
    cp_excl = torch.cat([torch.ones_like(cp[:, :1]), cp[:, :-1]], dim=1)
    w = a0 * cp_excl * alive  # weights / T_in
    color_part = torch.bmm(w.transpose(1, 2), color) * T_in[..., None]
    last = torch.gather(cp, 1, (n_alive - 1).clamp_(0, L - 1))[:, 0, :]
    T_out = T_in * torch.where(n_alive[:, 0, :] > 0, last, torch.ones_like(last))
    return color_part, T_out, done_out


@dataclass
class _Segment:
    sel: Tensor  # [b] positions in the sorted non-empty tile arrays
    k0: int  # first list position of the window
    L: int  # window length
    T_in: Tensor | None  # [b, P], saved for the backward (None for k0 == 0: all ones)
    done_in: Tensor | None  # [b, P] (None for k0 == 0: the outside-image mask)


@dataclass
class _TilePlan:
    tiles: Tensor  # [n_ne] global tile index (image * tiles_per_image + tile), sorted by count desc
    start: Tensor  # [n_ne] first slot of each tile in flatten_ids
    count: Tensor  # [n_ne] number of Gaussians in each tile
    flatten_ids: Tensor  # [n_kept] entry index per slot (intersections that can contribute)
    segments: list[_Segment]


class _Geometry:
    """Static description of the tile grid (pixel coordinates, outside-image mask)."""

    def __init__(self, width: int, height: int, tile_size: int, n_images: int, dtype, device):
        self.width, self.height, self.ts = width, height, tile_size
        self.tw = (width + tile_size - 1) // tile_size
        self.th = (height + tile_size - 1) // tile_size
        self.n_tiles = self.tw * self.th
        self.I = n_images
        self.P = tile_size * tile_size
        p = torch.arange(self.P, device=device)
        self.pj = (p % tile_size).to(dtype)
        self.pi = torch.div(p, tile_size, rounding_mode="floor").to(dtype)
        self.dtype, self.device = dtype, device

    def pixels(self, tiles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pixel centres ``px, py`` ``[b, P]`` of the given global tiles, and an ``[b, P]``
        mask of pixels outside the image."""
        local = tiles % self.n_tiles
        ty = torch.div(local, self.tw, rounding_mode="floor").to(self.dtype)
        tx = (local % self.tw).to(self.dtype)
        x = tx[:, None] * self.ts + self.pj[None, :]
        y = ty[:, None] * self.ts + self.pi[None, :]
        outside = (x >= self.width) | (y >= self.height)
        return x + 0.5, y + 0.5, outside

    def tiles_to_image(self, per_tile: Tensor) -> Tensor:
        """``[I * n_tiles, P, D]`` -> ``[I, H, W, D]``."""
        D = per_tile.shape[-1]
        x = per_tile.reshape(self.I, self.th, self.tw, self.ts, self.ts, D)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(self.I, self.th * self.ts, self.tw * self.ts, D)
        return x[:, : self.height, : self.width]

    def image_to_tiles(self, img: Tensor) -> Tensor:
        """``[I, H, W, D]`` -> ``[I * n_tiles, P, D]`` (zero padded)."""
        D = img.shape[-1]
        Hp, Wp = self.th * self.ts, self.tw * self.ts
        if Hp != self.height or Wp != self.width:
            img = torch.nn.functional.pad(img, (0, 0, 0, Wp - self.width, 0, Hp - self.height))
        x = img.reshape(self.I, self.th, self.ts, self.tw, self.ts, D).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(self.I * self.n_tiles, self.P, D)


@torch.no_grad()
def _cull_isects(
    means2d: Tensor,  # [M, 2]
    conics: Tensor,  # [M, 3]
    opacities: Tensor,  # [M]
    isect_offsets: Tensor,
    flatten_ids: Tensor,
    geo: _Geometry,
) -> tuple[Tensor, Tensor, Tensor]:
    """Drop the (Gaussian, tile) intersections that cannot reach alpha >= 1/255 at any pixel
    centre of the tile, keeping the depth order of the rest.

    The bounding-box binning (as gsplat's) lists every tile the box of radius ``radii``
    touches; a thin or rotated ellipse misses many of them. For each intersection we take the
    minimum of ``sigma(p) = 0.5 d^T conic d`` (``d = mean - p``) over the rectangle spanned by
    the tile's pixel centres - zero if the mean is inside, else the smallest of the four
    edge minima of the 1D quadratic - and drop it when ``opacity * exp(-min sigma)`` is below
    1/255 (with a 0.1 % margin for rounding). Those pairs would be skipped pixel by pixel
    anyway, so the image and gradients are unchanged; only work is saved.

    Returns:
        ``(start [I*T] long, count [I*T] long, kept_flatten_ids [n_kept])``.
    """
    device = means2d.device
    n_all = geo.I * geo.n_tiles
    n_isects = int(flatten_ids.numel())
    offs = isect_offsets.reshape(-1).long()
    ends = torch.cat([offs[1:], torch.tensor([n_isects], device=device, dtype=torch.long)])
    counts = ends - offs
    if n_isects == 0:
        return offs, counts, flatten_ids
    tile_of = torch.repeat_interleave(torch.arange(n_all, device=device), counts)
    ent = flatten_ids.long()
    m = means2d.detach()[ent].float()
    q = conics.detach()[ent].float()
    o = opacities.detach()[ent].float()
    local = tile_of % geo.n_tiles
    ty = torch.div(local, geo.tw, rounding_mode="floor").float()
    tx = (local % geo.tw).float()
    ts = float(geo.ts)
    x0, x1 = tx * ts + 0.5, tx * ts + ts - 0.5
    y0, y1 = ty * ts + 0.5, ty * ts + ts - 0.5
    mx, my = m[:, 0], m[:, 1]
    a, b, c = q[:, 0], q[:, 1], q[:, 2]
    inside = (mx >= x0) & (mx <= x1) & (my >= y0) & (my <= y1)
    ok = (a > 0) & (c > 0) & (a * c - b * b > 0)
    a_s = torch.where(ok, a, torch.ones_like(a))
    c_s = torch.where(ok, c, torch.ones_like(c))

    def q2(dx, dy):
        return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy

    best = torch.full_like(mx, float("inf"))
    for xe in (x0, x1):  # vertical edges: minimise over y in [y0, y1]
        dx = mx - xe
        y = (my + b * dx / c_s).clamp(min=y0, max=y1)  # argmin of the 1D quadratic, clamped
        best = torch.minimum(best, q2(dx, my - y))
    for ye in (y0, y1):  # horizontal edges: minimise over x in [x0, x1]
        dy = my - ye
        x = (mx + b * dy / a_s).clamp(min=x0, max=x1)
        best = torch.minimum(best, q2(mx - x, dy))
    best = torch.where(inside, torch.zeros_like(best), best)
    keep = ~ok | (o * torch.exp(-best) >= ALPHA_THRESHOLD * 0.999)
    new_counts = torch.zeros(n_all, dtype=torch.long, device=device).index_add_(
        0, tile_of, keep.long())
    new_start = torch.cumsum(new_counts, 0) - new_counts
    return new_start, new_counts, flatten_ids[keep]


def _gather(plan: _TilePlan, seg: _Segment, flatten_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Entry indices ``[b, L]`` (long) and validity mask of one segment's window."""
    pos = seg.k0 + torch.arange(seg.L, device=flatten_ids.device)
    cnt = plan.count[seg.sel]
    valid = pos[None, :] < cnt[:, None]
    slot = plan.start[seg.sel][:, None] + pos[None, :]
    slot = torch.where(valid, slot, 0)
    ent = flatten_ids[slot].long()
    return ent, valid


def _forward(
    means2d: Tensor,  # [M, 2]
    conics: Tensor,  # [M, 3]
    colors: Tensor,  # [M, D]
    opacities: Tensor,  # [M]
    backgrounds: Tensor | None,  # [I, D]
    geo: _Geometry,
    isect_offsets: Tensor,
    flatten_ids: Tensor,
    budget: int,
    keep_plan: bool,
) -> tuple[Tensor, Tensor, _TilePlan]:
    dtype, device = means2d.dtype, means2d.device
    D = colors.shape[-1]
    P = geo.P
    offs, counts, flatten_ids = _cull_isects(means2d, conics, opacities, isect_offsets, flatten_ids, geo)
    ne = torch.nonzero(counts > 0).squeeze(1)
    order = torch.argsort(counts[ne], descending=True, stable=True)
    tiles = ne[order]
    plan = _TilePlan(tiles=tiles, start=offs[tiles], count=counts[tiles], flatten_ids=flatten_ids,
                     segments=[])
    n_ne = tiles.numel()

    acc = torch.zeros((n_ne, P, D), dtype=dtype, device=device)
    T = torch.ones((n_ne, P), dtype=dtype, device=device)
    _, _, outside = geo.pixels(tiles)
    done = outside.clone()

    counts_host = plan.count.tolist()
    window = MAX_WINDOW_CUDA if device.type == "cuda" else MAX_WINDOW
    s_max = max(1, min(budget // P, window))
    i = 0
    while i < n_ne:
        cmax = counts_host[i]
        L = min(cmax, s_max)
        B = max(1, budget // (L * P))
        batch = torch.arange(i, min(i + B, n_ne), device=device)
        i += B
        k0 = 0
        while k0 < cmax:
            live = (plan.count[batch] > k0) & ~done[batch].all(dim=1)
            sel = batch[live]
            if sel.numel() == 0:
                break
            Lk = min(L, int(plan.count[sel].max()) - k0)
            seg = _Segment(sel=sel, k0=k0, L=Lk, T_in=None, done_in=None)
            ent, valid = _gather(plan, seg, flatten_ids)
            px, py, _ = geo.pixels(tiles[sel])
            m = means2d[ent]
            dx = m[..., 0, None] - px[:, None, :]
            dy = m[..., 1, None] - py[:, None, :]
            T_in, done_in = T[sel], done[sel]
            if keep_plan:
                if k0 > 0:  # first windows start from T = 1 and the outside-image mask
                    seg.T_in, seg.done_in = T_in, done_in
                plan.segments.append(seg)
            cpart, T_out, done_out = _segment_math(
                dx, dy, conics[ent], opacities[ent], colors[ent], valid, T_in, done_in
            )
            acc.index_add_(0, sel, cpart)
            T[sel] = T_out
            done[sel] = done_out
            k0 += L

    # Assemble the images: empty tiles show the background, T = 1.
    n_all = geo.I * geo.n_tiles
    T_all = torch.ones((n_all, P), dtype=dtype, device=device)
    T_all[tiles] = T
    col_all = torch.zeros((n_all, P, D), dtype=dtype, device=device)
    col_all[tiles] = acc
    if backgrounds is not None:
        bg = backgrounds.to(dtype).repeat_interleave(geo.n_tiles, dim=0)  # [n_all, D]
        col_all = col_all + T_all[..., None] * bg[:, None, :]
    render_colors = geo.tiles_to_image(col_all)
    render_alphas = geo.tiles_to_image((1.0 - T_all)[..., None])
    return render_colors.contiguous(), render_alphas.contiguous(), plan


class _RasterizeToPixels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, cfg):
        geo, isect_offsets, flatten_ids, budget, absgrad = cfg
        shapes = (means2d.shape, conics.shape, colors.shape, opacities.shape)
        m2 = means2d.reshape(-1, 2)
        co = conics.reshape(-1, 3)
        cl = colors.reshape(-1, colors.shape[-1])
        op = opacities.reshape(-1)
        render_colors, render_alphas, plan = _forward(
            m2, co, cl, op, backgrounds, geo, isect_offsets, flatten_ids, budget, keep_plan=True
        )
        ctx.save_for_backward(m2, co, cl, op, backgrounds, render_alphas)
        ctx.plan, ctx.geo, ctx.shapes = plan, geo, shapes
        ctx.absgrad_target = means2d if absgrad else None
        return render_colors, render_alphas

    @staticmethod
    @once_differentiable
    def backward(ctx, g_colors, g_alphas):
        m2, co, cl, op, backgrounds, render_alphas = ctx.saved_tensors
        plan: _TilePlan = ctx.plan
        flatten_ids = plan.flatten_ids
        geo: _Geometry = ctx.geo
        need_m, need_co, need_cl, need_op, need_bg = ctx.needs_input_grad[:5]
        absgrad = ctx.absgrad_target is not None
        D = cl.shape[1]
        dtype, device = m2.dtype, m2.device
        if g_colors is None:
            g_colors = torch.zeros(render_alphas.shape[:-1] + (D,), dtype=dtype, device=device)
        if g_alphas is None:
            g_alphas = torch.zeros_like(render_alphas)

        tiles = plan.tiles
        gC_all = geo.image_to_tiles(g_colors)  # [n_all, P, D]
        gA_all = geo.image_to_tiles(g_alphas)[..., 0]  # [n_all, P]
        gC = gC_all[tiles]
        # render_alpha = 1 - T_final, render_color = acc + T_final * bg
        gT = -gA_all[tiles]
        if backgrounds is not None:
            bg_t = backgrounds.to(dtype)[torch.div(tiles, geo.n_tiles, rounding_mode="floor")]
            gT = gT + torch.einsum("npd,nd->np", gC, bg_t)
        gT = gT.contiguous()

        grad_m = torch.zeros_like(m2) if need_m else None
        grad_co = torch.zeros_like(co) if need_co else None
        grad_cl = torch.zeros_like(cl) if need_cl else None
        grad_op = torch.zeros_like(op) if need_op else None
        abs_buf = torch.zeros_like(m2) if absgrad else None
        want_dxy = need_m or absgrad

        for seg in reversed(plan.segments):
            ent, valid = _gather(plan, seg, flatten_ids)
            px, py, outside = geo.pixels(tiles[seg.sel])
            if seg.k0 == 0:
                T_saved, done_saved = torch.ones_like(px), outside
            else:
                T_saved, done_saved = seg.T_in, seg.done_in
            with torch.enable_grad():
                m = m2[ent]
                dx = (m[..., 0, None] - px[:, None, :]).requires_grad_(want_dxy)
                dy = (m[..., 1, None] - py[:, None, :]).requires_grad_(want_dxy)
                c_g = co[ent].requires_grad_(need_co)
                o_g = op[ent].requires_grad_(need_op)
                col_g = cl[ent].requires_grad_(need_cl)
                T_in = T_saved.detach().requires_grad_(seg.k0 > 0)
                cpart, T_out, _ = _segment_math(
                    dx, dy, c_g, o_g, col_g, valid, T_in, done_saved, want_done=False
                )
                inputs = [t for t in (dx, dy, c_g, o_g, col_g, T_in) if t.requires_grad]
                if not inputs:
                    continue
                # T does not depend on the colours: with only colours requiring grad,
                # T_out has no graph and takes no part
                outs = [(o, g) for o, g in ((cpart, gC[seg.sel]), (T_out, gT[seg.sel]))
                        if o.requires_grad]
                grads = torch.autograd.grad(
                    [o for o, _ in outs], inputs, [g for _, g in outs], allow_unused=True
                )
            it = iter(grads)  # in the order of `inputs`
            ev = ent[valid]
            if want_dxy:
                gdx, gdy = next(it), next(it)
                gdx = torch.zeros_like(dx) if gdx is None else gdx
                gdy = torch.zeros_like(dy) if gdy is None else gdy
                if need_m:
                    gm = torch.stack([gdx.sum(-1), gdy.sum(-1)], dim=-1)
                    grad_m.index_add_(0, ev, gm[valid])
                if absgrad:
                    ga = torch.stack([gdx.abs().sum(-1), gdy.abs().sum(-1)], dim=-1)
                    abs_buf.index_add_(0, ev, ga[valid])
            if need_co:
                g = next(it)
                if g is not None:
                    grad_co.index_add_(0, ev, g[valid])
            if need_op:
                g = next(it)
                if g is not None:
                    grad_op.index_add_(0, ev, g[valid])
            if need_cl:
                g = next(it)
                if g is not None:
                    grad_cl.index_add_(0, ev, g[valid])
            if seg.k0 > 0:
                g = next(it)
                gT[seg.sel] = torch.zeros_like(T_saved) if g is None else g

        grad_bg = None
        if need_bg and backgrounds is not None:
            T_final = 1.0 - render_alphas  # [I, H, W, 1]
            grad_bg = (T_final * g_colors).sum(dim=(1, 2)).to(backgrounds.dtype)

        if absgrad:
            target = ctx.absgrad_target
            target.absgrad = abs_buf.reshape(ctx.shapes[0])
        s_m, s_co, s_cl, s_op = ctx.shapes
        return (
            grad_m.reshape(s_m) if grad_m is not None else None,
            grad_co.reshape(s_co) if grad_co is not None else None,
            grad_cl.reshape(s_cl) if grad_cl is not None else None,
            grad_op.reshape(s_op) if grad_op is not None else None,
            grad_bg,
            None,
        )


def rasterize_to_pixels(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    width: int,
    height: int,
    tile_size: int,
    isect_offsets: Tensor,
    flatten_ids: Tensor,
    backgrounds: Tensor | None = None,
    absgrad: bool = False,
    chunk_budget: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Composite projected Gaussians into images (pure PyTorch; see the module docstring).

    Mirrors ``gsplat.rasterize_to_pixels``: the M entries are either dense ``[I, N, ...]``
    (M = I*N, ``flatten_ids`` index the flattened array) or packed ``[nnz, ...]``.

    Args:
        means2d: ``[I, N, 2]`` or ``[nnz, 2]`` projected centres, pixels.
        conics: ``[I, N, 3]`` or ``[nnz, 3]`` inverse 2D covariances (a, b, c), 1/px^2.
        colors: ``[I, N, D]`` or ``[nnz, D]`` features per entry.
        opacities: ``[I, N]`` or ``[nnz]`` opacities in [0, 1].
        width, height: image size, pixels.
        tile_size: tile side, pixels.
        isect_offsets: ``[I, tile_height, tile_width]`` int32 from
            :func:`splatforge.raster.tiles.isect_offset_encode`.
        flatten_ids: ``[n_isects]`` int32 entry index of each sorted intersection.
        backgrounds: optional ``[I, D]`` colour behind the Gaussians.
        absgrad: after backward, ``means2d.absgrad`` holds the per-pixel absolute gradients
            summed (same shape as ``means2d``); accumulates like nothing else: it is
            overwritten by each backward pass, as in gsplat.
        chunk_budget: Gaussian-pixel pairs per evaluation step (memory bound); default
            :func:`default_chunk_budget`.

    Returns:
        ``(render_colors [I, H, W, D], render_alphas [I, H, W, 1])``.

    Raises:
        ValueError: ``chunk_budget`` not positive.
    """
    budget = default_chunk_budget(means2d.device) if chunk_budget is None else int(chunk_budget)
    if budget <= 0:
        raise ValueError(f"chunk_budget must be a positive number of Gaussian-pixel pairs, got {budget}")
    I = isect_offsets.shape[0]
    geo = _Geometry(width, height, tile_size, I, means2d.dtype, means2d.device)
    inputs = (means2d, conics, colors, opacities) + ((backgrounds,) if backgrounds is not None else ())
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        cfg = (geo, isect_offsets, flatten_ids, budget, absgrad)
        return _RasterizeToPixels.apply(means2d, conics, colors, opacities, backgrounds, cfg)
    with torch.no_grad():
        rc, ra, _ = _forward(
            means2d.reshape(-1, 2),
            conics.reshape(-1, 3),
            colors.reshape(-1, colors.shape[-1]),
            opacities.reshape(-1),
            backgrounds,
            geo,
            isect_offsets,
            flatten_ids,
            budget,
            keep_plan=False,
        )
    return rc, ra


__all__ = [
    "ALPHA_MAX",
    "DEFAULT_CHUNK_BUDGET",
    "DEFAULT_CHUNK_BUDGET_CUDA",
    "T_STOP",
    "default_chunk_budget",
    "rasterize_to_pixels",
]
