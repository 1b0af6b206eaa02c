"""Training losses.

* Photometric loss of Kerbl et al. 2023 (INRIA ``train.py``):
  ``(1 - lambda) * L1 + lambda * (1 - SSIM)``, ``lambda = 0.2``, SSIM with an 11-tap Gaussian
  window of sigma 1.5 and zero padding (:func:`splatforge.metrics.ssim`), computed with
  :func:`splatforge.train.fused_ssim.ssim_mean` (hand-derived backward pass).
* MCMC regularisers (Kheradmand et al. 2024, as gsplat ``examples/simple_trainer.py``):
  ``opacity_reg * mean(sigmoid(opacities)) + scale_reg * mean(exp(scales))``.
"""

from __future__ import annotations

import torch

from ..metrics import ssim
from .fused_ssim import ssim_mean


def photometric_loss(render: torch.Tensor, target: torch.Tensor, ssim_lambda: float = 0.2,
                     fused_ssim: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """INRIA's image loss.

    Args:
        render, target: ``[H, W, 3]`` or ``[B, H, W, 3]`` float images in [0, 1].
        ssim_lambda: weight of the D-SSIM term (INRIA ``lambda_dssim``).
        fused_ssim: use :func:`~splatforge.train.fused_ssim.ssim_mean` (False: autograd
            through :func:`splatforge.metrics.ssim`).

    Returns:
        (loss, l1, ssim) as 0-dim tensors (``loss`` differentiable).
    """
    l1 = (render - target).abs().mean()
    if ssim_lambda > 0:
        # the analytic-gradient SSIM (same value; fewer kernels and less memory) unless a
        # gradient must also reach the target
        s = (ssim_mean(render, target) if fused_ssim and not target.requires_grad
             else ssim(render, target, padding="same"))
    else:
        s = torch.zeros((), device=render.device)
    loss = (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - s)
    return loss, l1, s


def mcmc_regularization(params: dict[str, torch.Tensor], opacity_reg: float, scale_reg: float
                        ) -> torch.Tensor | None:
    """``opacity_reg * mean(sigmoid(opacities)) + scale_reg * mean(exp(scales))``, or None
    when both weights are 0."""
    out = None
    if opacity_reg > 0:
        out = opacity_reg * torch.sigmoid(params["opacities"]).mean()
    if scale_reg > 0:
        term = scale_reg * torch.exp(params["scales"]).mean()
        out = term if out is None else out + term
    return out
