"""Image metrics: PSNR and SSIM, in PyTorch (any device, differentiable).

Images are channel-last as the rasterizer returns them: ``[H, W, C]`` or ``[B, H, W, C]``,
float values in ``[0, data_range]`` (``data_range`` 1 for the trainer's images).

* :func:`psnr`: ``10 log10(data_range^2 / MSE)``, per image.
* :func:`ssim`: the structural similarity of Wang et al. 2004 ("Image quality assessment: from
  error visibility to structural similarity", IEEE TIP 13(4)), with an 11-tap Gaussian window
  of sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, computed with a separable convolution. With
  ``padding="same"`` (default) the window is zero-padded at the border and the SSIM map keeps
  the image size, as the INRIA 3DGS code does (``utils/loss_utils.py``; its training loss and
  its ``metrics.py``); ``padding="valid"`` averages only windows that lie inside the image.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

#: SSIM constants of Wang et al. 2004.
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_batch(img: torch.Tensor) -> torch.Tensor:
    """``[H, W, C]`` or ``[B, H, W, C]`` -> ``[B, H, W, C]``."""
    if img.dim() == 3:
        return img.unsqueeze(0)
    if img.dim() != 4:
        raise ValueError(f"expected an image [H, W, C] or a batch [B, H, W, C], got shape "
                         f"{tuple(img.shape)}")
    return img


def mse(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: ``[B]`` for ``[B, H, W, C]`` inputs, ``[]`` for one image."""
    a, b = _as_batch(img1), _as_batch(img2)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(img1.shape)} vs {tuple(img2.shape)}")
    out = ((a - b) ** 2).flatten(1).mean(1)
    return out[0] if img1.dim() == 3 else out


def psnr(img1: torch.Tensor, img2: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``.

    Args:
        img1, img2: ``[H, W, C]`` or ``[B, H, W, C]`` in ``[0, data_range]``.

    Returns:
        ``[]`` (one image) or ``[B]`` PSNR in dB; ``inf`` for identical images.
    """
    m = mse(img1.float(), img2.float())
    return 10.0 * torch.log10(data_range ** 2 / m)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """``[size]`` normalised 1D Gaussian ``exp(-(x - size//2)^2 / (2 sigma^2))`` (sums to 1)."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, win: torch.Tensor, padding: str) -> torch.Tensor:
    """Separable Gaussian filter of ``x`` [B, C, H, W] (depthwise): rows, then columns."""
    c = x.shape[1]
    n = win.numel()
    pad = n // 2 if padding == "same" else 0
    kh = win.view(1, 1, n, 1).expand(c, 1, n, 1)
    kw = win.view(1, 1, 1, n).expand(c, 1, 1, n)
    x = F.conv2d(x, kh, padding=(pad, 0), groups=c)
    return F.conv2d(x, kw, padding=(0, pad), groups=c)


def ssim_map(img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
             padding: Literal["same", "valid"] = "same", data_range: float = 1.0
             ) -> torch.Tensor:
    """Per-pixel, per-channel SSIM map of Wang et al. 2004 (eq. 13).

    ``SSIM = ((2 mu1 mu2 + C1)(2 s12 + C2)) / ((mu1^2 + mu2^2 + C1)(s1^2 + s2^2 + C2))`` with
    Gaussian-weighted local means ``mu``, variances ``s^2`` and covariance ``s12``,
    ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``, ``L = data_range``.

    Args:
        img1, img2: ``[H, W, C]`` or ``[B, H, W, C]`` float images.
        window_size: Gaussian taps (odd), 11 in the paper.
        sigma: Gaussian standard deviation in pixels, 1.5 in the paper.
        padding: ``same`` (zero padding, INRIA) or ``valid``.

    Returns:
        ``[B, C, H', W']`` SSIM values (``H' = H`` for ``same``, ``H - window_size + 1`` for
        ``valid``).

    Raises:
        ValueError: shapes differ, or the image is smaller than the window with ``valid``.
    """
    a, b = _as_batch(img1).float(), _as_batch(img2).float()
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(img1.shape)} vs {tuple(img2.shape)}")
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    if padding == "valid" and min(a.shape[1], a.shape[2]) < window_size:
        raise ValueError(f"image {a.shape[2]}x{a.shape[1]} is smaller than the SSIM window "
                         f"({window_size}) with padding='valid'")
    a = a.permute(0, 3, 1, 2)
    b = b.permute(0, 3, 1, 2)
    win = gaussian_window(window_size, sigma, a.dtype, a.device)
    mu1 = _blur(a, win, padding)
    mu2 = _blur(b, win, padding)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _blur(a * a, win, padding) - mu1_sq
    s2 = _blur(b * b, win, padding) - mu2_sq
    s12 = _blur(a * b, win, padding) - mu12
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))


def ssim(img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
         padding: Literal["same", "valid"] = "same", data_range: float = 1.0,
         reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004; see :func:`ssim_map`).

    Returns:
        ``reduction="mean"``: ``[]``, the mean over every image, channel and pixel (the INRIA
        loss term); ``"none"``: ``[B]`` (or ``[]`` for a single ``[H, W, C]`` image), the mean
        per image.
    """
    m = ssim_map(img1, img2, window_size, sigma, padding, data_range)
    if reduction == "mean":
        return m.mean()
    per = m.flatten(1).mean(1)
    return per[0] if img1.dim() == 3 else per


def psnr_from_mse(value: float, data_range: float = 1.0) -> float:
    """PSNR in dB of a mean squared error given as a Python float (``inf`` for 0)."""
    return math.inf if value <= 0 else 10.0 * math.log10(data_range ** 2 / value)
