"""The MCMC strategy's position noise, fused into one kernel on CUDA.

Kheradmand et al. 2024 ("3D Gaussian Splatting as Markov Chain Monte Carlo", eq. 9 and
Sec. 3.3) perturb every Gaussian's centre after each optimiser step with noise shaped by its
own covariance and gated by its opacity, so that transparent ("dead") Gaussians explore and
opaque ones stay put:

    mu <- mu + scaler * sigma(-k (o - t)) * Sigma eps,   eps ~ N(0, I_3)

with ``Sigma = R diag(s)^2 R^T`` (``R`` from the normalised quaternion, ``s = exp(log
scales)``), ``o = sigmoid(opacity logit)``, ``k = 100``, ``t = 1 - 0.995`` written as
``sigma(k ((1 - o) - 0.995))``, and ``scaler = lr_means * noise_lr`` (gsplat 1.5.3
``strategy.ops.inject_noise_to_position``, ``noise_lr = 5e5``).

gsplat computes it with about fifteen kernels per step (the covariance kernel, then
element-wise PyTorch ops and a batched matrix product); here one ``randn`` and one Triton
kernel do it on CUDA, and :func:`position_noise_reference` (plain PyTorch, with the covariance
of :func:`splatforge.raster.projection.quat_scale_to_covar_preci`) runs elsewhere and serves as
the test oracle.
"""

from __future__ import annotations

import torch

from ..raster.projection import quat_scale_to_covar_preci

try:  # Triton ships with CUDA builds of PyTorch; CPU wheels have none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

#: gsplat's opacity gate: sigma(K * ((1 - o) - X0)).
GATE_K = 100.0
GATE_X0 = 0.995


def position_noise_reference(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor,
                             opacity_logits: torch.Tensor, scaler: float,
                             eps: torch.Tensor) -> torch.Tensor:
    """The noise ``scaler * gate(o) * Sigma eps`` (the module docstring's formula), in PyTorch.

    Args:
        means: ``[N, 3]`` (only its shape and dtype are used).
        quats: ``[N, 4]`` (w, x, y, z), log_scales: ``[N, 3]``, opacity_logits: ``[N]``.
        scaler: ``lr_means * noise_lr`` (world units per unit of ``Sigma eps``).
        eps: ``[N, 3]`` standard normal samples.

    Returns:
        ``[N, 3]`` displacement in world units.
    """
    covars, _ = quat_scale_to_covar_preci(quats, torch.exp(log_scales), compute_covar=True,
                                          compute_preci=False)           # [N, 3, 3]
    gate = torch.sigmoid(GATE_K * ((1.0 - torch.sigmoid(opacity_logits.reshape(-1))) - GATE_X0))
    e = eps * (gate * scaler).unsqueeze(-1)
    return torch.einsum("nij,nj->ni", covars, e).to(means.dtype)


