"""Rendering trained splats and scoring them against held-out (or any) views."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..metrics import psnr, ssim, ssim_map
from ..scene import load_image

if TYPE_CHECKING:
    from ..scene import Scene


def camera_tensors(scene: Scene, index: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``([1, 4, 4] viewmat, [1, 3, 3] K)`` float32 tensors of image ``index`` on ``device``."""
    im = scene.images[index]
    viewmat = torch.as_tensor(im.viewmat, dtype=torch.float32, device=device)[None]
    K = torch.as_tensor(im.K, dtype=torch.float32, device=device)[None]
    return viewmat, K


def render_view(params: dict[str, torch.Tensor], scene: Scene, index: int, sh_degree: int,
                backend: str, background: torch.Tensor | None = None,
                antialiased: bool = False, packed: bool = False,
                viewmat: torch.Tensor | None = None, K: torch.Tensor | None = None,
                width: int | None = None, height: int | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Render image ``index`` of ``scene`` from raw splat parameters.

    Args:
        params: raw splats (``means [N, 3]``, ``scales [N, 3]`` log, ``quats [N, 4]``,
            ``opacities [N]`` logit, ``sh0 [N, 1, 3]``, ``shN [N, K-1, 3]``) on one device.
        sh_degree: SH degree to evaluate (<= the degree ``shN`` holds).
        backend: ``gsplat`` | ``torch`` | ``auto`` (see :func:`splatforge.raster.rasterize`).
        background: ``[3]`` RGB in [0, 1] (default: the scene background).
        width, height: render size in pixels (default: the image's; with ``K`` for that
            size, e.g. a downscaled view of the resolution schedule).
        kwargs: passed on to the rasterizer (absgrad, sparse_grad, ...).

    Returns:
        ``(colors [1, H, W, 3], alphas [1, H, W, 1], meta)`` as the rasterizer returns them;
        colours are not clamped.
    """
    from ..raster import rasterize

    device = params["means"].device
    if viewmat is None or K is None:
        viewmat, K = camera_tensors(scene, index, device)
    if background is None:
        background = torch.tensor(scene.background, dtype=torch.float32, device=device)
    im = scene.images[index]
    colors = torch.cat([params["sh0"], params["shN"]], dim=1)
    render, alphas, meta = rasterize(
        means=params["means"], quats=params["quats"], scales=torch.exp(params["scales"]),
        opacities=torch.sigmoid(params["opacities"]), colors=colors, viewmats=viewmat, Ks=K,
        width=width or im.width, height=height or im.height, sh_degree=sh_degree,
        packed=packed,
        rasterize_mode="antialiased" if antialiased else "classic", backend=backend,
        **kwargs)
    # The background is composited here, ``C + (1 - alpha) * bg`` (what the rasterizers do
    # with ``backgrounds``, and what gsplat's simple_trainer does): gsplat 1.5.3 rejects a
    # [1, 3] ``backgrounds`` in packed mode (its shape check uses the packed [nnz, 2] means).
    render = render + (1.0 - alphas) * background.reshape(1, 1, 1, 3)
    return render, alphas, meta


@torch.no_grad()
def evaluate_splats(params: dict[str, torch.Tensor], scene: Scene, indices: list[int],
                    sh_degree: int, backend: str = "auto", antialiased: bool = False,
                    images: Any = None, masks: Any = None,
                    on_view: Callable[[int, dict[str, Any], torch.Tensor, torch.Tensor], None]
                    | None = None) -> dict[str, Any]:
    """PSNR and SSIM of renders of ``indices`` against their photos, plain and
    colour-corrected.

    Renders are clamped to [0, 1]; PSNR is per image then averaged (as INRIA's
    ``metrics.py`` and gsplat's ``simple_trainer`` eval); SSIM is :func:`splatforge.metrics.ssim`
    (11-tap Gaussian window, sigma 1.5, zero padding as INRIA). ``cc_psnr``/``cc_ssim`` score
    the render after :func:`splatforge.train.appearance.color_correct` (a per-image quadratic
    colour fit to the photo: the protocol gsplat's trainer reports as ``cc_psnr``, for models
    whose held-out appearance is unknown).

    Args:
        images: optional object with ``get(index) -> uint8 [H, W, 3]`` tensor (an
            :class:`~splatforge.train.data.ImageCache`); default: decode each file.
        masks: optional ``masks(index) -> [H, W] bool | None``: score only the pixels inside
            the mask (PSNR over the masked pixels' MSE; SSIM map averaged over the mask; the
            colour fit on the masked pixels); views without a mask are scored whole.
        on_view: optional ``on_view(k, row, render, gt)`` after the k-th view (1-based) is
            scored, with its row (which it may extend: ``splatforge eval`` adds LPIPS),
            the clamped render and the photo, both ``[H, W, 3]`` float in [0, 1].

    Returns:
        ``{"psnr": mean dB | None, "ssim": mean | None, "cc_psnr", "cc_ssim", "num_images": n,
        "masked": bool, "images": [{"index", "name", "psnr", "ssim", "cc_psnr", "cc_ssim"},
        ...]}`` (means are None without views).
    """
    from .appearance import color_correct

    device = params["means"].device
    rows = []
    for i in indices:
        if images is not None:
            gt_u8 = images.get(i).to(device)
        else:
            arr = load_image(scene.images[i], scene.background)
            gt_u8 = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).to(device)
        gt = gt_u8.float() / 255.0
        render, _, _ = render_view(params, scene, i, sh_degree, backend,
                                   antialiased=antialiased)
        r = render[0].clamp(0.0, 1.0)
        m = masks(i) if masks is not None else None
        rc = color_correct(r, gt, m)
        rows.append({"index": int(i), "name": scene.images[i].name,
                     "psnr": _psnr(r, gt, m), "ssim": _ssim(r, gt, m),
                     "cc_psnr": _psnr(rc, gt, m), "cc_ssim": _ssim(rc, gt, m)})
        if on_view is not None:
            on_view(len(rows), rows[-1], r, gt)
    n = len(rows)

    def mean(key):
        return sum(r[key] for r in rows) / n if n else None

    return {
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "cc_psnr": mean("cc_psnr"),
        "cc_ssim": mean("cc_ssim"),
        "num_images": n,
        "masked": masks is not None,
        "images": rows,
    }


def held_out_record(ev: dict[str, Any]) -> dict[str, Any]:
    """The ``test`` entry of ``metrics.json`` from an :func:`evaluate_splats` result: ``psnr``
    (dB), ``ssim``, ``cc_psnr``, ``cc_ssim``, ``masked``, ``num_images``, ``images``."""
    return {k: ev[k] for k in ("psnr", "ssim", "cc_psnr", "cc_ssim", "masked", "num_images",
                               "images")}


def _psnr(r: torch.Tensor, gt: torch.Tensor, m: torch.Tensor | None) -> float:
    if m is None:
        return float(psnr(r, gt))
    mse = ((r - gt) ** 2)[m].mean()
    return float(-10.0 * torch.log10(mse.clamp_min(1e-10)))


def _ssim(r: torch.Tensor, gt: torch.Tensor, m: torch.Tensor | None) -> float:
    if m is None:
        return float(ssim(r, gt))
    smap = ssim_map(r, gt)[0].mean(0)          # [H, W], channels averaged
    return float(smap[m].mean())


def evaluate_halves(params: dict[str, torch.Tensor], scene: Scene, indices: list[int],
                    sh_degree: int, backend: str = "auto", appearance: Any = None,
                    antialiased: bool = False, steps: int = 100, lr: float = 0.01,
                    masks: Any = None) -> dict[str, Any]:
    """Held-out scores by the NeRF-W protocol: each held-out photo's appearance is fitted on
    its left half, and its right half is scored.

    Martin-Brualla et al., "NeRF in the Wild" (CVPR 2021), Sec. 6: test images have no learned
    appearance, so "we optimize the appearance embedding on the left half of each test image
    and evaluate metrics on the right half". Here the photo's row of the appearance model
    (``embedding``: its embedding, started at the mean of the training embeddings;
    ``bilateral``: its bilateral grid, started at the identity) is fitted by Adam on the L1
    loss over the left half with the splats and the MLP frozen; the row is restored
    afterwards. Without an appearance model (``none``) nothing is fitted and the right half
    is scored as rendered.

    Args:
        params: the trainer's raw splats (with ``app_features [N, F]`` for ``embedding``).
        appearance: an :class:`~splatforge.train.appearance.EmbeddingAppearance`,
            :class:`~splatforge.train.appearance.BilateralGridAppearance`, or None.
        steps: Adam steps per photo; lr: its learning rate.
        masks: as :func:`evaluate_splats` (the fit and the score use the masked pixels).

    Returns:
        ``{"psnr", "ssim", "num_images", "images": [{"index", "name", "psnr", "ssim"}]}``
        over the right halves (PSNR in dB).
    """
    device = params["means"].device
    frozen = {k: v.detach() for k, v in params.items()}
    rows = []
    for i in indices:
        arr = load_image(scene.images[i], scene.background)
        gt = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).to(device).float() / 255
        H, W = gt.shape[:2]
        left = torch.zeros(H, W, dtype=torch.bool, device=device)
        left[:, : W // 2] = True
        m = masks(i) if masks is not None else None
        fit_m = left if m is None else (left & m.to(device))
        score_m = ~left if m is None else (~left & m.to(device))
        r = _fit_and_render(frozen, scene, i, sh_degree, backend, appearance, antialiased,
                            gt, fit_m, steps, lr)
        rows.append({"index": int(i), "name": scene.images[i].name,
                     "psnr": _psnr(r, gt, score_m), "ssim": _ssim(r, gt, score_m)})
    n = len(rows)
    return {"psnr": sum(r["psnr"] for r in rows) / n if n else None,
            "ssim": sum(r["ssim"] for r in rows) / n if n else None,
            "num_images": n, "images": rows}


def _fit_and_render(params: dict[str, torch.Tensor], scene: Scene, i: int, sh_degree: int,
                    backend: str, appearance: Any, antialiased: bool, gt: torch.Tensor,
                    fit_mask: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """``[H, W, 3]`` render of view ``i`` through its appearance row fitted on ``fit_mask``."""
    if appearance is None:
        with torch.no_grad():
            return render_view(params, scene, i, sh_degree, backend,
                               antialiased=antialiased)[0][0].clamp(0, 1)
    kind = appearance.kind
    row = appearance.embeds.weight if kind == "embedding" else appearance.grids
    saved = row.detach()[i].clone()
    grads = {p: p.requires_grad for p in appearance.parameters()}
    try:
        for p in appearance.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            if kind == "embedding":
                row[i] = appearance.embedding(None)
        row.requires_grad_(True)
        opt = torch.optim.Adam([row], lr=lr)
        others = torch.ones(row.shape[0], dtype=torch.bool, device=row.device)
        others[i] = False
        base = None
        if kind != "embedding":  # an image-space grid: the splats' render does not change
            with torch.no_grad():
                base = render_view(params, scene, i, sh_degree, backend,
                                   antialiased=antialiased)[0]
        for _ in range(steps):
            if kind == "embedding":
                rp = appearance.render_params(params, i)
                out = render_view(rp, scene, i, sh_degree, backend, antialiased=antialiased)[0]
            else:
                out = appearance.apply_image(base, i)
            loss = (out[0] - gt).abs()[fit_mask].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            row.grad[others] = 0  # only this photo's row moves
            opt.step()
        with torch.no_grad():
            if kind == "embedding":
                out = render_view(appearance.render_params(params, i), scene, i, sh_degree,
                                  backend, antialiased=antialiased)[0]
            else:
                out = appearance.apply_image(base, i)
            return out[0].clamp(0, 1)
    finally:
        with torch.no_grad():
            row[i] = saved
        for p, g in grads.items():
            p.requires_grad_(g)
