"""SSIM loss with a hand-derived backward pass: fewer kernels and less memory than autograd.

The training loss needs ``mean(SSIM(render, gt))`` and its gradient with respect to the render
only. Autograd through :func:`splatforge.metrics.ssim_map` keeps about fifteen ``[1, 3, H, W]``
intermediates alive until the backward pass and launches one kernel per elementary operation in
both directions. Here the forward pass blurs the five moment images ``x, y, x^2, y^2, x y`` in one
batched separable convolution, forms the SSIM map, and keeps only three per-pixel partial
derivatives; the backward pass is one more batched blur and a few element-wise products.

Derivation (Wang et al. 2004, eq. 13, with ``G`` the normalised Gaussian window, ``*`` the
zero-padded "same" correlation):

    mu_x = G*x,  mu_y = G*y,  e_xx = G*(x^2),  e_yy = G*(y^2),  e_xy = G*(x y)
    A1 = 2 mu_x mu_y + C1      A2 = 2 (e_xy - mu_x mu_y) + C2
    B1 = mu_x^2 + mu_y^2 + C1  B2 = (e_xx - mu_x^2) + (e_yy - mu_y^2) + C2
    S  = A1 A2 / (B1 B2)

    dS/dmu_x = 2 mu_y (A2 - A1) / (B1 B2) - 2 mu_x S (1/B1 - 1/B2)
    dS/de_xx = -S / B2
    dS/de_xy = 2 A1 / (B1 B2)

and, because ``G`` is symmetric and zero padding makes "same" correlation self-adjoint,

    dL/dx = G*(g dS/dmu_x) + 2 x G*(g dS/de_xx) + y G*(g dS/de_xy),   g = dL/dS

(the same derivation underlies Mallick et al.'s fused-ssim CUDA kernel used by recent 3DGS
trainers; this is an independent PyTorch implementation that runs on any device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..metrics import SSIM_K1, SSIM_K2, gaussian_window

_WINDOWS: dict[tuple, torch.Tensor] = {}


def _window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (size, sigma, dtype, device)
    w = _WINDOWS.get(key)
    if w is None:
        w = _WINDOWS[key] = gaussian_window(size, sigma, dtype, device)
    return w


def _blur(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Depthwise separable zero-padded "same" Gaussian filter of ``x`` ``[B, C, H, W]``."""
    c, n = x.shape[1], win.numel()
    x = F.conv2d(x, win.view(1, 1, n, 1).expand(c, 1, n, 1), padding=(n // 2, 0), groups=c)
    return F.conv2d(x, win.view(1, 1, 1, n).expand(c, 1, 1, n), padding=(0, n // 2), groups=c)


class _SSIMMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, size: int, sigma: float,
                c1: float, c2: float) -> torch.Tensor:
        # x, y: [1, C, H, W]
        c = x.shape[1]
        win = _window(size, sigma, x.dtype, x.device)
        moments = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), win)
        mu_x, mu_y, e_xx, e_yy, e_xy = moments.split(c, dim=1)
        mu_xy = mu_x * mu_y
        mu_xx = mu_x * mu_x
        mu_yy = mu_y * mu_y
        a1 = 2 * mu_xy + c1
        a2 = 2 * (e_xy - mu_xy) + c2
        b1 = mu_xx + mu_yy + c1
        b2 = (e_xx - mu_xx) + (e_yy - mu_yy) + c2
        inv_b = 1.0 / (b1 * b2)
        s = a1 * a2 * inv_b
        if ctx.needs_input_grad[0]:
            d_mu = 2 * mu_y * (a2 - a1) * inv_b - 2 * mu_x * s * (1.0 / b1 - 1.0 / b2)
            d_exx = -s / b2
            d_exy = 2 * a1 * inv_b
            ctx.save_for_backward(x, y, torch.cat([d_mu, d_exx, d_exy], dim=1))
            ctx.size, ctx.sigma, ctx.numel = size, sigma, s.numel()
        return s.mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, y, partials = ctx.saved_tensors
        c = x.shape[1]
        win = _window(ctx.size, ctx.sigma, x.dtype, x.device)
        g = grad_out / ctx.numel
        b_mu, b_exx, b_exy = _blur(partials, win).split(c, dim=1)
        grad_x = g * (b_mu + 2 * x * b_exx + y * b_exy)
        return grad_x, None, None, None, None, None


def ssim_mean(render: torch.Tensor, target: torch.Tensor, window_size: int = 11,
              sigma: float = 1.5, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of ``render`` against ``target`` (zero "same" padding, INRIA's loss SSIM),
    differentiable with respect to ``render`` only.

    Args:
        render: ``[H, W, C]`` or ``[B, H, W, C]`` float image(s) in ``[0, data_range]``.
        target: same shape; treated as a constant (no gradient flows to it).
        window_size, sigma: the Gaussian window (11 taps, sigma 1.5 in Wang et al. 2004).

    Returns:
        ``[]``: the mean over every image, channel and pixel; equal (to float rounding) to
        ``splatforge.metrics.ssim(render, target, padding="same")``.

    Raises:
        ValueError: the shapes differ.
    """
    if render.shape != target.shape:
        raise ValueError(f"image shapes differ: {tuple(render.shape)} vs "
                         f"{tuple(target.shape)}")
    x = render if render.dim() == 4 else render.unsqueeze(0)
    y = target if target.dim() == 4 else target.unsqueeze(0)
    # [B, H, W, C] -> [1, B*C, H, W]: the depthwise blur treats every channel alike
    b, h, w, c = x.shape
    x = x.permute(0, 3, 1, 2).reshape(1, b * c, h, w)
    y = y.detach().permute(0, 3, 1, 2).reshape(1, b * c, h, w).to(x.dtype)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return _SSIMMean.apply(x, y, window_size, sigma, c1, c2)
