"""How much each Gaussian contributes to the training views: its summed blend weight.

LightGaussian (Fan et al. 2023, eq. 5) scores a Gaussian by the sum, over every pixel of
every training view that its footprint hits, of its opacity times the transmittance in front
of it (times a volume term); Speedy-Splat (Hanson et al. 2024) prunes by the same per-pixel
blend-weight sum. The blend weight of Gaussian ``i`` at pixel ``p`` is
``w_ip = alpha_ip * T_ip``, and a render of constant colour 1 is ``C_p = sum_i w_ip c_i``, so

    d(sum_p C_p) / d c_i = sum_p w_ip

which one render and one backward pass per view give exactly, on any rasterizer backend.
This module computes that sum (without LightGaussian's volume factor).
"""

from __future__ import annotations

from typing import Any

import torch


def blend_weight_significance(params: dict[str, torch.Tensor], scene: Any,
                              indices: list[int], backend: str,
                              cameras: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
                              antialiased: bool = False) -> torch.Tensor:
    """``[N]`` float32: ``sum over views, pixels of alpha * T`` per Gaussian (module docstring).

    Args:
        params: raw splats (``means [N, 3]``, ``quats [N, 4]``, ``scales [N, 3]`` log,
            ``opacities [N]`` logit, ...); not modified, no gradients kept.
        scene: the scene (image sizes; cameras when ``cameras`` is None).
        indices: views to sum over (e.g. the training views).
        backend: rasterizer backend (:func:`splatforge.raster.rasterize`).
        cameras: optional ``index -> ([1, 4, 4] viewmat, [1, 3, 3] K)`` on the params' device.
        antialiased: rasterize as in training with Mip-Splatting's opacity compensation.
    """
    from ..raster import rasterize
    from .evaluate import camera_tensors

    means = params["means"].detach()
    n = len(means)
    device = means.device
    quats = params["quats"].detach()
    scales = torch.exp(params["scales"].detach())
    opac = torch.sigmoid(params["opacities"].detach().reshape(-1))
    score = torch.zeros(n, dtype=torch.float32, device=device)
    for i in indices:
        viewmat, K = cameras[i] if cameras is not None else camera_tensors(scene, i, device)
        im = scene.images[i]
        ones = torch.ones(n, 3, dtype=torch.float32, device=device, requires_grad=True)
        with torch.enable_grad():
            out, _, _ = rasterize(means=means, quats=quats, scales=scales, opacities=opac,
                                  colors=ones, viewmats=viewmat, Ks=K, width=im.width,
                                  height=im.height, sh_degree=None, backend=backend,
                                  rasterize_mode="antialiased" if antialiased else "classic")
            (grad,) = torch.autograd.grad(out[..., 0].sum(), ones)
        score += grad[:, 0]
    return score
