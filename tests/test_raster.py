"""The pure-PyTorch rasterizer (``splatforge.raster``) on CPU.

Oracles:

* gsplat's own pure-PyTorch reference, ``gsplat.cuda._torch_impl``: ``_quat_scale_to_covar_preci``,
  ``_fully_fused_projection``, ``_spherical_harmonics``, ``_isect_tiles`` and
  ``_isect_offset_encode`` all run on CPU. Its ``_rasterize_to_pixels`` needs CUDA kernels
  (``rasterize_to_indices_in_range``) and nerfacc, so compositing is checked against
  :func:`naive_composite` below: a per-Gaussian, whole-image loop written from gsplat's CUDA
  kernel (``RasterizeToPixels3DGSFwd.cu``), independent of the package's tiled, chunked code.
* hand-computed values (single Gaussian, depth order, thresholds), ``torch.autograd.gradcheck``
  in float64, and a direct float64 evaluation of the MCMC relocation formula.

Everything runs single-threaded (the CI machine has 2 shared cores) and takes well under a
minute in total.
"""

from __future__ import annotations

import logging
import math
import re
import warnings

import pytest
import torch

from splatforge.errors import ConfigError
from splatforge.raster import (
    BackendUnavailableError,
    compute_relocation_torch,
    gsplat_available,
    install_torch_relocation,
    rasterize,
    select_backend,
    torch_relocation_installed,
)
from splatforge.raster.projection import project_gaussians, quat_scale_to_covar_preci
from splatforge.raster.sh import eval_sh
from splatforge.raster.tiles import intersect_tiles, isect_offset_encode, tile_grid

ti = pytest.importorskip("gsplat.cuda._torch_impl")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- helpers


