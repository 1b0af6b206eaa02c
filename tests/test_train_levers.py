"""Issue 16's opt-in training levers on CPU, on plush_dog at data_factor 8: visible-only
(selective) Adam, bfloat16 Adam moments, the resolution schedule and significance pruning.

The Triton kernel of the selective Adam runs here under Triton's interpreter
(``TRITON_INTERPRET=1``, set before Triton is imported, hence the subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import splatforge  # noqa: F401  (import-order guard)
from splatforge.train.res_schedule import ResolutionSchedule, downscale_view
from splatforge.train.selective_adam import (
    SelectiveAdamStepper,
    masked_adam_reference,
    visible_gaussians,
)

REPO = Path(__file__).resolve().parents[1]


def _real_step(scene, view: int, sh: int = 0):
    """Initial splats of ``scene``, one render of training view ``view`` and the gradients of
    its photometric loss: ``(params, info)``, gradients in ``params[k].grad``."""
    from splatforge.splats import init_splats
    from splatforge.train import photometric_loss, render_view
    from splatforge.train.data import ImageCache

    init = init_splats(scene, 1, seed=0)
    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.params.items()}
    img = ImageCache(scene, [view], 0, torch.device("cpu")).get(view).float() / 255
    render, _, info = render_view(params, scene, view, sh, "torch")
    loss, _, _ = photometric_loss(render[0], img, 0.2)
    loss.backward()
    return params, info


def test_selective_adam_leaves_unseen_gaussians_alone_and_matches_adam_on_seen(plush_scene):
    view = plush_scene.train_indices[0]
    params, info = _real_step(plush_scene, view)
    n = len(params["means"])
    vis = visible_gaussians(info, n)
    assert 0 < int(vis.sum()) < n, "the view should see some Gaussians and miss others"
    # unseen Gaussians got no photometric gradient
    assert float(params["sh0"].grad[~vis].abs().max()) == 0.0
    ref = {k: torch.nn.Parameter(p.detach().clone()) for k, p in params.items()}
    for k in ref:
        ref[k].grad = params[k].grad.clone()
    opts = {k: torch.optim.Adam([p], lr=1e-2, eps=1e-15, foreach=False) for k, p in params.items()}
    ref_opts = {k: torch.optim.Adam([p], lr=1e-2, eps=1e-15, foreach=False)
                for k, p in ref.items()}
    stepper = SelectiveAdamStepper(use_kernel=False)
    # two steps: the second with moments that are no longer zero, and other gradients
    for it in range(2):
        before = {k: (p.detach().clone(), {kk: vv.clone() for kk, vv in opts[k].state[p].items()})
                  for k, p in params.items()}
        if it == 1:
            g = torch.Generator().manual_seed(1)
            for k, p in params.items():
                gg = torch.randn(p.shape, generator=g) * 1e-3
                gg[~vis] = 0.0
                p.grad, ref[k].grad = gg.clone(), gg.clone()
        stepper(opts.values(), vis)
        for o in ref_opts.values():
            o.step()
            o.zero_grad(set_to_none=True)
        for k, p in params.items():
            st = opts[k].state[p]
            old_p, old_st = before[k]
            assert torch.equal(p.detach()[~vis], old_p[~vis])  # bit-identical
            if old_st:
                assert torch.equal(st["exp_avg"][~vis], old_st["exp_avg"][~vis])
                assert torch.equal(st["exp_avg_sq"][~vis], old_st["exp_avg_sq"][~vis])
            else:
                assert float(st["exp_avg"][~vis].abs().max()) == 0.0
            rst = ref_opts[k].state[ref[k]]
            torch.testing.assert_close(p.detach()[vis], ref[k].detach()[vis], rtol=1e-6,
                                       atol=1e-7)
            torch.testing.assert_close(st["exp_avg"][vis], rst["exp_avg"][vis])
            torch.testing.assert_close(st["exp_avg_sq"][vis], rst["exp_avg_sq"][vis])
            assert float(st["step"]) == float(rst["step"]) == it + 1
    # plain Adam decays the moments of unseen Gaussians: the difference is real
    k = "sh0"
    assert not torch.equal(ref_opts[k].state[ref[k]]["exp_avg"][~vis],
                           opts[k].state[params[k]]["exp_avg"][~vis]) or \
        float(opts[k].state[params[k]]["exp_avg"][~vis].abs().max()) == 0.0


def test_visible_gaussians_reads_dense_and_packed_radii():
    dense = {"radii": torch.tensor([[[0, 0], [2, 3], [0, 1]], [[0, 0], [0, 0], [4, 4]]])}
    assert visible_gaussians(dense, 3).tolist() == [False, True, True]
    packed = {"radii": torch.tensor([[2, 2], [0, 0], [1, 1]]),
              "gaussian_ids": torch.tensor([4, 1, 0])}
    assert visible_gaussians(packed, 5).tolist() == [True, False, False, False, True]


def test_bfloat16_moments_track_float32_adam():
    """Real-sized Adam runs with float32 and bfloat16 moments on the same gradients stay
    close; and after a gradient burst the second moment decays as 0.999^t (round-to-nearest
    bfloat16 could not decay it at all: 0.999 v rounds back to v)."""
    g = torch.Generator().manual_seed(0)
    n, steps = 4096, 200
    target = torch.randn(n, 3, generator=g)
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        p = torch.nn.Parameter(torch.zeros(n, 3))
        opt = torch.optim.Adam([p], lr=1e-2, eps=1e-15)
        stepper = SelectiveAdamStepper(dt, use_kernel=False, seed=3)
        for _ in range(steps):
            p.grad = (p.detach() - target) * 2.0        # gradient of ||p - target||^2
            stepper([opt])
        out[dt] = (p.detach().clone(), opt.state[p]["exp_avg_sq"].dtype)
    p32, p16 = out[torch.float32][0], out[torch.bfloat16][0]
    assert out[torch.bfloat16][1] == torch.bfloat16
    travel = float((p32 - 0).abs().mean())
    assert float((p16 - p32).abs().mean()) < 0.02 * travel
    # decay of v after a burst: unbiased with stochastic rounding
    m = torch.zeros(100_000, dtype=torch.bfloat16)
    v = torch.zeros(100_000, dtype=torch.bfloat16)
    p = torch.zeros(100_000)
    gen = torch.Generator().manual_seed(5)
    masked_adam_reference(p, torch.ones(100_000), m, v, 1, 1e-3, 0.9, 0.999, 1e-15,
                          generator=gen)
    for t in range(2, 502):
        masked_adam_reference(p, torch.zeros(100_000), m, v, t, 1e-3, 0.9, 0.999, 1e-15,
                              generator=gen)
    expect = 1e-3 * 0.999 ** 500
    assert abs(float(v.float().mean()) / expect - 1.0) < 0.01


_KERNEL_SCRIPT = r"""
import json, torch
from splatforge.train.selective_adam import (_launch, kernel_available,
                                             masked_adam_reference)
