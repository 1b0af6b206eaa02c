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


class GraphedPhotometricLoss:
    """:func:`photometric_loss` (with the fused SSIM) replayed as CUDA graphs.

    The loss of one step is ~40 small kernels (L1, the SSIM's blurs and element-wise products,
    their backward) whose launch cost on the host exceeds their GPU time on images of a few
    hundred thousand pixels. ``torch.cuda.make_graphed_callables`` captures the forward and the
    backward once per image shape (three warm-up calls, then one capture, the first time a shape
    is seen), and each later call copies ``render``/``target`` into the graph's static inputs and
    replays it: two graph launches instead of ~40 kernel launches. Values and gradients are
    those of :func:`photometric_loss` (the same kernels run).

    Each graph keeps its own memory pool (about twice the eager loss's intermediates), so at
    most ``max_graphs`` image shapes are graphed; images of further shapes (datasets whose
    cameras differ in size) use the eager :func:`photometric_loss`.

    Args:
        ssim_lambda: as :func:`photometric_loss`.
        max_graphs: how many distinct shapes get a graph.

    Call: ``loss_fn(render [H, W, 3] requires_grad, target [H, W, 3]) -> (loss, l1, ssim)``.

    Raises:
        RuntimeError: from ``make_graphed_callables`` when the tensors are not on CUDA.
    """

    def __init__(self, ssim_lambda: float = 0.2, max_graphs: int = 4):
        self.ssim_lambda = ssim_lambda
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, object] = {}

    def _loss(self, render: torch.Tensor, target: torch.Tensor):
        return photometric_loss(render, target, self.ssim_lambda, fused_ssim=True)

    def __call__(self, render: torch.Tensor, target: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (tuple(render.shape), tuple(target.shape), render.dtype, target.dtype,
               render.device)
        fn = self._graphs.get(key)
        if fn is None and len(self._graphs) >= self.max_graphs:
            return self._loss(render, target)
        if fn is None:
            sample = (torch.rand_like(render).requires_grad_(render.requires_grad),
                      torch.rand_like(target))
            fn = self._graphs[key] = torch.cuda.make_graphed_callables(
                self._loss, sample, num_warmup_iters=3)
        return fn(render, target)
