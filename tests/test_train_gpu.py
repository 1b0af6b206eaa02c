"""GPU checks of the training loop: the fused MCMC noise kernel against its PyTorch reference,
the graphed and the Triton photometric losses against the PyTorch loss, and the held-out PSNR
of plush_dog over a 15k-step run (the regression that the INRIA clone/split strategy shows:
its held-out PSNR falls as Gaussians are added).

Run on a CUDA machine: ``pytest -o addopts="" -m gpu tests/test_train_gpu.py``
(``SPLATFORGE_DATASETS`` may point at a copy of the shared datasets)."""

from __future__ import annotations

import json

import pytest
import torch

import splatforge  # noqa: F401  (import-order guard)
from splatforge.train.mcmc_noise import inject_position_noise_, position_noise_reference

from conftest import PLUSH_DOG

pytestmark = pytest.mark.gpu

#: gsplat 1.5.3 simple_trainer.py default on plush_dog, held-out PSNR at 7k steps
#: (../shared/NOTES.md): the bar "beats the reference by a wide margin" is measured against.
REFERENCE_PSNR_7K = 19.88

#: The default config's held-out PSNR on plush_dog after 15k steps (seed 42) before issue 16:
#: 29.69 dB (this test, commit 698c7b9) and 29.05 dB (the 47k-budget run of
#: benchmarks/NOTES.md); the floor is the lower one less 0.25 dB of run-to-run noise, so a
#: default change that costs quality fails here.
TODAY_PSNR_15K_FLOOR = 29.05 - 0.25


def test_fused_position_noise_matches_the_reference_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    n = 100_003  # not a multiple of the block size
    means = torch.randn(n, 3, device="cuda", generator=g)
    quats = torch.randn(n, 4, device="cuda", generator=g)
    scales = torch.randn(n, 3, device="cuda", generator=g) * 0.5 - 3.0
    opac = torch.randn(n, 1, device="cuda", generator=g) * 4.0
    eps = torch.randn(n, 3, device="cuda", generator=g)
    scaler = 1.6e-4 * 5e5
    fused = means.clone()
    inject_position_noise_(fused, quats, scales, opac, scaler, eps=eps, fused=True)
    ref = means + position_noise_reference(means, quats, scales, opac, scaler, eps)
    moved = (ref - means).abs().max()
    assert float(moved) > 1e-4  # the test data does move some Gaussians
    assert torch.allclose(fused, ref, atol=1e-5 * float(moved), rtol=1e-5)


def test_held_out_psnr_does_not_fall_on_plush_dog(tmp_path):
    """15k steps of the default config (MCMC with its automatic budget) on plush_dog,
    evaluated every 1000 steps: the final held-out PSNR stays within 1 dB of the best one,
    beats the reference trainer's by more than 6 dB and does not fall below the default's
    before issue 16 (TODAY_PSNR_15K_FLOOR). The INRIA strategy fails the first
    check (22.4 -> 20.3 dB over the same 15k steps, benchmarks/NOTES.md), as do MCMC caps of
    100k and 300k with seed 42 (-2.1 and -2.9 dB from their peaks)."""
    from splatforge.config import SceneConfig, TrainConfig
    from splatforge.train import run_train

    cfg = TrainConfig(max_steps=15_000, eval_every=1000, save_steps=[15_000], seed=42)
    res = run_train(cfg, PLUSH_DOG, tmp_path / "model", scene_config=SceneConfig(data_factor=1))
    log = [json.loads(x) for x in res.log_path.read_text().splitlines() if x.strip()]
    curve = [(r["step"], r["psnr"]) for r in log if r.get("kind") == "eval"]
    final = res.metrics["test"]["psnr"]
    best_step, best = max(curve, key=lambda sp: sp[1])
    print("held-out PSNR curve:", [(s, round(p, 2)) for s, p in curve])
    assert len(curve) >= 15
    assert final >= best - 1.0, f"held-out PSNR fell from {best:.2f} (step {best_step}) to " \
                                f"{final:.2f}"
    assert final > REFERENCE_PSNR_7K + 6.0
    assert final >= TODAY_PSNR_15K_FLOOR, f"held-out PSNR {final:.2f} dB at 15k is below " \
                                          f"the pre-issue-16 default's {TODAY_PSNR_15K_FLOOR}"
    assert res.num_gaussians <= cfg.resolved_cap_max(3122)