assert kernel_available(torch.device("cpu"))
g = torch.Generator().manual_seed(0)
rows = []
for shape, dt in (((1001, 3), torch.float32), ((257, 15, 3), torch.float32),
                  ((1001,), torch.float32), ((1001, 3), torch.bfloat16)):
    p = torch.randn(shape, generator=g)
    grad = torch.randn(shape, generator=g) * 1e-2
    m = (torch.randn(shape, generator=g) * 1e-3).to(dt)
    v = (torch.rand(shape, generator=g) * 1e-4).to(dt)
    vis = torch.rand(shape[0], generator=g) < 0.6
    step = torch.tensor(3.0)
    ref = [t.clone() for t in (p, m, v)]
    masked_adam_reference(*ref[:1], grad, *ref[1:], 3.0, 1e-2, 0.9, 0.999, 1e-15, visible=vis)
    out = [t.clone() for t in (p, m, v)]
    _launch(out[0], grad, out[1], out[2], vis.to(torch.uint8), step, 1e-2, 0.9, 0.999, 1e-15, 7)
    inv = ~vis
    rows.append({
        "dtype": str(dt),
        "p_err": float((out[0] - ref[0]).abs().max()),
        "p_moved": float((out[0] - p).abs().max()),
        "m_err": float((out[1].float() - ref[1].float()).abs().max() / ref[1].float().abs().max()),
        "v_err": float((out[2].float() - ref[2].float()).abs().max() / ref[2].float().abs().max()),
        "unseen_same": bool(torch.equal(out[0][inv], p[inv]) and torch.equal(out[1][inv], m[inv])
                            and torch.equal(out[2][inv], v[inv]))})
