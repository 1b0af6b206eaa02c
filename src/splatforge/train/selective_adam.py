"""Adam for the visible Gaussians only, with optional bfloat16 moments, in one kernel per
parameter.

**Visible-only updates** (gsplat's ``SelectiveAdam``; Mallick et al. 2024, "Taming 3DGS",
Sec. 4): a Gaussian that no pixel of the step's view saw gets no Adam update at all: its
parameters *and* both moments stay as they are (plain Adam would decay its moments and keep
moving it with the stale first moment). Rows ``i`` with ``visible[i]`` get exactly
``torch.optim.Adam``'s update (Kingma & Ba 2015, Algorithm 1, as PyTorch computes it)::

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

with ``t`` the optimiser's step counter (counted every step, for every Gaussian, as gsplat
does).

**bfloat16 moments**: ``m`` and ``v`` are read as stored, updated in float32 and written back
as bfloat16 with stochastic rounding (a uniform random 16-bit value added below the kept bits
before truncation, so each stored value is unbiased). Round-to-nearest would not do: with
``b2 = 0.999`` the decay ``v * 0.999`` changes ``v`` by less than half a bfloat16 ulp
(``2^-9``), so ``v`` could never decrease. Moments of 59 floats per Gaussian then take 236
instead of 472 bytes.

On CUDA (with Triton) one Triton kernel per parameter does the whole update; elsewhere
:func:`masked_adam_reference` (PyTorch ops, same formula and rounding) runs, and serves as the
test oracle. The optimisers stay ``torch.optim.Adam`` objects (``state['step']``,
``state['exp_avg']``, ``state['exp_avg_sq']``), so checkpoints and gsplat's strategy ops work
on them unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

try:  # Triton ships with CUDA builds of PyTorch; CPU wheels have none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

_BLOCK = 1024


def visible_gaussians(info: dict[str, Any], n: int) -> torch.Tensor:
    """``[N] bool``: Gaussians that some camera of a render saw (a positive pixel radius).

    Args:
        info: the rasterizer's meta (:func:`splatforge.raster.rasterize`): dense ``radii``
            ``[C, N, 2]`` (or ``[C, N]``), or packed ``radii [nnz, 2]`` with ``gaussian_ids``.
        n: number of Gaussians.

    Raises:
        KeyError: ``info`` has no ``radii``.
    """
    radii = info["radii"]
    ids = info.get("gaussian_ids")
    pos = radii > 0
    if radii.dim() >= 2 and radii.shape[-1] == 2:
        pos = pos.all(-1)
    if ids is not None:
        vis = torch.zeros(n, dtype=torch.bool, device=radii.device)
        vis[ids[pos]] = True
        return vis
    return pos.reshape(-1, n).any(0)


def _stochastic_bf16(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """float32 ``x`` as bfloat16 with stochastic rounding (unbiased: ``E[out] = x``)."""
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=x.device,
                          generator=generator)
    out = ((bits + noise) & -65536).view(torch.float32)
    return out.to(torch.bfloat16)  # exact: the low 16 bits are zero


@torch.no_grad()
def masked_adam_reference(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                          step: float, lr: float, beta1: float, beta2: float, eps: float,
                          visible: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> None:
    """The update of the module docstring in PyTorch ops, in place on ``p``, ``m``, ``v``.

    Args:
        p, g: parameter and gradient ``[N, ...]`` float32.
        m, v: moments like ``p`` (float32 or bfloat16; bfloat16 is stored with stochastic
            rounding from ``generator``).
        step: the step counter after this step's increment (``t >= 1``).
        visible: ``[N] bool`` rows to update (None: all).
    """
    bc1 = 1.0 - beta1 ** step
    bc2_sqrt = (1.0 - beta2 ** step) ** 0.5
    g32 = g.float()
    m_new = m.float() * beta1 + g32 * (1.0 - beta1)
    v_new = v.float() * beta2 + g32 * g32 * (1.0 - beta2)
    p_new = p - (lr / bc1) * m_new / (v_new.sqrt() / bc2_sqrt + eps)
    if m.dtype == torch.bfloat16:
        m_new = _stochastic_bf16(m_new, generator)
        v_new = _stochastic_bf16(v_new, generator)
    if visible is None:
        p.copy_(p_new)
        m.copy_(m_new)
        v.copy_(v_new)
        return
    rows = visible.reshape((-1,) + (1,) * (p.dim() - 1))
    p.copy_(torch.where(rows, p_new, p))
    m.copy_(torch.where(rows, m_new.to(m.dtype), m))
    v.copy_(torch.where(rows, v_new.to(v.dtype), v))


if triton is not None:
    @triton.jit
    def _masked_adam_kernel(p_ptr, g_ptr, m_ptr, v_ptr, vis_ptr, step_ptr, n, row_len, lr,
                            beta1, beta2, eps, seed, HAS_MASK: tl.constexpr,
                            BF16: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        if HAS_MASK:
            ok = ok & (tl.load(vis_ptr + offs // row_len, mask=ok, other=0) != 0)
        t = tl.load(step_ptr)
        bc1 = 1.0 - tl.exp(t * tl.log(beta1))
        bc2_sqrt = tl.sqrt(1.0 - tl.exp(t * tl.log(beta2)))
        g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        p = tl.load(p_ptr + offs, mask=ok, other=0.0)
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        p = p - (lr / bc1) * m / (tl.sqrt(v) / bc2_sqrt + eps)
        tl.store(p_ptr + offs, p, mask=ok)
        if BF16:
            r = tl.randint4x(seed, offs)
            rm = (r[0] & 0xFFFF).to(tl.int32)
            rv = (r[1] & 0xFFFF).to(tl.int32)
            mb = (m.to(tl.int32, bitcast=True) + rm) & -65536
            vb = (v.to(tl.int32, bitcast=True) + rv) & -65536
            tl.store(m_ptr + offs, mb.to(tl.float32, bitcast=True).to(tl.bfloat16), mask=ok)
            tl.store(v_ptr + offs, vb.to(tl.float32, bitcast=True).to(tl.bfloat16), mask=ok)
        else:
            tl.store(m_ptr + offs, m, mask=ok)
            tl.store(v_ptr + offs, v, mask=ok)


def kernel_available(device: torch.device) -> bool:
    """True when the Triton kernel runs on ``device``: CUDA with Triton, or a CPU under
    Triton's interpreter (``TRITON_INTERPRET=1``, which tests use)."""
    if triton is None:
        return False
    return device.type == "cuda" or (device.type == "cpu"
                                     and os.environ.get("TRITON_INTERPRET") == "1")


