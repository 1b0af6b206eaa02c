"""The photometric loss and its gradient in five Triton kernels (no autograd graph, no cuDNN).

Same loss as :func:`splatforge.train.losses.photometric_loss` (Kerbl et al. 2023, INRIA
``train.py``)::

    loss = (1 - lambda) * mean|x - y| + lambda * (1 - mean SSIM(x, y))

with SSIM's 11-tap Gaussian window (sigma 1.5) and zero "same" padding. The gradient with respect
to the render ``x`` is the one derived in :mod:`splatforge.train.fused_ssim` (Wang et al. 2004,
eq. 13)::

    dL/dx = (1 - lambda)/N sign(x - y)
            - lambda/N [G*dS/dmu_x + 2 x G*dS/de_xx + y G*dS/de_xy]

where ``G*`` is the zero-padded separable Gaussian filter and ``N`` the number of values.

Why: on a 750x500 image the PyTorch version runs about 40 kernels (cuDNN depthwise blurs and
element-wise ops) and holds about twelve image-sized temporaries; replaying it as CUDA graphs
(:class:`~splatforge.train.losses.GraphedPhotometricLoss`) removes the launch cost but keeps a
private memory pool of about twice that. Here the forward pass computes the loss *and* the
gradient in five launches:

1. ``_hblur_moments``: horizontal 11-tap blur of ``x, y, x^2, y^2, x y`` -> 5 planes;
2. ``_vblur_ssim``: vertical blur of those, the SSIM map, its three partial derivatives
   (3 planes) and per-block sums of SSIM and ``|x - y|``;
3. ``_hblur3``: horizontal blur of the partials (written over the first 3 moment planes);
4. ``_vblur_grad``: vertical blur, combined with ``x``, ``y`` and the L1 sign -> ``dL/dx``;
5. ``_finalize``: the block sums -> ``loss``, ``l1``, ``ssim`` (fixed order: deterministic).

Peak: 8 image-sized float32 planes plus the gradient, which is the only one kept for the
backward pass. The target may be ``uint8`` (scaled by 1/255 as it is read), so the float copy of
the training image is never made.

On a CPU, the kernels run under Triton's interpreter when ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import os

import torch

from ..metrics import SSIM_K1, SSIM_K2
from .fused_ssim import _window

try:  # Triton ships with CUDA builds of PyTorch; CPU wheels have none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

_BLOCK = 1024

if triton is not None:
    @triton.jit
    def _hblur_moments(x_ptr, y_ptr, y_scale, g_ptr, m_ptr, n, W, C,
                       WIN: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        w = (offs // C) % W
        ax = tl.zeros([BLOCK], dtype=tl.float32)
        ay = tl.zeros([BLOCK], dtype=tl.float32)
        axx = tl.zeros([BLOCK], dtype=tl.float32)
        ayy = tl.zeros([BLOCK], dtype=tl.float32)
        axy = tl.zeros([BLOCK], dtype=tl.float32)
        for k in tl.static_range(WIN):
            d = k - WIN // 2
            ok = mask & (w + d >= 0) & (w + d < W)
            xv = tl.load(x_ptr + offs + d * C, mask=ok, other=0.0).to(tl.float32)
            yv = tl.load(y_ptr + offs + d * C, mask=ok, other=0).to(tl.float32) * y_scale
            gk = tl.load(g_ptr + k)
            gx = gk * xv
            gy = gk * yv
            ax += gx
            ay += gy
            axx += gx * xv
            ayy += gy * yv
            axy += gx * yv
        tl.store(m_ptr + offs, ax, mask=mask)
        tl.store(m_ptr + n + offs, ay, mask=mask)
        tl.store(m_ptr + 2 * n + offs, axx, mask=mask)
        tl.store(m_ptr + 3 * n + offs, ayy, mask=mask)
        tl.store(m_ptr + 4 * n + offs, axy, mask=mask)

    @triton.jit
    def _vblur_ssim(m_ptr, x_ptr, y_ptr, y_scale, g_ptr, p_ptr, part_ptr, n, H, W, C, c1, c2,
                    WIN: tl.constexpr, BLOCK: tl.constexpr, NEED_GRAD: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        row = W * C
        h = (offs // row) % H
        mu_x = tl.zeros([BLOCK], dtype=tl.float32)
        mu_y = tl.zeros([BLOCK], dtype=tl.float32)
        e_xx = tl.zeros([BLOCK], dtype=tl.float32)
        e_yy = tl.zeros([BLOCK], dtype=tl.float32)
        e_xy = tl.zeros([BLOCK], dtype=tl.float32)
        for k in tl.static_range(WIN):
            d = k - WIN // 2
            ok = mask & (h + d >= 0) & (h + d < H)
            o = offs + d * row
            gk = tl.load(g_ptr + k)
            mu_x += gk * tl.load(m_ptr + o, mask=ok, other=0.0)
            mu_y += gk * tl.load(m_ptr + n + o, mask=ok, other=0.0)
            e_xx += gk * tl.load(m_ptr + 2 * n + o, mask=ok, other=0.0)
            e_yy += gk * tl.load(m_ptr + 3 * n + o, mask=ok, other=0.0)
            e_xy += gk * tl.load(m_ptr + 4 * n + o, mask=ok, other=0.0)
        mxy = mu_x * mu_y
        b1 = mu_x * mu_x + mu_y * mu_y + c1
        b2 = (e_xx + e_yy) - (mu_x * mu_x + mu_y * mu_y) + c2
        a1 = 2.0 * mxy + c1
        a2 = 2.0 * (e_xy - mxy) + c2
        inv_b = 1.0 / (b1 * b2)
        s = a1 * a2 * inv_b
        xv = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        yv = tl.load(y_ptr + offs, mask=mask, other=0).to(tl.float32) * y_scale
        tl.store(part_ptr + 2 * pid, tl.sum(tl.where(mask, s, 0.0), axis=0))
        tl.store(part_ptr + 2 * pid + 1, tl.sum(tl.where(mask, tl.abs(xv - yv), 0.0), axis=0))
        if NEED_GRAD:
            d_exy = 2.0 * a1 * inv_b
            d_exx = -s / b2
            d_mu = 2.0 * mu_y * (a2 - a1) * inv_b - 2.0 * mu_x * s * (b2 - b1) * inv_b
            tl.store(p_ptr + offs, d_mu, mask=mask)
            tl.store(p_ptr + n + offs, d_exx, mask=mask)
            tl.store(p_ptr + 2 * n + offs, d_exy, mask=mask)

    @triton.jit
    def _blur3(p_ptr, g_ptr, n, offs, mask, pos, size, stride, WIN: tl.constexpr,
               BLOCK: tl.constexpr):
        # WIN-tap zero-padded blur of three planes p_ptr + {0, n, 2n} along the axis where the
        # element's coordinate is pos (< size) and neighbours lie stride values apart
        a0 = tl.zeros([BLOCK], dtype=tl.float32)
        a1 = tl.zeros([BLOCK], dtype=tl.float32)
        a2 = tl.zeros([BLOCK], dtype=tl.float32)
        for k in tl.static_range(WIN):
            d = k - WIN // 2
            ok = mask & (pos + d >= 0) & (pos + d < size)
            o = offs + d * stride
            gk = tl.load(g_ptr + k)
            a0 += gk * tl.load(p_ptr + o, mask=ok, other=0.0)
            a1 += gk * tl.load(p_ptr + n + o, mask=ok, other=0.0)
            a2 += gk * tl.load(p_ptr + 2 * n + o, mask=ok, other=0.0)
        return a0, a1, a2

    @triton.jit
    def _hblur3(p_ptr, g_ptr, q_ptr, n, W, C, WIN: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        a0, a1, a2 = _blur3(p_ptr, g_ptr, n, offs, mask, (offs // C) % W, W, C, WIN, BLOCK)
        tl.store(q_ptr + offs, a0, mask=mask)
        tl.store(q_ptr + n + offs, a1, mask=mask)
        tl.store(q_ptr + 2 * n + offs, a2, mask=mask)

    @triton.jit
    def _vblur_grad(q_ptr, x_ptr, y_ptr, y_scale, g_ptr, out_ptr, n, H, W, C, a_ssim, a_l1,
                    WIN: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        row = W * C
        b0, b1, b2 = _blur3(q_ptr, g_ptr, n, offs, mask, (offs // row) % H, H, row, WIN, BLOCK)
        xv = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        yv = tl.load(y_ptr + offs, mask=mask, other=0).to(tl.float32) * y_scale
        diff = xv - yv
        sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
        g = a_ssim * (b0 + 2.0 * xv * b1 + yv * b2) + a_l1 * sign
        tl.store(out_ptr + offs, g, mask=mask)

    @triton.jit
    def _finalize(part_ptr, loss_ptr, l1_ptr, s_ptr, nblocks, inv_n, lam, CHUNK: tl.constexpr):
        s_acc = tl.zeros([CHUNK], dtype=tl.float32)
        l_acc = tl.zeros([CHUNK], dtype=tl.float32)
        for start in range(0, nblocks, CHUNK):
            i = start + tl.arange(0, CHUNK)
            m = i < nblocks
            s_acc += tl.load(part_ptr + 2 * i, mask=m, other=0.0)
            l_acc += tl.load(part_ptr + 2 * i + 1, mask=m, other=0.0)
        s = tl.sum(s_acc, axis=0) * inv_n
        l1 = tl.sum(l_acc, axis=0) * inv_n
        tl.store(loss_ptr, (1.0 - lam) * l1 + lam * (1.0 - s))
        tl.store(l1_ptr, l1)
        tl.store(s_ptr, s)


def triton_loss_available(device: torch.device) -> bool:
    """True when :func:`fused_photometric_loss` runs its kernels on ``device``: CUDA with
    Triton importable, or a CPU under Triton's interpreter (``TRITON_INTERPRET=1``)."""
    if triton is None:
        return False
    return device.type == "cuda" or (device.type == "cpu"
                                     and os.environ.get("TRITON_INTERPRET") == "1")