print(json.dumps(rows))
"""


def test_selective_adam_kernel_matches_the_reference_under_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run([sys.executable, "-c", _KERNEL_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(rows) == 4
    for r in rows:
        assert r["unseen_same"], r
        assert r["p_moved"] > 1e-3, r
        if r["dtype"] == "torch.float32":
            assert r["p_err"] < 1e-6 and r["m_err"] < 1e-6 and r["v_err"] < 1e-6, r
        else:  # stochastic rounding: within one bfloat16 ulp (2^-7 relative) of float32
            assert r["p_err"] < 1e-6 and r["m_err"] < 2 ** -7 and r["v_err"] < 2 ** -7, r


def test_resolution_schedule_levels():
    s = ResolutionSchedule(4.0, 4, 100)
    factors = [s.factor(k) for k in range(1, 121)]
    assert factors[0] == 4.0 and factors[99] == 1.0 and factors[-1] == 1.0
    assert factors[98] > 1.0                        # full resolution starts at until_step
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    assert sorted(set(factors), reverse=True) == pytest.approx([4.0, 4 ** (2 / 3),
                                                                4 ** (1 / 3), 1.0])
    assert s.budget_fraction(1) == 0.25
    assert ResolutionSchedule(4.0, 1, 100).factor(1) == 1.0
    with pytest.raises(ValueError):
        ResolutionSchedule(0.5, 4, 100)


def test_downscale_view_scales_image_and_intrinsics():
    img = torch.arange(62 * 94 * 3, dtype=torch.int64).remainder(256).to(torch.uint8)
    img = img.reshape(62, 94, 3)
    K = torch.tensor([[[80.0, 0.0, 47.0], [0.0, 81.0, 31.0], [0.0, 0.0, 1.0]]])
    small, k2, w, h = downscale_view(img, K, 2.0)
    assert (w, h) == (47, 31) and small.shape == (31, 47, 3) and small.dtype == torch.uint8
    assert float(small[0, 0, 0]) == pytest.approx(float(img[:2, :2, 0].float().mean()), abs=0.51)
    assert k2[0, 0, 0] == pytest.approx(40.0) and k2[0, 1, 1] == pytest.approx(40.5)
    assert k2[0, 0, 2] == pytest.approx(23.5) and k2[0, 2, 2] == 1.0
    assert K[0, 0, 0] == 80.0  # the input is untouched
    same, k3, w3, h3 = downscale_view(img, K, 1.0)
    assert same is img and k3 is K and (w3, h3) == (94, 62)


def test_trainer_follows_the_resolution_schedule_and_learns(plush_scene, plush_scene_config,
                                                             tmp_path):
    """32 MCMC steps with the schedule (4 levels from 4x down, full size from step 16): the
    rendered size and the Gaussian budget follow it step by step, and the held-out PSNR at
    full resolution rises over the model's after its first step."""
    from splatforge.config import TrainConfig
    from splatforge.splats import init_splats
    from splatforge.train import evaluate_splats, run_train

    cfg = TrainConfig(max_steps=32, res_schedule=True, res_schedule_until=0.5, log_every=8,
                      densify_from_iter=2, densification_interval=3, seed=0, device="cpu",
                      sh_degree=1, sh_degree_interval=1000)
    sched = ResolutionSchedule(4.0, 4, 16)
    seen = []
    first = {}

    def hook(trainer, step):
        seen.append((step, trainer.render_size, trainer.strategy.cap_max,
                     len(trainer.params["means"])))
        if step == 1:
            params = {k: v.detach() for k, v in trainer.params.items()}
            first.update(evaluate_splats(params, plush_scene, plush_scene.test_indices, 0,
                                         "torch"))

    init = init_splats(plush_scene, 1, seed=0)
    res = run_train(cfg, plush_scene, tmp_path / "m", scene_config=plush_scene_config,
                    step_hook=hook)
    w, h = plush_scene.images[plush_scene.train_indices[0]].width, \
        plush_scene.images[plush_scene.train_indices[0]].height
    cap = cfg.resolved_cap_max(len(init.params["means"]))
    for step, size, cap_now, n in seen:
        f = sched.factor(step)
        assert size == (max(1, round(w / f)), max(1, round(h / f))), (step, size, f)
        assert cap_now == max(1, round(cap / f)) and n <= cap_now
    assert {s for _, s, _, _ in seen} >= {(w, h), (round(w / 4), round(h / 4))}
    assert len(seen) == 32 and seen[-1][3] > seen[0][3]   # it grew under the budget
    assert res.metrics["test"]["psnr"] > first["psnr"] + 0.1


