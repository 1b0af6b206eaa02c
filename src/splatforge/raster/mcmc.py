"""MCMC densification on non-CUDA tensors: a PyTorch relocation op and its installation.

``gsplat.strategy.MCMCStrategy`` moves "dead" Gaussians onto live ones and adds new ones with
``gsplat.strategy.ops.relocate`` / ``sample_add``, which call
``gsplat.relocation.compute_relocation`` (a CUDA kernel, ``RelocationCUDA.cu``), and it
perturbs positions with ``gsplat.strategy.ops.inject_noise_to_position``, which calls
``gsplat.quat_scale_to_covar_preci`` (also CUDA). :func:`install_torch_relocation` replaces the
two names *inside* ``gsplat.strategy.ops`` by dispatchers: CUDA tensors go to gsplat's
original ops (when :func:`~splatforge.raster.gsplat_available`), other tensors (CPU, MPS, or
CUDA without working gsplat kernels) to the PyTorch versions here. The strategy code itself
is unchanged.

The relocation formula is eq. 9 of Kheradmand et al. 2024, "3D Gaussian Splatting as Markov
Chain Monte Carlo" (arXiv:2404.09591): a Gaussian of opacity ``o`` and scale ``s`` that is
split into ``N`` copies gets

    o_new = 1 - (1 - o)^(1/N)
    s_new = o / ( sum_{i=1..N} sum_{k=0..i-1} binom(i-1, k) (-1)^k o_new^(k+1) / sqrt(k+1) ) * s

with ``N`` clamped to ``[1, n_max]``, ``n_max = len(binoms)`` (``binoms[n, k] = C(n, k)``,
the table ``MCMCStrategy.initialize_state`` builds).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from .gsplat_backend import gsplat_available
from .projection import quat_scale_to_covar_preci as _torch_quat_scale_to_covar_preci

_lock = threading.Lock()
_originals: dict = {}


def compute_relocation_torch(
    opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor
) -> tuple[Tensor, Tensor]:
    """MCMC relocation (Kheradmand et al. 2024, eq. 9) in PyTorch.

    Same contract as ``gsplat.relocation.compute_relocation``. The alternating binomial sum is
    evaluated in float64 (on the CPU when the device has no float64, e.g. MPS) and the result
    cast back, so it is at least as accurate as the float32 CUDA kernel.

    Args:
        opacities: ``[N]`` activated opacities in [0, 1].
        scales: ``[N, 3]`` activated scales, scene units.
        ratios: ``[N]`` number of copies each Gaussian is split into; clamped in place to
            ``[1, n_max]`` (as gsplat's wrapper does).
        binoms: ``[n_max, n_max]`` binomial table, ``binoms[n, k] = C(n, k)`` (0 for k > n).

    Returns:
        ``(new_opacities [N], new_scales [N, 3])`` in the dtype/device of the inputs.

    Raises:
        ValueError: shapes do not match.
    """
    N = opacities.shape[0]
    n_max = binoms.shape[0]
    if tuple(scales.shape) != (N, 3) or tuple(ratios.shape) != (N,) or binoms.dim() != 2:
        raise ValueError(
            f"compute_relocation: expected opacities [N], scales [N, 3], ratios [N], binoms "
            f"[n_max, n_max]; got {tuple(opacities.shape)}, {tuple(scales.shape)}, "
            f"{tuple(ratios.shape)}, {tuple(binoms.shape)}"
        )
    ratios.clamp_(min=1, max=n_max)
    dev = opacities.device
    work = dev if dev.type != "mps" else torch.device("cpu")
    o = opacities.detach().to(work, torch.float64)
    n = ratios.detach().to(work).long()
    B = binoms.detach().to(work, torch.float64)
    new_o = 1.0 - torch.pow(1.0 - o, 1.0 / n.to(torch.float64))
    # S[n-1, k] = sum_{i=1..n} binom(i-1, k)  (binoms rows are zero for k > i-1)
    S = torch.cumsum(B, dim=0)  # [n_max, n_max]
    k = torch.arange(n_max, device=work, dtype=torch.float64)
    sign = 1.0 - 2.0 * (torch.arange(n_max, device=work) % 2).to(torch.float64)  # (-1)^k
    terms = sign / torch.sqrt(k + 1.0) * torch.pow(new_o[:, None], k[None, :] + 1.0)  # [N, n_max]
    denom = (S[n - 1] * terms).sum(dim=1)
    coeff = o / denom
    new_scales = coeff[:, None] * scales.detach().to(work, torch.float64)
    return new_o.to(dev, opacities.dtype), new_scales.to(dev, scales.dtype)


def _use_gsplat(t: Tensor) -> bool:
    """CUDA tensors go to gsplat's kernels when they work here (checked once, cached)."""
    return isinstance(t, Tensor) and t.is_cuda and gsplat_available()


def _make_relocation_dispatch(original):
    def compute_relocation(opacities, scales, ratios, binoms):
        if original is not None and _use_gsplat(opacities):
            return original(opacities, scales, ratios, binoms)
        return compute_relocation_torch(opacities, scales, ratios, binoms)

    compute_relocation.__doc__ = (
        "splatforge dispatcher: CUDA tensors -> gsplat's CUDA relocation op (when gsplat's "
        "kernels work), others -> splatforge.raster.mcmc.compute_relocation_torch."
    )
    compute_relocation._splatforge_dispatch = True
    return compute_relocation


def _make_covar_dispatch(original):
    def quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=True, triu=False):
        if original is not None and _use_gsplat(quats):
            return original(quats, scales, compute_covar=compute_covar,
                            compute_preci=compute_preci, triu=triu)
        return _torch_quat_scale_to_covar_preci(quats, scales, compute_covar, compute_preci, triu)

    quat_scale_to_covar_preci.__doc__ = (
        "splatforge dispatcher: CUDA tensors -> gsplat's CUDA op (when gsplat's kernels "
        "work), others -> splatforge.raster.projection.quat_scale_to_covar_preci."
    )
    quat_scale_to_covar_preci._splatforge_dispatch = True
    return quat_scale_to_covar_preci