def _launch(x: torch.Tensor, y: torch.Tensor, y_scale: float, lam: float, need_grad: bool,
            window_size: int, sigma: float) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """Run the kernels on contiguous ``[..., H, W, C]`` images; returns
    ((loss, l1, ssim) 0-dim, ``dL/dx`` like ``x`` or None)."""
    h, w, c = x.shape[-3:]
    n = x.numel()
    nblocks = triton.cdiv(n, _BLOCK)
    grid = (nblocks,)
    win = _window(window_size, sigma, torch.float32, x.device)
    c1 = SSIM_K1 ** 2  # (K L)^2 with the data range L = 1
    c2 = SSIM_K2 ** 2
    planes = torch.empty((5, n), dtype=torch.float32, device=x.device)
    partials = torch.empty((3, n), dtype=torch.float32, device=x.device) if need_grad else planes
    block_sums = torch.empty((nblocks, 2), dtype=torch.float32, device=x.device)
    _hblur_moments[grid](x, y, y_scale, win, planes, n, w, c, WIN=window_size, BLOCK=_BLOCK)
    _vblur_ssim[grid](planes, x, y, y_scale, win, partials, block_sums, n, h, w, c, c1, c2,
                      WIN=window_size, BLOCK=_BLOCK, NEED_GRAD=need_grad)
    out = tuple(torch.empty((), dtype=torch.float32, device=x.device) for _ in range(3))
    _finalize[(1,)](block_sums, *out, nblocks, 1.0 / n, lam, CHUNK=1024)
    grad = None
    if need_grad:
        _hblur3[grid](partials, win, planes, n, w, c, WIN=window_size, BLOCK=_BLOCK)
        del partials
        grad = torch.empty_like(x, dtype=torch.float32)
        _vblur_grad[grid](planes, x, y, y_scale, win, grad, n, h, w, c, -lam / n,
                          (1.0 - lam) / n, WIN=window_size, BLOCK=_BLOCK)
    return out, grad