def test_significance_is_the_blend_weight_sum(plush_scene):
    """Per view, the blend weights of all Gaussians at a pixel add up to its alpha, so the
    scores of one view sum to the render's total alpha; a Gaussian behind every camera
    scores 0."""
    from splatforge.splats import init_splats
    from splatforge.train import render_view
    from splatforge.train.significance import blend_weight_significance

    init = init_splats(plush_scene, 0, seed=0)
    params = dict(init.params)
    view = plush_scene.train_indices[3]
    score = blend_weight_significance(params, plush_scene, [view], "torch")
    with torch.no_grad():
        _, alphas, _ = render_view(params, plush_scene, view, 0, "torch")
    assert float(score.sum()) == pytest.approx(float(alphas.sum()), rel=1e-4)
    assert float(score.min()) >= 0.0 and int((score > 0).sum()) > 100
    two = blend_weight_significance(params, plush_scene, plush_scene.train_indices[3:5], "torch")
    one_b = blend_weight_significance(params, plush_scene, plush_scene.train_indices[4:5],
                                      "torch")
    torch.testing.assert_close(two, score + one_b)


def test_trainer_prunes_the_least_significant_gaussians(plush_scene, plush_scene_config,
                                                       tmp_path):
    from splatforge.config import TrainConfig
    from splatforge.train import run_train

    cfg = TrainConfig(max_steps=12, prune_significance=0.3, prune_significance_steps=[10],
                      densify_from_iter=1000, log_every=10, seed=0, device="cpu", sh_degree=0)
    seen = {}

    def hook(trainer, step):
        if step == 1:  # record what the strategy's pruning sees
            score_fn = trainer.strategy.score_fn

            def recording(params):
                s = score_fn(params)
                seen["score"] = s
                seen["sh0"] = params["sh0"].detach().clone()
                return s

            trainer.strategy.score_fn = recording
        seen[step] = (len(trainer.params["means"]), trainer.strategy.cap_full,
                      trainer.strategy.cap_max)
        if step == 10:
            seen["sh0_after"] = trainer.params["sh0"].detach().clone()

    res = run_train(cfg, plush_scene, tmp_path / "m", scene_config=plush_scene_config,
                    step_hook=hook)
    n0, cap0, _ = seen[9]
    n1, cap1, capmax1 = seen[10]
    assert n1 == n0 - int(n0 * 0.3)
    assert cap1 == round(cap0 * n1 / n0) and capmax1 == cap1
    assert seen[12][0] == n1 and res.num_gaussians == n1
    log = [json.loads(x) for x in res.log_path.read_text().splitlines()]
    assert [r["densification"] for r in log if "densification" in r][-1][
        "pruned_significance"] == n0 - n1
    assert res.metrics["test"]["psnr"] > 10.0
    # the survivors are exactly the n1 most significant, in their order
    score = seen["score"]
    assert len(score) == n0
    keep = torch.sort(torch.argsort(score)[n0 - n1:]).values
    assert torch.equal(seen["sh0_after"], seen["sh0"][keep])
    # and blend_weight_significance is what scored them
    assert float(score.sum()) > 0


def test_bench_script_runs_the_new_levers_on_cpu(tmp_path):
    """benchmarks/train_gpu.py --cpu-smoke on plush_dog at data_factor 8 with the new
    options, as the GPU command runs it."""
    from conftest import PLUSH_DOG

    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_gpu.py"), "--cpu-smoke",
           "--scene", str(PLUSH_DOG), "--data-factor", "8", "--steps", "6",
           "--set", "device=cpu,densify_from_iter=1,densification_interval=2,log_every=2,sh_degree=0",
           "--variant", "levers:selective_adam=true,res_schedule=true,prune_significance=0.2,"
           "prune_significance_steps=[4],adam_moments_dtype=bfloat16",
           "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["splatforge_path"].startswith(str(REPO / "src"))
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"splatforge", "levers"}
    assert rows["levers"]["overrides"]["selective_adam"] is True
    assert rows["levers"]["densification"]["pruned_significance"] > 0
    assert rows["splatforge"]["densification"]["pruned_significance"] == 0