def install_torch_relocation() -> None:
    """Make ``gsplat.strategy.MCMCStrategy`` (and ``ops.relocate`` / ``ops.sample_add`` /
    ``ops.inject_noise_to_position``) work on CPU/MPS tensors.

    Rebinds ``gsplat.strategy.ops.compute_relocation`` and
    ``gsplat.strategy.ops.quat_scale_to_covar_preci`` to dispatchers (CUDA tensors still use
    gsplat's kernels). Idempotent and thread-safe; undo with
    :func:`uninstall_torch_relocation`. :func:`splatforge.raster.rasterize` calls it the first
    time the torch backend is used.
    """
    with _lock:
        from gsplat.strategy import ops

        if getattr(ops.compute_relocation, "_splatforge_dispatch", False):
            return
        _originals["compute_relocation"] = ops.compute_relocation
        _originals["quat_scale_to_covar_preci"] = ops.quat_scale_to_covar_preci
        ops.compute_relocation = _make_relocation_dispatch(ops.compute_relocation)
        ops.quat_scale_to_covar_preci = _make_covar_dispatch(ops.quat_scale_to_covar_preci)


def uninstall_torch_relocation() -> None:
    """Restore gsplat's original ops in ``gsplat.strategy.ops`` (no-op if not installed)."""
    with _lock:
        from gsplat.strategy import ops

        if not getattr(ops.compute_relocation, "_splatforge_dispatch", False):
            return
        ops.compute_relocation = _originals.pop("compute_relocation")
        ops.quat_scale_to_covar_preci = _originals.pop("quat_scale_to_covar_preci")


def torch_relocation_installed() -> bool:
    """Whether :func:`install_torch_relocation` is in effect."""
    from gsplat.strategy import ops

    return bool(getattr(ops.compute_relocation, "_splatforge_dispatch", False))


__all__ = [
    "compute_relocation_torch",
    "install_torch_relocation",
    "torch_relocation_installed",
    "uninstall_torch_relocation",
]