def make_scene(seed=0, N=300, C=2, W=64, H=48, dtype=torch.float32, sh_K=None, opac_range=(0.05, 0.95)):
    """Random Gaussians in front of C cameras (the second one shifted and rotated)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(N, 3, generator=g, dtype=dtype) * 0.6
    means[:, 2] += 3.0
    quats = torch.randn(N, 4, generator=g, dtype=dtype)
    scales = torch.rand(N, 3, generator=g, dtype=dtype) * 0.15 + 0.01
    lo, hi = opac_range
    opac = torch.rand(N, generator=g, dtype=dtype) * (hi - lo) + lo
    if sh_K is None:
        colors = torch.rand(N, 3, generator=g, dtype=dtype)
    else:
        colors = torch.randn(N, sh_K, 3, generator=g, dtype=dtype) * 0.3
    viewmats = torch.eye(4, dtype=dtype).repeat(C, 1, 1)
    if C > 1:
        w = torch.tensor([[0, 0.1, 0], [-0.1, 0, 0.05], [0, -0.05, 0]], dtype=dtype)
        viewmats[1, :3, :3] = torch.linalg.matrix_exp(w)
        viewmats[1, :3, 3] = torch.tensor([0.2, -0.1, 0.1], dtype=dtype)
    f = 0.95 * W
    Ks = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=dtype).repeat(C, 1, 1)
    bg = torch.rand(C, 3, generator=g, dtype=dtype)
    return {"means": means, "quats": quats, "scales": scales, "opacities": opac, "colors": colors,
            "viewmats": viewmats, "Ks": Ks, "W": W, "H": H, "bg": bg}


PARAMS = ("means", "quats", "scales", "opacities", "colors")


def leaves(scene):
    return [scene[k].clone().requires_grad_() for k in PARAMS]


def naive_composite(means2d, conics, opac, colors, depths, valid, W, H, bg=None):
    """Per-pixel front-to-back compositing over *all* valid Gaussians of each camera, one
    Gaussian at a time (gsplat kernel semantics: pixel centres at +0.5, alpha = min(0.999,
    o exp(-sigma)), skip sigma < 0 or alpha < 1/255, stop before T would reach <= 1e-4).
    ``[C, N, ...]`` inputs; returns ``([C, H, W, D], [C, H, W, 1])``."""
    C = means2d.shape[0]
    dt = means2d.dtype
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dt), torch.arange(W, dtype=dt), indexing="ij")
    px, py = xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5
    outs, alphas = [], []
    for c in range(C):
        idx = torch.nonzero(valid[c]).squeeze(1)
        idx = idx[torch.sort(depths[c, idx].detach().float(), stable=True).indices]
        T = torch.ones_like(px)
        acc = torch.zeros(px.shape[0], colors.shape[-1], dtype=dt)
        done = torch.zeros_like(px, dtype=torch.bool)
        for gi in idx.tolist():
            dx = means2d[c, gi, 0] - px
            dy = means2d[c, gi, 1] - py
            a_, b_, c_ = conics[c, gi]
            sig = 0.5 * (a_ * dx * dx + c_ * dy * dy) + b_ * dx * dy
            al = torch.clamp_max(opac[c, gi] * torch.exp(-sig), 0.999)
            use = (sig >= 0) & (al >= 1.0 / 255.0) & ~done
            stop = use & (T * (1 - al) <= 1e-4)
            done = done | stop
            use = use & ~stop
            a = torch.where(use, al, torch.zeros_like(al))
            acc = acc + (a * T)[:, None] * colors[c, gi][None]
            T = T * (1 - a)
        if bg is not None:
            acc = acc + T[:, None] * bg[c][None]
        outs.append(acc.reshape(H, W, -1))
        alphas.append((1 - T).reshape(H, W, 1))
    return torch.stack(outs), torch.stack(alphas)


def reference_render(ps, scene, sh_degree=None, rasterize_mode="classic", render_mode="RGB",
                     backgrounds=None):
    """The gsplat._torch_impl projection + SH, composited by :func:`naive_composite`."""
    means, quats, scales, opac, colors = ps
    viewmats, Ks, W, H = scene["viewmats"], scene["Ks"], scene["W"], scene["H"]
    C, N = viewmats.shape[0], means.shape[0]
    covars, _ = ti._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, m2, dep, con, comp = ti._fully_fused_projection(
        means, covars, viewmats, Ks, W, H, calc_compensations=rasterize_mode == "antialiased")
    op = opac[None].expand(C, N)
    if comp is not None:
        op = op * comp
    valid = (radii > 0).all(-1)
    if sh_degree is None:
        col = colors[None].expand(C, N, colors.shape[-1])
    else:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]
        dirs = means[None] - campos[:, None]
        col = ti._spherical_harmonics(sh_degree, dirs, colors[None].expand((C,) + colors.shape))
        col = torch.clamp_min(col + 0.5, 0.0)
    bg = backgrounds
    if render_mode in ("RGB+D", "RGB+ED"):
        col = torch.cat([col, dep[..., None]], -1)
        if bg is not None:
            bg = torch.cat([bg, torch.zeros(C, 1, dtype=bg.dtype)], -1)
    elif render_mode in ("D", "ED"):
        col = dep[..., None]
        bg = None if bg is None else torch.zeros(C, 1, dtype=bg.dtype)
    img, alpha = naive_composite(m2, con, op, col, dep, valid, W, H, bg)
    if render_mode in ("ED", "RGB+ED"):
        img = torch.cat([img[..., :-1], img[..., -1:] / alpha.clamp(min=1e-10)], -1)
    return img, alpha


def rel_l2(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ----------------------------------------------------------------------------- projection / SH / tiles


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_projection_matches_gsplat_torch_impl(mode):
    s = make_scene(seed=1)
    ps = leaves(s)
    qs = leaves(s)
    aa = mode == "antialiased"
    mine = project_gaussians(ps[0], ps[1], ps[2], None, s["viewmats"], s["Ks"], s["W"], s["H"],
                             calc_compensations=aa)
    covars, _ = ti._quat_scale_to_covar_preci(qs[1], qs[2], compute_preci=False)
    radii, m2, dep, con, comp = ti._fully_fused_projection(
        qs[0], covars, s["viewmats"], s["Ks"], s["W"], s["H"], calc_compensations=aa)
    # opacity-free radii are ceil(3.33 sigma), exactly gsplat's reference.
    assert torch.equal(mine.radii, radii)
    v = mine.valid
    assert 200 < int(v.sum()) < v.numel()  # some culled, most visible
    outs = [(mine.means2d, m2), (mine.depths, dep), (mine.conics, con)]
    if aa:
        outs.append((mine.compensations, comp))
    for a, b in outs:
        assert float((a[v] - b[v]).detach().abs().max()) < 1e-4
    g = torch.Generator().manual_seed(5)
    loss_a = sum((a[v] * torch.randn(a[v].shape, generator=g)).sum() for a, _ in outs)
    g = torch.Generator().manual_seed(5)
    loss_b = sum((b[v] * torch.randn(b[v].shape, generator=g)).sum() for _, b in outs)
    ga = torch.autograd.grad(loss_a, ps[:3])
    gb = torch.autograd.grad(loss_b, qs[:3])
    for x, y in zip(ga, gb):
        assert rel_l2(x, y) < 1e-4


def test_opacity_aware_radius_and_cull():
    """gsplat 1.5.3 passes opacities to the projection: extend = min(3.33, sqrt(2 ln(255 o)))
    and o < 1/255 is culled."""
    s = make_scene(seed=2, N=50, C=1)
    op = s["opacities"].clone()
    op[:5] = 0.003  # < 1/255
    pr = project_gaussians(s["means"], s["quats"], s["scales"], op, s["viewmats"], s["Ks"],
                           s["W"], s["H"])
    plain = project_gaussians(s["means"], s["quats"], s["scales"], None, s["viewmats"], s["Ks"],
                              s["W"], s["H"])
    assert not pr.valid[0, :5].any()
    both = pr.valid & plain.valid
    ext = torch.clamp(torch.sqrt(2 * torch.log(op * 255.0)), max=3.33)
    # radius_extend / radius_3.33 is about ext / 3.33 (ceil makes it inexact; check bounds)
    sig = (plain.radii.float() / 3.33)[both]
    r = pr.radii.float()[both]
    e = ext[None].expand_as(pr.valid)[both][:, None]
    assert torch.all(r <= torch.ceil(e * sig) + 1) and torch.all(r >= torch.floor(e * (sig - 1)))


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat_torch_impl(degree):
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(500, 3, generator=g) * 2.0
    coeffs = torch.randn(500, 16, 3, generator=g)
    d1, c1 = dirs.clone().requires_grad_(), coeffs.clone().requires_grad_()
    d2, c2 = dirs.clone().requires_grad_(), coeffs.clone().requires_grad_()
    a = eval_sh(degree, d1, c1)
    b = ti._spherical_harmonics(degree, d2, c2)
    assert float((a - b).detach().abs().max()) < 1e-5
    w = torch.randn(a.shape, generator=g)
    ga = torch.autograd.grad((a * w).sum(), [c1] + ([d1] if degree else []))
    gb = torch.autograd.grad((b * w).sum(), [c2] + ([d2] if degree else []))
    for x, y in zip(ga, gb):
        assert rel_l2(x, y) < 1e-5


def test_sh_degree_out_of_range():
    with pytest.raises(ConfigError, match="sh_degree"):
        eval_sh(4, torch.randn(2, 3), torch.randn(2, 25, 3))
    with pytest.raises(ConfigError, match="K=4"):
        eval_sh(2, torch.randn(2, 3), torch.randn(2, 4, 3))


def test_quat_scale_to_covar_preci_matches_reference():
    g = torch.Generator().manual_seed(0)
    q, s = torch.randn(64, 4, generator=g), torch.rand(64, 3, generator=g) + 0.1
    for triu in (False, True):
        a = quat_scale_to_covar_preci(q, s, triu=triu)
        b = ti._quat_scale_to_covar_preci(q, s, triu=triu)
        for x, y in zip(a, b):
            assert torch.allclose(x, y, atol=1e-5, rtol=1e-5)


def test_tile_binning_matches_gsplat_torch_impl():
    s = make_scene(seed=3, N=150, C=2, W=70, H=45)  # partial tiles at the right / bottom
    with torch.no_grad():
        pr = project_gaussians(s["means"], s["quats"], s["scales"], None, s["viewmats"], s["Ks"],
                               s["W"], s["H"])
    C, N = pr.valid.shape
    tw, th = tile_grid(s["W"], s["H"], 16)
    image_ids = torch.arange(C).repeat_interleave(N)
    tpg, isect_ids, flatten_ids = intersect_tiles(
        pr.means2d.reshape(-1, 2), pr.radii.reshape(-1, 2), pr.depths.reshape(-1), image_ids,
        C, 16, tw, th)
    offsets = isect_offset_encode(isect_ids, C, tw, th)
    tpg_ref, ids_ref, flat_ref = ti._isect_tiles(pr.means2d, pr.radii, pr.depths, 16, tw, th)
    off_ref = ti._isect_offset_encode(ids_ref, C, tw, th)
    assert isect_ids.numel() > 300
    assert torch.equal(tpg.reshape(C, N), tpg_ref)
    assert torch.equal(isect_ids, ids_ref)
    assert torch.equal(flatten_ids, flat_ref)
    assert torch.equal(offsets, off_ref)
    # within each tile the depths are non-decreasing (front to back)
    tile = isect_ids >> 32
    d = pr.depths.reshape(-1)[flatten_ids.long()]
    same = tile[1:] == tile[:-1]
    assert torch.all(d[1:][same] >= d[:-1][same])


# ----------------------------------------------------------------------------- full render parity

CASES = [
    # (rasterize_mode, sh_degree, render_mode, backgrounds, packed)
    ("classic", None, "RGB", True, False),
    ("antialiased", None, "RGB", False, False),
    ("classic", 0, "RGB+D", True, False),
    ("antialiased", 1, "RGB+ED", True, True),
    ("classic", 2, "D", False, False),
    ("antialiased", 3, "ED", False, False),
    ("classic", 3, "RGB", True, True),
]


@pytest.mark.parametrize("rmode,deg,render_mode,use_bg,packed", CASES)
def test_render_matches_reference(rmode, deg, render_mode, use_bg, packed):
    s = make_scene(seed=10 + (deg or 0), sh_K=None if deg is None else 16)
    bg = s["bg"] if use_bg and render_mode not in ("D", "ED") else None
    ps, qs = leaves(s), leaves(s)
    img, alpha, meta = rasterize(*ps, s["viewmats"], s["Ks"], s["W"], s["H"], sh_degree=deg,
                                 rasterize_mode=rmode, render_mode=render_mode, backgrounds=bg,
                                 packed=packed, backend="torch")
    ref, ref_a = reference_render(qs, s, deg, rmode, render_mode, bg)
    assert img.shape == ref.shape and alpha.shape == ref_a.shape
    assert float((img - ref).detach().abs().max()) < 1e-4
    assert float((alpha - ref_a).detach().abs().max()) < 1e-4
    g = torch.Generator().manual_seed(0)
    w, wa = torch.randn(img.shape, generator=g), torch.randn(alpha.shape, generator=g)
    needs = [True, True, True, True, render_mode not in ("D", "ED")]
    pa = [p for p, n in zip(ps, needs) if n]
    pb = [p for p, n in zip(qs, needs) if n]
    ga = torch.autograd.grad((img * w).sum() + (alpha * wa).sum(), pa)
    gb = torch.autograd.grad((ref * w).sum() + (ref_a * wa).sum(), pb)
    for name, x, y in zip([k for k, n in zip(PARAMS, needs) if n], ga, gb):
        assert rel_l2(x, y) < 1e-3, name
    assert meta["backend"] == "torch"


def test_reference_scene_exercises_thresholds():
    """The parity scene really has saturated pixels (T stop) and sub-1/255 alphas, so the
    parity tests above cover both selections."""
    s = make_scene(seed=10, opac_range=(0.6, 0.99), N=400)
    img, alpha, _ = rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"],
                              s["viewmats"], s["Ks"], s["W"], s["H"], backend="torch")
    ref, ref_a = reference_render([s[k] for k in PARAMS], s)
    assert float((img - ref).abs().max()) < 1e-4
    assert float((alpha - ref_a).abs().max()) < 1e-4
    assert int(((1 - alpha) < 2e-4).sum()) > 50  # pixels that stopped near T = 1e-4


def test_needle_gaussians_tile_culling_is_exact():
    """Long thin rotated Gaussians: their bounding boxes list many tiles the ellipse misses;
    those intersections are dropped before compositing, without changing image or grads."""
    s = make_scene(seed=12, N=150, C=1, W=96, H=64)
    s["scales"][:, 0] *= 6.0
    s["scales"][:, 1] *= 0.05
    ps, qs = leaves(s), leaves(s)
    img, alpha, meta = rasterize(*ps, s["viewmats"], s["Ks"], s["W"], s["H"], backend="torch",
                                 backgrounds=s["bg"])
    kept = img.grad_fn.plan.flatten_ids.numel()
    assert kept < 0.8 * meta["flatten_ids"].numel()
    ref, ref_a = reference_render(qs, s, backgrounds=s["bg"])
    assert float((img - ref).detach().abs().max()) < 1e-4
    g = torch.Generator().manual_seed(0)
    w = torch.randn(img.shape, generator=g)
    ga = torch.autograd.grad((img * w).sum() + alpha.sum(), ps)
    gb = torch.autograd.grad((ref * w).sum() + ref_a.sum(), qs)
    for name, x, y in zip(PARAMS, ga, gb):
        assert rel_l2(x, y) < 1e-3, name


# ----------------------------------------------------------------------------- hand-checkable cases


def _single(o=0.8, s=0.05, z=2.0, f=100.0, W=21, H=21, mode="classic", eps2d=0.3, xy=(0.0, 0.0)):
    dt = torch.float64
    means = torch.tensor([[xy[0], xy[1], z]], dtype=dt)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=dt)
    scales = torch.full((1, 3), s, dtype=dt)
    opac = torch.tensor([o], dtype=dt)
    colors = torch.tensor([[1.0, 0.5, 0.25]], dtype=dt)
    viewmats = torch.eye(4, dtype=dt)[None]
    Ks = torch.tensor([[f, 0, 10.5], [0, f, 10.5], [0, 0, 1]], dtype=dt)[None]
    out = rasterize(means, quats, scales, opac, colors, viewmats, Ks, W, H, eps2d=eps2d,
                    rasterize_mode=mode, backend="torch")
    return out, (f * s / z) ** 2 + eps2d, (f * s / z) ** 2


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_single_isotropic_gaussian_analytic(mode):
    (img, alpha, meta), var, var0 = _single(mode=mode)
    # Mip-Splatting: sqrt(det(S) / det(S + eps I)) = var0 / var for an isotropic 2x2 S
    o = 0.8 * (var0 / var if mode == "antialiased" else 1.0)
    # centre projects to (10.5, 10.5) = centre of pixel (10, 10)
    assert torch.allclose(meta["means2d"][0, 0], torch.tensor([10.5, 10.5], dtype=torch.float64))
    for (i, j) in [(10, 10), (10, 12), (7, 10), (13, 14), (10, 16)]:
        r2 = (i - 10) ** 2 + (j - 10) ** 2
        a = o * math.exp(-0.5 * r2 / var)
        expect = a if a >= 1 / 255 else 0.0
        assert abs(float(alpha[0, i, j, 0]) - expect) < 1e-9
        assert abs(float(img[0, i, j, 1]) - 0.5 * expect) < 1e-9
    assert int(img[0].argmax() // 3) == 10 * 21 + 10
    # per-axis radii: ceil(min(3.33, sqrt(2 ln(255 o))) * sigma)
    ext = min(3.33, math.sqrt(2 * math.log(255 * o)))
    r = math.ceil(ext * math.sqrt(var))
    assert meta["radii"][0, 0].tolist() == [r, r]
    assert meta["radii"].dtype == torch.int32


def test_alpha_below_threshold_is_skipped():
    o = 0.0045
    (_, alpha, _), var, _ = _single(o=o)
    # r^2 <= 1: o exp(-r^2 / 2 var) >= 1/255 is drawn; r^2 = 2 gives a (nonzero) alpha just
    # below 1/255, which is skipped exactly
    a1 = o * math.exp(-0.5 / var)
    assert a1 >= 1 / 255 > o * math.exp(-1.0 / var) > 0
    assert abs(float(alpha[0, 10, 10, 0]) - o) < 1e-12
    assert abs(float(alpha[0, 10, 11, 0]) - a1) < 1e-12
    assert float(alpha[0, 11, 11, 0]) == 0.0
    assert float(alpha.sum()) == pytest.approx(o + 4 * a1, rel=1e-9)
    # below 1/255 everywhere: culled in projection, nothing drawn
    (_, alpha, meta), _, _ = _single(o=0.003)
    assert float(alpha.abs().max()) == 0.0 and int(meta["radii"].abs().max()) == 0


def _stack(opacities, colors, depths):
    dt = torch.float64
    n = len(opacities)
    means = torch.tensor([[0.0, 0.0, d] for d in depths], dtype=dt)
    quats = torch.tensor([[1.0, 0, 0, 0]] * n, dtype=dt)
    scales = torch.tensor([[0.2 * d, 0.2 * d, 0.01] for d in depths], dtype=dt)  # ~20 px wide
    viewmats = torch.eye(4, dtype=dt)[None]
    Ks = torch.tensor([[100.0, 0, 8.5], [0, 100.0, 8.5], [0, 0, 1]], dtype=dt)[None]
    return rasterize(means, quats, scales, torch.tensor(opacities, dtype=dt),
                     torch.tensor(colors, dtype=dt), viewmats, Ks, 17, 17, backend="torch")


def test_depth_order_near_hides_far():
    red, blue = [1.0, 0, 0], [0, 0, 1.0]
    img1, _, _ = _stack([0.99, 0.99], [red, blue], [1.0, 2.0])
    img2, _, _ = _stack([0.99, 0.99], [blue, red], [2.0, 1.0])  # input order does not matter
    px = img1[0, 8, 8]
    assert float(px[0]) == pytest.approx(0.99, abs=1e-9)
    assert float(px[2]) == pytest.approx(0.01 * 0.99, abs=1e-9)
    assert torch.allclose(img1, img2, atol=1e-12)
    img3, _, _ = _stack([0.99, 0.99], [red, blue], [2.0, 1.0])  # now blue is in front
    assert float(img3[0, 8, 8, 2]) == pytest.approx(0.99, abs=1e-9)


def test_alpha_is_clamped_at_0999():
    _, alpha, _ = _stack([1.0], [[1.0, 1.0, 1.0]], [1.0])
    assert float(alpha[0, 8, 8, 0]) == pytest.approx(0.999, abs=1e-12)


def test_transmittance_stop_is_exclusive():
    # T after each: 0.05, 0.0025, 1.25e-4, 6.25e-6 <= 1e-4 -> the 4th is not drawn
    eye = torch.eye(5).tolist()
    img, alpha, _ = _stack([0.95] * 5, eye, [1.0, 1.5, 2.0, 2.5, 3.0])
    px = img[0, 8, 8]
    assert float(px[0]) == pytest.approx(0.95, abs=1e-9)
    assert float(px[1]) == pytest.approx(0.05 * 0.95, abs=1e-9)
    assert float(px[2]) == pytest.approx(0.0025 * 0.95, abs=1e-9)
    assert float(px[3]) == 0.0 and float(px[4]) == 0.0
    assert float(alpha[0, 8, 8, 0]) == pytest.approx(1 - 1.25e-4, abs=1e-12)


def test_pixel_centre_convention_and_background():
    # a tiny Gaussian at (3.5, 2.5) lights pixel (row 2, col 3) most; background fills the rest
    dt = torch.float64
    f = 100.0
    means = torch.tensor([[(3.5 - 8.0) / f * 2, (2.5 - 8.0) / f * 2, 2.0]], dtype=dt)
    out, alpha, _ = rasterize(means, torch.tensor([[1.0, 0, 0, 0]], dtype=dt),
                              torch.full((1, 3), 1e-4, dtype=dt), torch.tensor([0.9], dtype=dt),
                              torch.tensor([[1.0]], dtype=dt), torch.eye(4, dtype=dt)[None],
                              torch.tensor([[[f, 0, 8.0], [0, f, 8.0], [0, 0, 1]]], dtype=dt),
                              16, 16, backgrounds=torch.tensor([[0.25]], dtype=dt), backend="torch")
    a = alpha[0, ..., 0]
    assert divmod(int(a.argmax()), 16) == (2, 3)
    assert float(a[2, 3]) == pytest.approx(0.9, abs=1e-6)
    assert float(out[0, 2, 3, 0]) == pytest.approx(0.9 + 0.1 * 0.25, abs=1e-6)
    assert float(out[0, 10, 10, 0]) == pytest.approx(0.25)


# ----------------------------------------------------------------------------- gradients


def _tiny(dt=torch.float64, sh=False):
    g = torch.Generator().manual_seed(3)
    means = torch.tensor([[0.0, 0, 2], [0.2, 0.1, 2.5], [-0.2, -0.1, 3], [0.1, -0.2, 2.2]], dtype=dt)
    N = 4
    quats = torch.randn(N, 4, generator=g, dtype=dt)
    scales = torch.rand(N, 3, generator=g, dtype=dt) * 0.1 + 0.08
    opac = torch.rand(N, generator=g, dtype=dt) * 0.6 + 0.2
    colors = (torch.randn(N, 4, 3, generator=g, dtype=dt) * 0.3 if sh
              else torch.rand(N, 3, generator=g, dtype=dt))
    viewmats = torch.eye(4, dtype=dt)[None]
    Ks = torch.tensor([[20.0, 0, 8], [0, 20, 6], [0, 0, 1]], dtype=dt)[None]
    bg = torch.rand(1, 3, generator=g, dtype=dt)
    return (means, quats, scales, opac, colors), viewmats, Ks, bg


@pytest.mark.parametrize("mode,sh", [("classic", False), ("antialiased", True)])
def test_gradcheck_float64(mode, sh):
    ps, viewmats, Ks, bg = _tiny(sh=sh)

    def f(m, q, s, o, c):
        img, a, _ = rasterize(m, q, s, o, c, viewmats, Ks, 16, 12, tile_size=8, backgrounds=bg,
                              rasterize_mode=mode, render_mode="RGB+ED",
                              sh_degree=1 if sh else None, backend="torch", chunk_budget=64 * 3)
        return img, a

    inputs = [p.clone().requires_grad_() for p in ps]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_means2d_grad_and_absgrad_match_per_pixel_reference():
    s = make_scene(seed=4, N=120, C=1, W=48, H=32)
    ps = leaves(s)
    img, _, meta = rasterize(*ps, s["viewmats"], s["Ks"], s["W"], s["H"], backend="torch",
                             absgrad=True, chunk_budget=256 * 5)
    meta["means2d"].retain_grad()
    g = torch.Generator().manual_seed(1)
    w = torch.randn(img.shape, generator=g)
    (img * w).sum().backward()
    grad, absgrad = meta["means2d"].grad, meta["means2d"].absgrad
    assert grad.shape == (1, 120, 2) and absgrad.shape == (1, 120, 2)

    # reference: give every pixel its own copy of each 2D mean and sum |d loss / d copy|
    with torch.no_grad():
        pr = project_gaussians(*[p.detach() for p in ps[:3]], ps[3].detach(), s["viewmats"],
                               s["Ks"], s["W"], s["H"])
    v = pr.valid[0]
    idx = torch.nonzero(v).squeeze(1)
    idx = idx[torch.sort(pr.depths[0, idx], stable=True).indices]
    H, W = s["H"], s["W"]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    px, py = xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5
    copies = pr.means2d[0][:, None, :].expand(-1, H * W, 2).clone().requires_grad_()
    T = torch.ones(H * W)
    acc = torch.zeros(H * W, 3)
    done = torch.zeros(H * W, dtype=torch.bool)
    for gi in idx.tolist():
        dx, dy = copies[gi, :, 0] - px, copies[gi, :, 1] - py
        a_, b_, c_ = pr.conics[0, gi]
        sig = 0.5 * (a_ * dx * dx + c_ * dy * dy) + b_ * dx * dy
        al = torch.clamp_max(ps[3].detach()[gi] * torch.exp(-sig), 0.999)
        use = (sig >= 0) & (al >= 1 / 255) & ~done
        stop = use & (T * (1 - al) <= 1e-4)
        done |= stop
        a = torch.where(use & ~stop, al, torch.zeros_like(al))
        acc = acc + (a * T)[:, None] * ps[4].detach()[gi][None]
        T = T * (1 - a)
    (acc.reshape(1, H, W, 3) * w).sum().backward()
    per_pixel = copies.grad  # [N, HW, 2]
    assert rel_l2(grad[0][v], per_pixel.sum(1)[v]) < 1e-4
    assert rel_l2(absgrad[0][v], per_pixel.abs().sum(1)[v]) < 1e-4
    assert float((absgrad[0] - grad[0].abs()).min()) >= -1e-7  # |sum| <= sum |.|
    assert float(grad[0][~v].abs().max()) == 0.0


# ----------------------------------------------------------------------------- memory bound


def test_chunk_budget_does_not_change_results():
    s = make_scene(seed=6, N=400, C=2, W=50, H=40, opac_range=(0.3, 0.99))
    outs = []
    for budget in (256, 256 * 7, 1 << 22):  # 1 Gaussian per window .. everything at once
        ps = leaves(s)
        img, alpha, meta = rasterize(*ps, s["viewmats"], s["Ks"], s["W"], s["H"],
                                     backgrounds=s["bg"], backend="torch", chunk_budget=budget,
                                     absgrad=True)
        meta["means2d"].retain_grad()
        ((img ** 2).sum() + alpha.sum()).backward()
        outs.append((img.detach(), alpha.detach(), meta["means2d"].grad,
                     meta["means2d"].absgrad, *[p.grad for p in ps]))
    counts = torch.diff(torch.cat([meta["isect_offsets"].reshape(-1).long(),
                                   torch.tensor([meta["isect_ids"].numel()])]))
    assert int(counts.max()) > 7  # the small budgets really walk lists in several windows
    for other in outs[:2]:
        for a, b in zip(other[:2], outs[2][:2]):  # images: float32 rounding only
            assert float((a - b).abs().max()) < 1e-6
        for a, b in zip(other[2:], outs[2][2:]):  # gradients: summation order differs
            assert rel_l2(a, b) < 1e-5


def test_chunk_budget_validation(monkeypatch):
    s = make_scene(seed=0, N=10, C=1)
    args = [s[k] for k in PARAMS] + [s["viewmats"], s["Ks"], s["W"], s["H"]]
    with pytest.raises(ValueError, match="chunk_budget"):
        rasterize(*args, backend="torch", chunk_budget=0)
    monkeypatch.setenv("SPLATFORGE_RASTER_CHUNK_BUDGET", "lots")
    with pytest.raises(ValueError, match="SPLATFORGE_RASTER_CHUNK_BUDGET"):
        rasterize(*args, backend="torch")


def test_no_grad_render_equals_grad_render():
    s = make_scene(seed=7, N=200, C=1)
    with torch.no_grad():
        a, aa, _ = rasterize(*[s[k] for k in PARAMS], s["viewmats"], s["Ks"], s["W"], s["H"],
                             backend="torch")
    b, ba, _ = rasterize(*leaves(s), s["viewmats"], s["Ks"], s["W"], s["H"], backend="torch")
    assert torch.equal(a, b.detach()) and torch.equal(aa, ba.detach())


# ----------------------------------------------------------------------------- meta / validation


def test_meta_layout_dense_and_packed():
    s = make_scene(seed=8, N=100, C=2)
    args = [s[k] for k in PARAMS] + [s["viewmats"], s["Ks"], s["W"], s["H"]]
    _, _, m = rasterize(*args, backend="torch")
    assert m["means2d"].shape == (2, 100, 2) and m["radii"].shape == (2, 100, 2)
    assert m["depths"].shape == (2, 100) and m["conics"].shape == (2, 100, 3)
    assert m["opacities"].shape == (2, 100) and m["gaussian_ids"] is None
    assert m["isect_offsets"].shape == (2, m["tile_height"], m["tile_width"])
    assert (m["width"], m["height"], m["n_cameras"], m["tile_size"]) == (64, 48, 2, 16)
    assert m["flatten_ids"].dtype == torch.int32 and m["isect_ids"].dtype == torch.int64
    _, _, p = rasterize(*args, packed=True, backend="torch")
    nnz = int((m["radii"] > 0).all(-1).sum())
    assert p["means2d"].shape == (nnz, 2) and p["radii"].shape == (nnz, 2)
    assert p["camera_ids"].shape == (nnz,) and p["gaussian_ids"].shape == (nnz,)
    sel = (m["radii"] > 0).all(-1)
    assert torch.equal(p["gaussian_ids"], torch.nonzero(sel)[:, 1])
    assert torch.equal(p["radii"], m["radii"][sel])
    assert torch.allclose(p["means2d"], m["means2d"][sel])


def test_input_validation_errors():
    s = make_scene(seed=0, N=10, C=1)
    args = [s[k] for k in PARAMS] + [s["viewmats"], s["Ks"], s["W"], s["H"]]
    with pytest.raises(ValueError, match="quats"):
        bad = list(args)
        bad[1] = bad[1][:, :3]
        rasterize(*bad, backend="torch")
    with pytest.raises(ValueError, match="colors"):
        rasterize(*args, sh_degree=1, backend="torch")
    with pytest.raises(ConfigError, match="render_mode"):
        rasterize(*args, render_mode="RGBD", backend="torch")
    with pytest.raises(ConfigError, match="rasterize_mode"):
        rasterize(*args, rasterize_mode="mip", backend="torch")
    with pytest.raises(ValueError, match="backgrounds"):
        rasterize(*args, backgrounds=torch.zeros(1, 4), backend="torch")


def test_points_behind_camera_give_finite_gradients():
    s = make_scene(seed=9, N=100, C=1)
    s["means"][:30, 2] = torch.linspace(-2.0, 0.005, 30)  # behind / inside the near plane
    s["means"][30, 2] = 0.0
    ps = leaves(s)
    img, alpha, meta = rasterize(*ps, s["viewmats"], s["Ks"], s["W"], s["H"], backend="torch",
                                 rasterize_mode="antialiased", sh_degree=None)
    (img.sum() + alpha.sum()).backward()
    assert int((meta["radii"][0, :31] > 0).sum()) == 0
    for p in ps:
        assert torch.isfinite(p.grad).all()


# ----------------------------------------------------------------------------- backends


def test_backend_selection_on_cpu(caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.DEBUG, logger="splatforge.raster"):
            assert select_backend("auto", "cpu") == "torch"
            s = make_scene(seed=0, N=20, C=1)
            _, _, meta = rasterize(*[s[k] for k in PARAMS], s["viewmats"], s["Ks"], s["W"], s["H"])
    assert meta["backend"] == "torch"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert select_backend("torch", "cuda") == "torch"
    with pytest.raises(ConfigError, match="backend must be one of"):
        select_backend("cuda", "cpu")


def test_gsplat_backend_on_cpu_is_a_clear_error():
    s = make_scene(seed=0, N=20, C=1)
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors.*backend='torch'") as e:
        rasterize(*[s[k] for k in PARAMS], s["viewmats"], s["Ks"], s["W"], s["H"], backend="gsplat")
    assert isinstance(e.value, ConfigError) and isinstance(e.value, RuntimeError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_gsplat_unavailable_without_gpu(monkeypatch, caplog):
    import splatforge.raster as R

    assert gsplat_available() is False
    assert "no CUDA device" in R.gsplat_unavailable_reason()
    with pytest.raises(BackendUnavailableError, match="cannot be used: no CUDA device"):
        select_backend("gsplat", "cuda")
    # auto with CUDA tensors but no usable gsplat: torch backend, one warning naming the cause
    monkeypatch.setattr(R, "_warned_fallback", False)
    with caplog.at_level(logging.WARNING, logger="splatforge.raster"):
        assert select_backend("auto", "cuda") == "torch"
        assert select_backend("auto", "cuda:0") == "torch"
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1
    assert "gsplat CUDA backend is unavailable" in msgs[0] and "no CUDA device" in msgs[0]
    assert "pure-PyTorch" in msgs[0]


# ----------------------------------------------------------------------------- MCMC relocation


def _relocation_direct(o, s, n, n_max):
    n = min(max(n, 1), n_max)
    new_o = 1.0 - (1.0 - o) ** (1.0 / n)
    denom = 0.0
    for i in range(1, n + 1):
        for k in range(i):
            denom += math.comb(i - 1, k) * (-1) ** k * new_o ** (k + 1) / math.sqrt(k + 1)
    return new_o, o / denom * s


def test_relocation_matches_direct_formula():
    from gsplat.strategy import MCMCStrategy

    binoms = MCMCStrategy().initialize_state()["binoms"]  # [51, 51]
    g = torch.Generator().manual_seed(0)
    n = 200
    o = torch.rand(n, generator=g) * 0.98 + 0.01
    s = torch.rand(n, 3, generator=g) + 0.01
    ratios = torch.randint(1, 60, (n,), generator=g)  # some above n_max = 51
    ratios[:3] = torch.tensor([1, 51, 80])
    new_o, new_s = compute_relocation_torch(o, s, ratios.clone(), binoms)
    assert new_o.dtype == torch.float32 and new_s.shape == (n, 3)
    for i in range(n):
        eo, es = _relocation_direct(float(o[i]), 1.0, int(ratios[i]), 51)
        assert float(new_o[i]) == pytest.approx(eo, rel=1e-5)
        assert torch.allclose(new_s[i].double(), s[i].double() * es, rtol=1e-5)
    # N = 1 leaves the Gaussian unchanged
    assert float(new_o[0]) == pytest.approx(float(o[0]), rel=1e-6)
    assert torch.allclose(new_s[0], s[0], rtol=1e-5)


def test_install_relocation_dispatches_non_cuda_tensors():
    from gsplat.strategy import ops

    install_torch_relocation()
    install_torch_relocation()  # idempotent
    assert torch_relocation_installed()
    cov, pre = ops.quat_scale_to_covar_preci(torch.randn(5, 4), torch.rand(5, 3) + 0.1)
    assert cov.shape == (5, 3, 3) and pre.shape == (5, 3, 3)
    binoms = torch.tensor([[math.comb(a, b) if b <= a else 0 for b in range(5)] for a in range(5)],
                          dtype=torch.float32)
    no, ns = ops.compute_relocation(torch.tensor([0.5]), torch.ones(1, 3), torch.tensor([2]), binoms)
    eo, es = _relocation_direct(0.5, 1.0, 2, 5)
    assert float(no) == pytest.approx(eo, rel=1e-6) and float(ns[0, 0]) == pytest.approx(es, rel=1e-6)


# ----------------------------------------------------------------------------- strategies


def _params(N, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = torch.nn.Parameter
    params = torch.nn.ParameterDict({
        "means": P(torch.randn(N, 3, generator=g) * 0.5 + torch.tensor([0, 0, 3.0])),
        "scales": P(torch.log(torch.rand(N, 3, generator=g) * 0.1 + 0.02)),
        "quats": P(torch.randn(N, 4, generator=g)),
        "opacities": P(torch.logit(torch.rand(N, generator=g) * 0.8 + 0.1)),
        "sh0": P(torch.rand(N, 1, 3, generator=g)),
        "shN": P(torch.zeros(N, 3, 3)),
    })
    opts = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    return params, opts


def _render(params, W=48, H=32, **kw):
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[40.0, 0, 24], [0, 40, 16], [0, 0, 1]])[None]
    return rasterize(params["means"], params["quats"], torch.exp(params["scales"]),
                     torch.sigmoid(params["opacities"]), torch.cat([params["sh0"], params["shN"]], 1),
                     viewmats, Ks, W, H, sh_degree=1, backend="torch", **kw)


@pytest.mark.parametrize("packed,absgrad", [(False, False), (True, True)])
def test_default_strategy_grows_splits_and_prunes(capsys, packed, absgrad):
    from gsplat.strategy import DefaultStrategy

    params, opts = _params(200)
    strat = DefaultStrategy(refine_start_iter=1, refine_every=2, grow_grad2d=1e-5 if absgrad else 1e-6,
                            grow_scale3d=0.05, prune_opa=0.3, reset_every=1000, absgrad=absgrad,
                            verbose=True)
    strat.check_sanity(params, opts)
    state = strat.initialize_state(scene_scale=1.0)
    target = torch.rand(1, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    sizes = []
    for step in range(5):
        img, _, info = _render(params, packed=packed, absgrad=absgrad)
        strat.step_pre_backward(params, opts, state, step, info)
        (img - target).abs().mean().backward()
        g = info["means2d"].grad
        n = len(params["means"])
        if packed:
            assert g.shape == (info["gaussian_ids"].numel(), 2)
        else:
            assert g.shape == (1, n, 2)
        assert float(g.abs().sum()) > 0
        if absgrad:
            assert info["means2d"].absgrad.shape == g.shape
            assert float(info["means2d"].absgrad.sum()) >= float(g.abs().sum()) - 1e-6
        strat.step_post_backward(params, opts, state, step, info, packed=packed)
        for o in opts.values():
            o.step()
            o.zero_grad()
        sizes.append(len(params["means"]))
    out = capsys.readouterr().out
    dup = sum(int(x) for x in re.findall(r"(\d+) GSs duplicated", out))
    spl = sum(int(x) for x in re.findall(r"(\d+) GSs split", out))
    pru = sum(int(x) for x in re.findall(r"(\d+) GSs pruned", out))
    assert dup > 0 and spl > 0 and pru > 0, out
    assert sizes[-1] == 200 + dup + spl - pru and sizes[-1] > 200


def test_mcmc_strategy_relocates_and_adds_on_cpu():
    from gsplat.strategy import MCMCStrategy

    params, opts = _params(200, seed=1)
    strat = MCMCStrategy(cap_max=230, refine_start_iter=1, refine_every=1, min_opacity=0.3)
    state = strat.initialize_state()
    target = torch.rand(1, 32, 48, 3, generator=torch.Generator().manual_seed(1))
    sizes = []
    for step in range(6):
        img, _, info = _render(params)
        strat.step_pre_backward(params, opts, state, step, info)
        info["means2d"].retain_grad()  # MCMCStrategy itself does not need it
        (img - target).abs().mean().backward()
        assert info["means2d"].grad.shape == (1, len(params["means"]), 2)
        dead = torch.nonzero(torch.sigmoid(params["opacities"].detach()) <= 0.3).squeeze(1)
        before = params["means"].detach().clone()
        strat.step_post_backward(params, opts, state, step, info, lr=1e-3)
        if step == 2:  # first refine step: the dead ones are moved onto live ones
            assert dead.numel() > 10
            after = params["means"].detach()[:200]
            moved = (after[dead] - before[dead]).norm(dim=-1) > 1e-3
            assert bool(moved.all())
            d = torch.cdist(after[dead], after, compute_mode="donot_use_mm_for_euclid_dist")
            d[torch.arange(dead.numel()), dead] = float("inf")  # each now sits on a live one
            assert float(d.min(dim=1).values.max()) < 1e-4
        for o in opts.values():
            o.step()
            o.zero_grad()
        sizes.append(len(params["means"]))
    assert sizes == [200, 200, 210, 220, 230, 230]  # +5 % per refine, capped at cap_max
    assert all(torch.isfinite(p).all() for p in params.values())