class _FusedPhotometricLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, y_scale, lam, window_size, sigma):
        (loss, l1, s), grad = _launch(x, y, y_scale, lam, ctx.needs_input_grad[0], window_size,
                                      sigma)
        ctx.mark_non_differentiable(l1, s)
        ctx.save_for_backward(grad)
        return loss, l1, s

    @staticmethod
    def backward(ctx, grad_loss, _g_l1, _g_s):
        (grad,) = ctx.saved_tensors
        # the gradient was formed in the forward pass for an upstream gradient of 1
        return grad.mul_(grad_loss), None, None, None, None, None


def fused_photometric_loss(render: torch.Tensor, target: torch.Tensor, ssim_lambda: float = 0.2,
                           window_size: int = 11, sigma: float = 1.5
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`splatforge.train.losses.photometric_loss` computed by the module's kernels.

    Args:
        render: ``[H, W, C]`` or ``[B, H, W, C]`` float32 image(s) in [0, 1]; gradients flow
            to it.
        target: same shape, float (values in [0, 1]) or uint8 (0..255, scaled by 1/255); no
            gradient flows to it.
        ssim_lambda: weight of the D-SSIM term (INRIA ``lambda_dssim``), in [0, 1].
        window_size, sigma: the SSIM Gaussian window (11 taps, sigma 1.5: Wang et al. 2004).

    Returns:
        ``(loss, l1, ssim)`` as 0-dim float32 tensors; only ``loss`` is differentiable. Equal
        to ``photometric_loss(render, target_in_0_1)`` to float32 rounding.

    Raises:
        ValueError: shapes differ, ``render`` is not float32 or has 5 x numel >= 2^31 values
            (32-bit offsets), or the device cannot run the kernels
            (see :func:`triton_loss_available`).
    """
    if render.shape != target.shape or render.dim() not in (3, 4):
        raise ValueError(f"render {tuple(render.shape)} and target {tuple(target.shape)} must "
                         f"be equal [H, W, C] or [B, H, W, C] shapes")
    if render.dtype != torch.float32:
        raise ValueError(f"render must be float32, got {render.dtype}")
    if not triton_loss_available(render.device):
        raise ValueError(f"the Triton loss cannot run on {render.device} (Triton "
                         f"{'missing' if triton is None else 'needs CUDA'})")
    if render.device != target.device:
        raise ValueError(f"render on {render.device}, target on {target.device}")
    if 5 * render.numel() >= 2 ** 31:
        raise ValueError(f"render {tuple(render.shape)} is too large for the kernels' 32-bit "
                         f"offsets (5 x {render.numel():,} values)")
    y_scale = 1.0 / 255.0 if target.dtype == torch.uint8 else 1.0
    if target.dtype not in (torch.uint8, torch.float32):
        target = target.float()
    return _FusedPhotometricLoss.apply(render.contiguous(), target.detach().contiguous(),
                                       y_scale, float(ssim_lambda), window_size, sigma)
