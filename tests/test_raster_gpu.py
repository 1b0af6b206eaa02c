"""GPU parity: splatforge's pure-PyTorch rasterizer vs gsplat's CUDA kernels, both on CUDA.

Every test is marked ``gpu`` and skipped without CUDA. Run on the GPU machine with

    SPLATFORGE_PARITY_PLY=path/to/point_cloud.ply SPLATFORGE_PARITY_OUT=parity.json \\
        python -m pytest tests/test_raster_gpu.py -m gpu -s

``SPLATFORGE_PARITY_PLY`` (optional) is an INRIA-format 3DGS PLY (e.g.
``shared/datasets/plush_dog/third_party_ply/point_cloud_29999_clean.ply``, copied next to the
checkout since ``../shared`` does not travel); without it a synthetic "trained-like" scene
with a realistic size/opacity distribution is generated. Measured numbers are printed (visible
with ``-s``) and, when ``SPLATFORGE_PARITY_OUT`` is set, written there as JSON.

Both backends get identical settings (``packed=False``, same ``eps2d``, ``tile_size``,
``sh_degree``); classic and antialiased. Thresholds (from the issue): image max abs error
< 1e-3; gradient relative L2 error (over the whole tensor) < 1e-2 for means, quats, scales,
opacities and SH coefficients.

One exception, measured on an H200: a handful of pixels (1-2 of 600k on a real model) can
differ by a few 1e-3, because a hard decision flips there: a Gaussian's alpha is within float
rounding of the 1/255 cut, or the transmittance within rounding of the 1e-4 stop, and the two
backends decide differently (gsplat computes ``__expf`` with ``--use_fast_math``; conics and
running products differ in the last bits). Such pixels are identified
(:func:`pixel_at_discontinuity`), counted and reported, and the max abs error is asserted
over the other pixels; the 99.99th percentile of the error over all pixels must stay < 1e-4.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

RESULTS: list[dict] = []
PARAMS = ("means", "quats", "scales", "opacities", "colors")


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if not RESULTS:
        return
    info = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "cases": RESULTS,
    }
    try:
        import gsplat

        info["gsplat"] = gsplat.__version__
    except ImportError:  # pragma: no cover
        info["gsplat"] = None
    print("\n=== raster GPU parity (torch backend vs gsplat) ===")
    print(json.dumps(info, indent=1))
    out = os.environ.get("SPLATFORGE_PARITY_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(info, f, indent=1)


@pytest.fixture(scope="module")
def gsplat_ok():
    from splatforge.raster import gsplat_available, gsplat_unavailable_reason

    if not gsplat_available():
        pytest.fail(f"gsplat CUDA backend unavailable on this GPU machine: {gsplat_unavailable_reason()}")
    return True


# ----------------------------------------------------------------------------- scenes


def look_at(eye, target, up=(0.0, -1.0, 0.0)):
    """World-to-camera [4, 4] (OpenCV axes) for a camera at ``eye`` looking at ``target``."""
    eye, target, up = (torch.as_tensor(v, dtype=torch.float64) for v in (eye, target, up))
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    if x.norm() < 1e-6:
        x = torch.linalg.cross(z, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])  # rows: camera axes in world
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M.float()


def orbit_cameras(center, radius, C, W, H, fov_deg=50.0, elev=0.3):
    f = 0.5 * W / math.tan(math.radians(fov_deg) / 2)
    vm, Ks = [], []
    for i in range(C):
        a = 2 * math.pi * i / C + 0.3
        eye = [center[0] + radius * math.cos(a) * math.cos(elev),
               center[1] - radius * math.sin(elev),
               center[2] + radius * math.sin(a) * math.cos(elev)]
        vm.append(look_at(eye, center))
        Ks.append(torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]]))
    return torch.stack(vm), torch.stack(Ks)


def random_scene(seed=0, N=4000, C=2, W=320, H=240, K=16):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(N, 3, generator=g) * 0.8
    quats = torch.randn(N, 4, generator=g)
    scales = torch.exp(torch.randn(N, 3, generator=g) * 0.5 - 3.5)
    opac = torch.rand(N, generator=g) * 0.95 + 0.02
    sh = torch.randn(N, K, 3, generator=g) * 0.2
    sh[:, 0] = torch.rand(N, 3, generator=g) * 2 - 1
    vm, Ks = orbit_cameras([0.0, 0.0, 0.0], 3.5, C, W, H)
    return {"name": f"random_{N}", "means": means, "quats": quats, "scales": scales,
            "opacities": opac, "colors": sh, "viewmats": vm, "Ks": Ks, "W": W, "H": H, "sh_degree": 3}


def synthetic_trained_scene(seed=1, N=60000, C=2, W=640, H=480):
    """Mimics a trained 3DGS model: most Gaussians small and on surfaces (a lumpy object),
    log-normal scales with a long tail, opacities piled up near 0 and 1, a sparse shell of
    large background Gaussians, degree-3 SH with small higher bands."""
    g = torch.Generator().manual_seed(seed)
    n_bg = N // 10
    n_obj = N - n_bg
    d = torch.randn(n_obj, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    r = 1.0 + 0.25 * torch.sin(3 * d[:, 0]) * torch.cos(2 * d[:, 1]) + 0.02 * torch.randn(n_obj, generator=g)
    obj = d * r[:, None]
    b = torch.randn(n_bg, 3, generator=g)
    bg = b / b.norm(dim=-1, keepdim=True) * (4.0 + 2.0 * torch.rand(n_bg, 1, generator=g))
    means = torch.cat([obj, bg])
    log_s = torch.randn(N, 3, generator=g) * 0.8 - 4.5
    log_s[n_obj:] += 2.5
    log_s[:, 2] -= 1.0 * torch.rand(N, generator=g)  # flattened, like surface splats
    scales = torch.exp(log_s)
    u = torch.rand(N, generator=g)
    opac = torch.where(u < 0.5, u ** 3 * 0.5, 1 - (1 - u) ** 3 * 0.5).clamp(0.005, 0.999)
    sh = torch.randn(N, 16, 3, generator=g) * 0.05
    sh[:, 0] = torch.randn(N, 3, generator=g) * 0.8
    vm, Ks = orbit_cameras([0.0, 0.0, 0.0], 3.0, C, W, H)
    return {"name": f"synthetic_trained_{N}", "means": means,
            "quats": torch.randn(N, 4, generator=g), "scales": scales, "opacities": opac,
            "colors": sh, "viewmats": vm, "Ks": Ks, "W": W, "H": H, "sh_degree": 3}


def ply_scene(path, C=2, W=640, H=480):
    """An INRIA-format 3DGS PLY (x, y, z, f_dc_*, f_rest_*, opacity, scale_*, rot_*)."""
    import numpy as np
    from plyfile import PlyData

    v = PlyData.read(path)["vertex"]
    names = [p.name for p in v.properties]

    def cols(prefix):
        ks = sorted((n for n in names if n.startswith(prefix)), key=lambda n: int(n.rsplit("_", 1)[1]))
        return np.stack([np.asarray(v[k], dtype=np.float32) for k in ks], axis=1)

    means = torch.from_numpy(np.stack([np.asarray(v[k], dtype=np.float32) for k in "xyz"], 1))
    dc = torch.from_numpy(cols("f_dc_"))  # [N, 3]
    rest = torch.from_numpy(cols("f_rest_")) if any(n.startswith("f_rest_") for n in names) else None
    N = means.shape[0]
    if rest is not None and rest.shape[1] > 0:
        K = rest.shape[1] // 3 + 1
        sh = torch.cat([dc[:, None, :], rest.reshape(N, 3, K - 1).transpose(1, 2)], dim=1)
    else:
        K, sh = 1, dc[:, None, :]
    deg = round(math.sqrt(K)) - 1
    opac = torch.sigmoid(torch.from_numpy(np.asarray(v["opacity"], dtype=np.float32)))
    scales = torch.exp(torch.from_numpy(cols("scale_")))
    quats = torch.from_numpy(cols("rot_"))
    center = means.median(dim=0).values
    dist = (means - center).norm(dim=-1)
    radius = 1.6 * float(torch.quantile(dist, 0.9))
    vm, Ks = orbit_cameras(center.tolist(), radius, C, W, H)
    return {"name": f"ply:{os.path.basename(path)}", "means": means, "quats": quats,
            "scales": scales, "opacities": opac, "colors": sh.contiguous(), "viewmats": vm,
            "Ks": Ks, "W": W, "H": H, "sh_degree": deg}


def trained_like_scene():
    path = os.environ.get("SPLATFORGE_PARITY_PLY")
    if path and os.path.exists(path):
        return ply_scene(path)
    return synthetic_trained_scene()


# ----------------------------------------------------------------------------- comparison


def rel_l2(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def run_backend(scene, backend, mode, render_mode="RGB", absgrad=False, bg=True):
    from splatforge.raster import rasterize

    dev = torch.device("cuda")
    ps = [scene[k].to(dev).clone().requires_grad_() for k in PARAMS]
    C = scene["viewmats"].shape[0]
    bgs = torch.linspace(0.1, 0.9, 3 * C, device=dev).reshape(C, 3) if bg else None
    img, alpha, meta = rasterize(
        *ps, scene["viewmats"].to(dev), scene["Ks"].to(dev), scene["W"], scene["H"],
        sh_degree=scene["sh_degree"], packed=False, rasterize_mode=mode, render_mode=render_mode,
        backgrounds=bgs, absgrad=absgrad, backend=backend)
    meta["means2d"].retain_grad()
    g = torch.Generator(device=dev).manual_seed(0)
    w = torch.randn(img.shape, generator=g, device=dev)
    wa = torch.randn(alpha.shape, generator=g, device=dev)
    ((img * w).sum() + (alpha * wa).sum()).backward()
    torch.cuda.synchronize()
    return img.detach(), alpha.detach(), meta, ps


def pixel_at_discontinuity(meta, c, y, x, rel=1e-3):
    """Whether pixel (c, y, x) sits at one of gsplat's two discontinuities, per the torch
    backend's meta: some Gaussian of its tile has alpha within ``rel`` of the 1/255 cut there,
    or the transmittance after some Gaussian is within ``rel`` of the 1e-4 stop. At such a
    pixel a last-bit difference (gsplat's kernels use the fast ``__expf``; conics and the
    running product differ by float rounding) flips a hard decision: skipping a Gaussian
    changes the pixel by up to T/255, and the exclusive stop can leave T at up to 1e-4 /
    (1 - alpha) instead of below 1e-4. Not an error of either backend."""
    ts, tw = meta["tile_size"], meta["tile_width"]
    ty, tx = y // ts, x // ts
    offs = meta["isect_offsets"].reshape(-1)
    t = c * meta["tile_height"] * tw + ty * tw + tx
    start = int(offs[t])
    end = int(offs[t + 1]) if t + 1 < offs.numel() else int(meta["isect_ids"].numel())
    ents = meta["flatten_ids"][start:end].long()
    m = meta["means2d"].detach().reshape(-1, 2)[ents].double()
    q = meta["conics"].detach().reshape(-1, 3)[ents].double()
    o = meta["opacities"].detach().reshape(-1)[ents].double()
    dx, dy = m[:, 0] - (x + 0.5), m[:, 1] - (y + 0.5)
    sigma = 0.5 * (q[:, 0] * dx * dx + q[:, 2] * dy * dy) + q[:, 1] * dx * dy
    alpha = (o * torch.exp(-sigma)).clamp(max=0.999)
    if bool(((alpha * 255.0 - 1.0).abs() < rel).any()):
        return True
    used = (alpha >= 1.0 / 255.0) & (sigma >= 0)
    T_after = torch.cumprod(1.0 - alpha * used, 0)
    stop = torch.nonzero(used & (T_after <= 1e-4 * (1 + rel)))
    upto = int(stop[0]) + 1 if stop.numel() else T_after.numel()
    near = used[:upto] & ((T_after[:upto] / 1e-4 - 1.0).abs() < rel)
    return bool(near.any())


def compare(scene, mode, render_mode="RGB", absgrad=False):
    a_img, a_alpha, a_meta, a_ps = run_backend(scene, "torch", mode, render_mode, absgrad)
    b_img, b_alpha, b_meta, b_ps = run_backend(scene, "gsplat", mode, render_mode, absgrad)
    assert a_meta["backend"] == "torch" and b_meta["backend"] == "gsplat"
    diff = (a_img - b_img).abs()
    res = {
        "scene": scene["name"], "rasterize_mode": mode, "render_mode": render_mode,
        "N": int(scene["means"].shape[0]), "C": int(scene["viewmats"].shape[0]),
        "W": scene["W"], "H": scene["H"], "sh_degree": scene["sh_degree"],
        "n_isects_torch": int(a_meta["isect_ids"].numel()),
        "n_isects_gsplat": int(b_meta["isect_ids"].numel()),
        "radii_equal_frac": float((a_meta["radii"] == b_meta["radii"]).all(-1).float().mean()),
        "image_max_abs": float(diff.max()),
        "image_p99_99_abs": float(torch.quantile(diff.flatten()[:16_000_000].float(), 0.9999)),
        "image_pixels_over_1e-3": int((diff > 1e-3).any(-1).sum()),
        "alpha_max_abs": float((a_alpha - b_alpha).abs().max()),
        "grad_rel_l2": {k: rel_l2(x.grad, y.grad) for k, x, y in zip(PARAMS, a_ps, b_ps)},
    }
    # pixels off by more than 1e-4 (a few at most): at a discontinuity of the hard
    # selections (1/255 cut, 1e-4 stop)?
    adiff = (a_alpha - b_alpha).abs()[..., 0]
    bad = torch.nonzero((diff.amax(-1) > 1e-4) | (adiff > 1e-4)).tolist()[:2000]
    expl = [pixel_at_discontinuity(a_meta, c, y, x) for c, y, x in bad]
    keep = torch.ones_like(adiff, dtype=torch.bool)
    for (c, y, x), e in zip(bad, expl):
        if e:
            keep[c, y, x] = False
    res["pixels_at_discontinuity"] = int(sum(expl))
    res["image_max_abs_excl_discontinuity"] = float(diff.amax(-1)[keep].max())
    res["alpha_max_abs_excl_discontinuity"] = float(adiff[keep].max())
    res["grad_rel_l2"]["means2d"] = rel_l2(a_meta["means2d"].grad, b_meta["means2d"].grad)
    if absgrad:
        res["grad_rel_l2"]["means2d_absgrad"] = rel_l2(a_meta["means2d"].absgrad, b_meta["means2d"].absgrad)
    RESULTS.append(res)
    print("\n" + json.dumps(res))
    return res


def check(res):
    # Max abs error < 1e-3 everywhere except at pixels sitting exactly at the 1/255 cut or
    # the 1e-4 stop (see pixel_at_discontinuity); those must be very rare.
    assert res["image_max_abs_excl_discontinuity"] < 1e-3, res
    assert res["alpha_max_abs_excl_discontinuity"] < 1e-3, res
    n_px = res["C"] * res["W"] * res["H"]
    assert res["pixels_at_discontinuity"] <= max(5, 1e-4 * n_px), res
    assert res["image_p99_99_abs"] < 1e-4, res
    for k in ("means", "quats", "scales", "opacities", "colors"):
        assert res["grad_rel_l2"][k] < 1e-2, (k, res)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_parity_random_scene(gsplat_ok, mode):
    check(compare(random_scene(), mode))


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_parity_trained_like_scene(gsplat_ok, mode):
    check(compare(trained_like_scene(), mode))


def test_parity_depth_modes_and_absgrad(gsplat_ok):
    res = compare(random_scene(seed=3, N=3000), "classic", render_mode="RGB+ED", absgrad=True)
    check(res)
    assert res["grad_rel_l2"]["means2d"] < 1e-2
    assert res["grad_rel_l2"]["means2d_absgrad"] < 1e-2


def test_auto_selects_gsplat_on_cuda(gsplat_ok):
    from splatforge.raster import select_backend

    assert select_backend("auto", "cuda") == "gsplat"
    assert select_backend("auto", "cpu") == "torch"


def test_packed_mode_matches(gsplat_ok):
    """packed=True on both backends: same image and the same [nnz, 2] means2d gradient."""
    from splatforge.raster import rasterize

    s = random_scene(seed=5, N=2000)
    dev = torch.device("cuda")
    out = {}
    for backend in ("torch", "gsplat"):
        ps = [s[k].to(dev).clone().requires_grad_() for k in PARAMS]
        img, alpha, meta = rasterize(*ps, s["viewmats"].to(dev), s["Ks"].to(dev), s["W"], s["H"],
                                     sh_degree=3, packed=True, backend=backend)
        meta["means2d"].retain_grad()
        (img.square().sum() + alpha.sum()).backward()
        out[backend] = (img.detach(), meta, ps)
    (ia, ma, pa), (ib, mb, pb) = out["torch"], out["gsplat"]
    assert float((ia - ib).abs().max()) < 1e-3
    if torch.equal(ma["gaussian_ids"], mb["gaussian_ids"]) and torch.equal(ma["camera_ids"], mb["camera_ids"]):
        assert rel_l2(ma["means2d"].grad, mb["means2d"].grad) < 1e-2
    for k, x, y in zip(PARAMS, pa, pb):
        assert rel_l2(x.grad, y.grad) < 1e-2, k


def test_relocation_matches_gsplat_cuda(gsplat_ok):
    """splatforge's PyTorch MCMC relocation (eq. 9 of Kheradmand et al. 2024, evaluated in
    float64) vs gsplat's float32 CUDA kernel, for split counts 1..10 where float32 is still
    accurate."""
    from gsplat.relocation import compute_relocation
    from gsplat.strategy import MCMCStrategy

    from splatforge.raster import compute_relocation_torch

    binoms = MCMCStrategy().initialize_state()["binoms"].cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    n = 4096
    o = torch.rand(n, device="cuda", generator=g) * 0.98 + 0.01
    s = torch.rand(n, 3, device="cuda", generator=g) + 0.01
    r = torch.randint(1, 11, (n,), device="cuda", generator=g)
    ao, as_ = compute_relocation(o, s, r.clone(), binoms)
    bo, bs = compute_relocation_torch(o.cpu(), s.cpu(), r.cpu().clone(), binoms.cpu())
    res = {"relocation_opacity_rel_l2": rel_l2(bo, ao.cpu()), "relocation_scale_rel_l2": rel_l2(bs, as_.cpu())}
    RESULTS.append({"scene": "mcmc_relocation", **res})
    print("\n" + json.dumps(res))
    assert res["relocation_opacity_rel_l2"] < 1e-5 and res["relocation_scale_rel_l2"] < 1e-4