def test_graphed_loss_matches_the_eager_loss_on_new_inputs():
    from splatforge.train.losses import GraphedPhotometricLoss, photometric_loss

    fn = GraphedPhotometricLoss(0.2)
    g = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(3):  # the first call captures; later calls replay with new data
        x = torch.rand(500, 750, 3, device="cuda", generator=g, requires_grad=True)
        y = torch.rand(500, 750, 3, device="cuda", generator=g)
        loss, l1, s = fn(x, y)
        (gx,) = torch.autograd.grad(loss, x)
        x2 = x.detach().clone().requires_grad_(True)
        ref, ref_l1, ref_s = photometric_loss(x2, y, 0.2, fused_ssim=True)
        (gref,) = torch.autograd.grad(ref, x2)
        assert torch.allclose(loss, ref, rtol=1e-6, atol=1e-7)
        assert torch.allclose(l1, ref_l1) and torch.allclose(s, ref_s)
        assert torch.allclose(gx, gref, rtol=1e-5, atol=1e-9)
    assert len(fn._graphs) == 1


@pytest.mark.parametrize("shape", [(500, 750, 3), (2, 333, 501, 3)])
def test_triton_loss_matches_the_pytorch_loss_on_cuda(shape):
    from splatforge.train.losses import photometric_loss
    from splatforge.train.triton_loss import fused_photometric_loss, triton_loss_available

    assert triton_loss_available(torch.device("cuda"))
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.rand(shape, device="cuda", generator=g, requires_grad=True)
    y8 = torch.randint(0, 256, shape, device="cuda", generator=g, dtype=torch.uint8)
    ref = photometric_loss(x, y8.float() / 255, 0.2, fused_ssim=False)
    (gref,) = torch.autograd.grad(ref[0], x)
    for target in (y8, y8.float() / 255):
        out = fused_photometric_loss(x, target, 0.2)
        (gx,) = torch.autograd.grad(out[0], x)
        for a, b in zip(out, ref):
            assert abs(float(a) - float(b)) < 2e-6, (float(a), float(b))
        assert float((gx - gref).abs().max()) < 1e-5 * float(gref.abs().max())


def test_trainer_uses_the_triton_loss_when_asked_on_cuda(tmp_path):
    from splatforge.config import SceneConfig, TrainConfig
    from splatforge.train.trainer import Trainer

    cfg = TrainConfig(max_steps=50, eval_every=0, save_steps=[50], triton_loss=True)
    tr = Trainer(cfg, PLUSH_DOG, tmp_path / "m", scene_config=SceneConfig(data_factor=1))
    res = tr.run()
    assert tr.triton_loss and tr.loss_fn is None
    assert res.metrics["test"]["psnr"] > 12.0  # it trains (50 steps from the SfM points)


@pytest.mark.parametrize("moments", [torch.float32, torch.bfloat16])
def test_selective_adam_kernel_matches_the_reference_on_cuda(moments):
    from splatforge.train.selective_adam import SelectiveAdamStepper

    g = torch.Generator(device="cuda").manual_seed(0)
    n = 100_003
    p = torch.nn.Parameter(torch.randn(n, 15, 3, device="cuda", generator=g))
    ref = torch.nn.Parameter(p.detach().clone())
    vis = torch.rand(n, device="cuda", generator=g) < 0.5
    opt, opt_ref = (torch.optim.Adam([x], lr=1e-3, eps=1e-15) for x in (p, ref))
    fast, slow = SelectiveAdamStepper(moments), SelectiveAdamStepper(moments, use_kernel=False)
    start = p.detach().clone()
    for _ in range(3):
        grad = torch.randn(n, 15, 3, device="cuda", generator=g) * 1e-2
        p.grad, ref.grad = grad.clone(), grad.clone()
        fast([opt], vis)
        slow([opt_ref], vis)
    assert torch.equal(p.detach()[~vis], start[~vis])
    tol = 1e-6 if moments == torch.float32 else 1e-4
    torch.testing.assert_close(p.detach(), ref.detach(), rtol=tol, atol=tol)
    assert opt.state[p]["exp_avg"].dtype == moments
