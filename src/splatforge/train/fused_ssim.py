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
    # Memory: the five moment images are blurred one at a time into one [1, 5C, H, W] buffer,
    # and the SSIM arithmetic runs in place on it with four [1, C, H, W] temporaries, so the
    # forward pass peaks at about 12 C-channel images (was ~17 with a batched blur and
    # out-of-place arithmetic); the backward pass blurs the three partials one at a time.
    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, size: int, sigma: float,
                c1: float, c2: float) -> torch.Tensor:
        # x, y: [1, C, H, W]
        c = x.shape[1]
        win = _window(size, sigma, x.dtype, x.device)
        moments = x.new_empty((x.shape[0], 5 * c) + tuple(x.shape[2:]))
        for i, m in enumerate((x, y, x * x, y * y, x * y)):
            moments[:, i * c:(i + 1) * c] = _blur(m, win)
        mu_x, mu_y, e_xx, e_yy, e_xy = moments.split(c, dim=1)
        b1 = mu_x * mu_x
        b1.addcmul_(mu_y, mu_y)                       # mu_x^2 + mu_y^2
        b2 = e_xx.add_(e_yy).sub_(b1).add_(c2)        # sigma_x^2 + sigma_y^2 + C2
        b1.add_(c1)                                   # B1
        a1 = mu_x * mu_y
        a2 = e_xy.sub_(a1).mul_(2.0).add_(c2)         # 2 sigma_xy + C2
        a1.mul_(2.0).add_(c1)                         # A1
        inv_b = torch.mul(b1, b2).reciprocal_()       # 1 / (B1 B2)
        s = torch.mul(a1, a2).mul_(inv_b)             # SSIM map
        if ctx.needs_input_grad[0]:
            partials = x.new_empty((x.shape[0], 3 * c) + tuple(x.shape[2:]))
            d_mu, d_exx, d_exy = partials.split(c, dim=1)
            torch.mul(a1, inv_b, out=d_exy).mul_(2.0)             # 2 A1 / (B1 B2)
            torch.div(s, b2, out=d_exx).neg_()                    # -S / B2
            torch.sub(a2, a1, out=d_mu).mul_(inv_b).mul_(mu_y).mul_(2.0)
            # 2 mu_x S (1/B1 - 1/B2) = 2 mu_x S (B2 - B1) / (B1 B2)
            b1.neg_().add_(b2).mul_(inv_b).mul_(s).mul_(mu_x).mul_(2.0)
            d_mu.sub_(b1)
            ctx.save_for_backward(x, y, partials)
            ctx.size, ctx.sigma, ctx.numel = size, sigma, s.numel()
        return s.mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, y, partials = ctx.saved_tensors
        c = x.shape[1]
        win = _window(ctx.size, ctx.sigma, x.dtype, x.device)
        d_mu, d_exx, d_exy = partials.split(c, dim=1)
        grad_x = _blur(d_mu, win)
        grad_x.addcmul_(x, _blur(d_exx, win), value=2.0)
        grad_x.addcmul_(y, _blur(d_exy, win))
        grad_x.mul_(grad_out / ctx.numel)
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
