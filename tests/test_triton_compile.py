"""Every Triton kernel of the package compiles for a Hopper GPU (sm_90, the H100/H200), on this
GPU-less machine: Triton lowers each kernel to PTX and runs its bundled ``ptxas`` to a cubin.

The interpreter tests (tests/test_triton_loss.py, tests/test_mcmc_budget.py) check what the
kernels compute; this one catches what only the compiler rejects (constructs the interpreter
accepts, type errors in the lowering, register or shared-memory limits).
"""

from __future__ import annotations

import pytest
import triton  # a test dependency (pyproject [test]); CUDA builds of torch ship it
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from splatforge.train import mcmc_noise, selective_adam, triton_loss

F32P, U8P, I32, F32 = "*fp32", "*u8", "i32", "fp32"
BF16P = "*bf16"

#: (module, kernel, {argument: type}, {constexpr: value})
KERNELS = [
    (triton_loss, "_hblur_moments",
     {"x_ptr": F32P, "y_ptr": U8P, "y_scale": F32, "g_ptr": F32P, "m_ptr": F32P, "n": I32,
      "W": I32, "C": I32}, {"WIN": 11, "BLOCK": 1024}),
    (triton_loss, "_hblur_moments",  # float target
     {"x_ptr": F32P, "y_ptr": F32P, "y_scale": F32, "g_ptr": F32P, "m_ptr": F32P, "n": I32,
      "W": I32, "C": I32}, {"WIN": 11, "BLOCK": 1024}),
    (triton_loss, "_vblur_ssim",
     {"m_ptr": F32P, "x_ptr": F32P, "y_ptr": U8P, "y_scale": F32, "g_ptr": F32P,
      "p_ptr": F32P, "part_ptr": F32P, "n": I32, "H": I32, "W": I32, "C": I32, "c1": F32,
      "c2": F32}, {"WIN": 11, "BLOCK": 1024, "NEED_GRAD": True}),
    (triton_loss, "_vblur_ssim",
     {"m_ptr": F32P, "x_ptr": F32P, "y_ptr": F32P, "y_scale": F32, "g_ptr": F32P,
      "p_ptr": F32P, "part_ptr": F32P, "n": I32, "H": I32, "W": I32, "C": I32, "c1": F32,
      "c2": F32}, {"WIN": 11, "BLOCK": 1024, "NEED_GRAD": False}),
    (triton_loss, "_hblur3",
     {"p_ptr": F32P, "g_ptr": F32P, "q_ptr": F32P, "n": I32, "W": I32, "C": I32},
     {"WIN": 11, "BLOCK": 1024}),
    (triton_loss, "_vblur_grad",
     {"q_ptr": F32P, "x_ptr": F32P, "y_ptr": U8P, "y_scale": F32, "g_ptr": F32P,
      "out_ptr": F32P, "n": I32, "H": I32, "W": I32, "C": I32, "a_ssim": F32, "a_l1": F32},
     {"WIN": 11, "BLOCK": 1024}),
    (triton_loss, "_finalize",
     {"part_ptr": F32P, "loss_ptr": F32P, "l1_ptr": F32P, "s_ptr": F32P, "nblocks": I32,
      "inv_n": F32, "lam": F32}, {"CHUNK": 1024}),
    (mcmc_noise, "_noise_kernel",
     {"means_ptr": F32P, "quats_ptr": F32P, "scales_ptr": F32P, "opac_ptr": F32P,
      "eps_ptr": F32P, "n": I32, "scaler": F32, "gate_k": F32, "gate_x0": F32},
     {"BLOCK": 256}),
]
for _mom, _mask in ((F32P, True), (BF16P, True), (F32P, False)):
    KERNELS.append(
        (selective_adam, "_masked_adam_kernel",
         {"p_ptr": F32P, "g_ptr": F32P, "m_ptr": _mom, "v_ptr": _mom, "vis_ptr": U8P,
          "step_ptr": F32P, "n": I32, "row_len": I32, "lr": F32, "beta1": F32, "beta2": F32,
          "eps": F32, "seed": I32},
         {"HAS_MASK": _mask, "BF16": _mom == BF16P, "BLOCK": 1024}))


@pytest.mark.parametrize("module, name, signature, constexprs", KERNELS,
                         ids=[f"{k[1]}-{i}" for i, k in enumerate(KERNELS)])
def test_kernel_compiles_to_a_hopper_cubin(module, name, signature, constexprs):
    fn = getattr(module, name)
    assert list(fn.arg_names) == list(signature) + list(constexprs), "signature out of date"
    full = dict(signature, **{k: "constexpr" for k in constexprs})
    src = ASTSource(fn=fn, signature=full,
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    assert len(kernel.asm["cubin"]) > 1000
    assert ".target sm_90" in kernel.asm["ptx"]
