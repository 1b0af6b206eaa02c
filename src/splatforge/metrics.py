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
* :class:`LPIPS` / :func:`lpips`: the learned perceptual distance of Zhang et al. 2018
  (AlexNet, lpips v0.1), from a local weights file, without torchvision.
"""

from __future__ import annotations

import re
from pathlib import Path
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


# --------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------

#: AlexNet ``features`` convolutions: (torchvision index, in, out, kernel, stride, padding).
_ALEX_CONVS = ((0, 3, 64, 11, 4, 2), (3, 64, 192, 5, 1, 2), (6, 192, 384, 3, 1, 1),
               (8, 384, 256, 3, 1, 1), (10, 256, 256, 3, 1, 1))
#: The lpips ScalingLayer constants (applied to inputs in [-1, 1]).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
#: The smallest image side for which every AlexNet tap is non-empty.
LPIPS_MIN_SIZE = 31


class LPIPS(torch.nn.Module):
    """LPIPS distance, "alex" variant, linear calibration v0.1, in plain PyTorch.

    Zhang, Isola, Efros, Shechtman, Wang 2018, "The Unreasonable Effectiveness of Deep Features
    as a Perceptual Metric" (CVPR), as computed by the ``lpips`` package
    (https://github.com/richzhang/PerceptualSimilarity; ``lpips/pretrained_networks.py`` for
    the AlexNet taps, ``lpips/lpips.py`` for ``LPIPS.forward`` with ``normalize=True``). This
    is an independent re-implementation that needs no torchvision:

    1. images in ``[0, 1]`` are mapped to ``[-1, 1]`` (``2 x - 1``), then through the lpips
       ScalingLayer ``(x - shift) / scale``, shift ``(-0.030, -0.088, -0.188)``, scale
       ``(0.458, 0.448, 0.450)`` per RGB channel;
    2. AlexNet ``features``: conv 3->64 k11 s4 p2, ReLU*, maxpool k3 s2, conv 64->192 k5 p2,
       ReLU*, maxpool k3 s2, conv 192->384 k3 p1, ReLU*, conv 384->256 k3 p1, ReLU*,
       conv 256->256 k3 p1, ReLU*; the five ReLU* outputs are the taps;
    3. each tap is unit-normalised along channels, ``f / (sqrt(sum_c f^2) + 1e-10)``; the
       squared difference of the two images' taps goes through a 1x1 convolution (no bias)
       with the ``lin{i}`` weights, is averaged over space, and the five layers are summed.

    Weights file (``--lpips-weights``): ONE ``torch.save``-d state dict (a ``dict`` of tensors)
    with

    * torchvision AlexNet's ``features.{0,3,6,8,10}.weight`` / ``.bias`` (shapes
      ``[64,3,11,11]``, ``[192,64,5,5]``, ``[384,192,3,3]``, ``[256,384,3,3]``,
      ``[256,256,3,3]`` and the matching biases), and
    * the lpips package's ``lin{0..4}.model.1.weight`` (shapes ``[1, C, 1, 1]`` with C = 64,
      192, 384, 256, 256); ``lin{i}.weight`` (without ``model.1.``) is accepted too.

    splatforge never downloads it. To build it on a machine with torchvision and lpips::

        import torch, torchvision, lpips, os
        sd = torchvision.models.alexnet(weights="IMAGENET1K_V1").state_dict()
        lin = torch.load(os.path.join(os.path.dirname(lpips.__file__),
                                      "weights/v0.1/alex.pth"), map_location="cpu")
        sd = {k: v for k, v in sd.items() if k.startswith("features.")}
        sd.update(lin)
        torch.save(sd, "lpips_alex.pth")

    (``alexnet(pretrained=True)`` in older torchvision.) Results then match
    ``lpips.LPIPS(net="alex")(x, y, normalize=True)``.
    """

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        self.convs = torch.nn.ModuleList()
        self.lins = torch.nn.ModuleList()
        for idx, cin, cout, k, s, p in _ALEX_CONVS:
            conv = torch.nn.Conv2d(cin, cout, k, stride=s, padding=p)
            with torch.no_grad():
                conv.weight.copy_(state[f"features.{idx}.weight"])
                conv.bias.copy_(state[f"features.{idx}.bias"])
            self.convs.append(conv)
        for i, (_, _, cout, _, _, _) in enumerate(_ALEX_CONVS):
            lin = torch.nn.Conv2d(cout, 1, 1, bias=False)
            with torch.no_grad():
                lin.weight.copy_(state[f"lin{i}.weight"])
            self.lins.append(lin)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def expected_shapes() -> dict[str, tuple[int, ...]]:
        """Key -> shape of the weights file (lin keys in their short ``lin{i}.weight`` form)."""
        out: dict[str, tuple[int, ...]] = {}
        for i, (idx, cin, cout, k, _, _) in enumerate(_ALEX_CONVS):
            out[f"features.{idx}.weight"] = (cout, cin, k, k)
            out[f"features.{idx}.bias"] = (cout,)
            out[f"lin{i}.weight"] = (1, cout, 1, 1)
        return out

    @classmethod
    def from_file(cls, path: str | Path, map_location: str | torch.device = "cpu") -> LPIPS:
        """Read a weights file (format: see the class docstring).

        Raises:
            InputError: not a file, not a ``torch.save``-d dict of tensors, missing keys or
                wrong shapes (all named).
        """
        from .errors import InputError

        path = Path(path)
        hint = ("build it from torchvision's AlexNet and lpips' weights/v0.1/alex.pth: see "
                "splatforge.metrics.LPIPS")
        if not path.is_file():
            raise InputError(path, "LPIPS weights file not found", hint)
        try:
            raw = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file
            raise InputError(path, f"cannot read LPIPS weights ({type(e).__name__}: {e})",
                             hint) from None
        if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
            raw = raw["state_dict"]
        if not isinstance(raw, dict):
            raise InputError(path, f"LPIPS weights must be a state dict, got "
                                   f"{type(raw).__name__}", hint)
        state: dict[str, torch.Tensor] = {}
        for k, v in raw.items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                continue
            k = k.removeprefix("module.")
            m = re.fullmatch(r"lin(\d)\.model\.1\.weight", k)
            state[f"lin{m.group(1)}.weight" if m else k] = v
        expected = cls.expected_shapes()
        missing = [k for k in expected if k not in state]
        if missing:
            raise InputError(path, "LPIPS weights file lacks keys: " + ", ".join(missing),
                             hint)
        bad = [f"{k} {tuple(state[k].shape)} (expected {shape})"
               for k, shape in expected.items() if tuple(state[k].shape) != shape]
        if bad:
            raise InputError(path, "LPIPS weights with wrong shapes: " + ", ".join(bad), hint)
        return cls({k: state[k].float() for k in expected})

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised AlexNet taps of ``x`` ``[B, 3, H, W]`` in ``[0, 1]``."""
        h = ((2.0 * x - 1.0) - self.shift) / self.scale
        taps = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                h = F.max_pool2d(h, kernel_size=3, stride=2)
            h = F.relu(conv(h))
            taps.append(h / (torch.sqrt((h * h).sum(1, keepdim=True)) + 1e-10))
        return taps

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        """LPIPS distance of ``img1`` and ``img2``.

        Args:
            img1, img2: ``[H, W, 3]`` (channel-last, as the rasterizer returns) or
                ``[B, 3, H, W]`` (``[B, H, W, 3]`` is taken when dim 1 is not 3), in ``[0, 1]``.
                At least :data:`LPIPS_MIN_SIZE` (31) px per side (the last AlexNet tap).

        Returns:
            ``[]`` for one ``[H, W, 3]`` image, else ``[B]``.
        """
        a, b = _lpips_batch(img1), _lpips_batch(img2)
        if a.shape != b.shape:
            raise ValueError(f"image shapes differ: {tuple(img1.shape)} vs {tuple(img2.shape)}")
        if min(a.shape[2], a.shape[3]) < LPIPS_MIN_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least {LPIPS_MIN_SIZE} px per "
                             f"side, got {a.shape[3]}x{a.shape[2]}")
        dev = self.shift.device
        a, b = a.to(dev, torch.float32), b.to(dev, torch.float32)
        total = a.new_zeros(a.shape[0])
        for lin, fa, fb in zip(self.lins, self.features(a), self.features(b)):
            total = total + lin((fa - fb) ** 2).mean(dim=(1, 2, 3))
        return total[0] if img1.dim() == 3 else total


def _lpips_batch(img: torch.Tensor) -> torch.Tensor:
    """``[H, W, 3]`` / ``[B, 3, H, W]`` / ``[B, H, W, 3]`` -> ``[B, 3, H, W]``."""
    if img.dim() == 3 and img.shape[-1] == 3:
        return img.permute(2, 0, 1).unsqueeze(0)
    if img.dim() == 4 and img.shape[1] == 3:
        return img
    if img.dim() == 4 and img.shape[-1] == 3:
        return img.permute(0, 3, 1, 2)
    raise ValueError(f"expected an RGB image [H, W, 3] or a batch [B, 3, H, W], got shape "
                     f"{tuple(img.shape)}")