def _launch(p, g, m, v, vis, step_t, lr, beta1, beta2, eps, seed) -> None:
    n = p.numel()
    row = max(1, n // max(1, p.shape[0])) if p.dim() else 1
    _masked_adam_kernel[(triton.cdiv(n, _BLOCK),)](
        p, g, m, v, vis if vis is not None else p, step_t, n, row, float(lr), float(beta1),
        float(beta2), float(eps), int(seed), HAS_MASK=vis is not None,
        BF16=m.dtype == torch.bfloat16, BLOCK=_BLOCK)


class SelectiveAdamStepper:
    """Steps a trainer's per-parameter ``torch.optim.Adam`` optimisers with the update of the
    module docstring.

    Args:
        moments_dtype: ``torch.float32`` or ``torch.bfloat16`` storage of ``exp_avg`` /
            ``exp_avg_sq`` (moments found in another dtype, e.g. after a checkpoint load or
            a strategy op that concatenated float32 zeros, are converted on the next step).
        use_kernel: use the Triton kernel where :func:`kernel_available` (else PyTorch ops).
        seed: seed of the stochastic rounding (bfloat16 moments).

    Call: ``stepper(optimizers, visible=None, zero_grad=True)``.
    """

    def __init__(self, moments_dtype: torch.dtype = torch.float32, use_kernel: bool = True,
                 seed: int = 0):
        if moments_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"moments_dtype must be float32 or bfloat16, not {moments_dtype}")
        self.moments_dtype = moments_dtype
        self.use_kernel = use_kernel
        self.seed = int(seed)
        self.calls = 0
        self._gen: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._gen.get(device)
        if gen is None:
            gen = self._gen[device] = torch.Generator(device=device).manual_seed(self.seed)
        return gen

    @torch.no_grad()
    def __call__(self, optimizers: Iterable[torch.optim.Adam],
                 visible: torch.Tensor | None = None, zero_grad: bool = True) -> None:
        """One step of every optimiser.

        Args:
            optimizers: ``torch.optim.Adam`` instances, one parameter ``[N, ...]`` each
                (every parameter's first dimension is the Gaussian index).
            visible: ``[N] bool`` (None: update every row; then the update equals Adam's).
            zero_grad: set each ``grad`` to None afterwards.

        Raises:
            ValueError: ``visible`` does not match a parameter's first dimension, or a
                gradient is sparse.
        """
        self.calls += 1
        vis_u8 = None
        for opt in optimizers:
            for group in opt.param_groups:
                beta1, beta2 = group["betas"]
                for p in group["params"]:
                    g = p.grad
                    if g is None:
                        continue
                    if g.is_sparse:
                        raise ValueError("selective Adam needs dense gradients")
                    if visible is not None and visible.shape[0] != p.shape[0]:
                        raise ValueError(f"visible has {visible.shape[0]} rows, the parameter "
                                         f"{tuple(p.shape)}")
                    st = opt.state[p]
                    if not st:
                        st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    for key in ("exp_avg", "exp_avg_sq"):
                        cur = st.get(key)
                        if cur is None:
                            st[key] = torch.zeros_like(p, dtype=self.moments_dtype)
                        elif cur.dtype != self.moments_dtype or not cur.is_contiguous():
                            st[key] = cur.to(self.moments_dtype).contiguous()
                    if st["step"].device != p.device:
                        st["step"] = st["step"].to(p.device, torch.float32)
                    st["step"].add_(1)
                    lr, eps = float(group["lr"]), float(group["eps"])
                    seed = (self.seed * 1_000_003 + self.calls * 7919 + p.shape[0]) % (2**31)
                    if self.use_kernel and kernel_available(p.device) and p.is_contiguous() \
                            and p.dtype == torch.float32:
                        if visible is not None and vis_u8 is None:
                            vis_u8 = visible.to(device=p.device, dtype=torch.uint8).contiguous()
                        _launch(p, g.contiguous(), st["exp_avg"], st["exp_avg_sq"], vis_u8,
                                st["step"], lr, beta1, beta2, eps, seed)
                    else:
                        masked_adam_reference(
                            p.data, g, st["exp_avg"], st["exp_avg_sq"], float(st["step"]), lr,
                            beta1, beta2, eps, visible=None if visible is None
                            else visible.to(p.device), generator=self._generator(p.device))
                    if zero_grad:
                        p.grad = None