if triton is not None:
    @triton.jit
    def _noise_kernel(means_ptr, quats_ptr, scales_ptr, opac_ptr, eps_ptr, n, scaler,
                      gate_k, gate_x0, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        qw = tl.load(quats_ptr + offs * 4 + 0, mask=m, other=1.0)
        qx = tl.load(quats_ptr + offs * 4 + 1, mask=m, other=0.0)
        qy = tl.load(quats_ptr + offs * 4 + 2, mask=m, other=0.0)
        qz = tl.load(quats_ptr + offs * 4 + 3, mask=m, other=0.0)
        inv = 1.0 / tl.maximum(tl.sqrt(qw * qw + qx * qx + qy * qy + qz * qz), 1e-12)
        qw, qx, qy, qz = qw * inv, qx * inv, qy * inv, qz * inv
        r00 = 1 - 2 * (qy * qy + qz * qz)
        r01 = 2 * (qx * qy - qw * qz)
        r02 = 2 * (qx * qz + qw * qy)
        r10 = 2 * (qx * qy + qw * qz)
        r11 = 1 - 2 * (qx * qx + qz * qz)
        r12 = 2 * (qy * qz - qw * qx)
        r20 = 2 * (qx * qz - qw * qy)
        r21 = 2 * (qy * qz + qw * qx)
        r22 = 1 - 2 * (qx * qx + qy * qy)
        v0 = tl.exp(2.0 * tl.load(scales_ptr + offs * 3 + 0, mask=m, other=0.0))
        v1 = tl.exp(2.0 * tl.load(scales_ptr + offs * 3 + 1, mask=m, other=0.0))
        v2 = tl.exp(2.0 * tl.load(scales_ptr + offs * 3 + 2, mask=m, other=0.0))
        o = tl.sigmoid(tl.load(opac_ptr + offs, mask=m, other=0.0))
        w = scaler * tl.sigmoid(gate_k * ((1.0 - o) - gate_x0))
        e0 = tl.load(eps_ptr + offs * 3 + 0, mask=m, other=0.0) * w
        e1 = tl.load(eps_ptr + offs * 3 + 1, mask=m, other=0.0) * w
        e2 = tl.load(eps_ptr + offs * 3 + 2, mask=m, other=0.0) * w
        t0 = (r00 * e0 + r10 * e1 + r20 * e2) * v0
        t1 = (r01 * e0 + r11 * e1 + r21 * e2) * v1
        t2 = (r02 * e0 + r12 * e1 + r22 * e2) * v2
        p0 = means_ptr + offs * 3
        tl.store(p0 + 0, tl.load(p0 + 0, mask=m) + r00 * t0 + r01 * t1 + r02 * t2, mask=m)
        tl.store(p0 + 1, tl.load(p0 + 1, mask=m) + r10 * t0 + r11 * t1 + r12 * t2, mask=m)
        tl.store(p0 + 2, tl.load(p0 + 2, mask=m) + r20 * t0 + r21 * t1 + r22 * t2, mask=m)


def triton_available(device: torch.device) -> bool:
    """True when the fused kernel can run on ``device`` (CUDA and Triton importable)."""
    return triton is not None and device.type == "cuda"


@torch.no_grad()
def inject_position_noise_(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor,
                           opacity_logits: torch.Tensor, scaler: float,
                           eps: torch.Tensor | None = None, fused: bool = True) -> None:
    """Add the MCMC position noise to ``means`` in place (module docstring).

    Args:
        means: ``[N, 3]`` float32, modified in place (a Parameter's data is fine).
        quats: ``[N, 4]``, log_scales: ``[N, 3]``, opacity_logits: ``[N]`` or ``[N, 1]``.
        scaler: ``lr_means * noise_lr``.
        eps: ``[N, 3]`` standard normal samples (default: ``torch.randn_like(means)``).
        fused: use the Triton kernel when :func:`triton_available` (else PyTorch ops).

    Raises:
        ValueError: inconsistent shapes.
    """
    n = means.shape[0]
    if quats.shape != (n, 4) or log_scales.shape != (n, 3) or opacity_logits.numel() != n:
        raise ValueError(f"shapes disagree: means {tuple(means.shape)}, quats "
                         f"{tuple(quats.shape)}, scales {tuple(log_scales.shape)}, opacities "
                         f"{tuple(opacity_logits.shape)}")
    if eps is None:
        eps = torch.randn_like(means)
    if n == 0:
        return
    if fused and triton_available(means.device) and means.is_contiguous() \
            and means.dtype == torch.float32:
        block = 256
        _noise_kernel[(triton.cdiv(n, block),)](
            means, quats.contiguous(), log_scales.contiguous(),
            opacity_logits.reshape(-1).contiguous(), eps.contiguous(), n, float(scaler),
            GATE_K, GATE_X0, BLOCK=block)
        return
    means.add_(position_noise_reference(means, quats, log_scales, opacity_logits, scaler, eps))
