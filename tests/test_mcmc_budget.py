"""MCMC as the default strategy: the automatic Gaussian budget, the one-call Adam step, the
position noise (against gsplat's own op) and a short CPU run with the default config."""

from __future__ import annotations

import json

import pytest
import torch

from splatforge.config import CAP_MAX, CAP_MIN, CAP_PER_INITIAL, TrainConfig
from splatforge.raster.projection import quat_to_rotmat
from splatforge.train.mcmc_noise import inject_position_noise_, position_noise_reference
from splatforge.train.optim import fused_adam_step, supports_fused_adam_step

#: plush_dog's SfM points (sparse/0/points3D.bin) and the budget they give: 15 x 3122.
PLUSH_POINTS = 3122
PLUSH_CAP = 46_830

# --------------------------------------------------------------------------------------------
# The budget
# --------------------------------------------------------------------------------------------


def test_resolved_cap_max_is_15x_the_initial_gaussians_clamped():
    from splatforge.train import make_strategy

    cfg = TrainConfig()
    assert cfg.strategy == "mcmc" and cfg.cap_max is None
    assert (CAP_PER_INITIAL, CAP_MIN, CAP_MAX) == (15, 10_000, 1_000_000)
    assert cfg.resolved_cap_max(PLUSH_POINTS) == PLUSH_CAP
    assert cfg.resolved_cap_max(10) == 10_000            # clamped up to CAP_MIN
    assert cfg.resolved_cap_max(100_000) == 1_000_000    # clamped down to CAP_MAX
    assert cfg.resolved_cap_max(666) == 10_000 and cfg.resolved_cap_max(667) == 10_005
    # an explicit cap_max wins, whatever the initial count
    assert TrainConfig(cap_max=5000).resolved_cap_max(PLUSH_POINTS) == 5000
    assert TrainConfig(cap_max=5000).resolved_cap_max(10) == 5000
    assert TrainConfig(cap_max=2_000_000).resolved_cap_max(100_000) == 2_000_000
    strat, state = make_strategy(TrainConfig(), 1.0, PLUSH_POINTS)
    assert strat.cap_max == PLUSH_CAP and "binoms" in state
    assert strat.counts == {"relocated": 0, "added": 0, "refines": 0, "pruned_significance": 0}
    assert strat.cap_full == PLUSH_CAP and strat.state_dict()["budget"] == {"budget_scale": 1.0}
    # without num_initial: init_num_pts (100k random points by default) -> clamped to 1M
    assert make_strategy(TrainConfig(), 1.0)[0].cap_max == 1_000_000
    assert make_strategy(TrainConfig(init_num_pts=1000), 1.0)[0].cap_max == 15_000
    assert make_strategy(TrainConfig(cap_max=777), 1.0, PLUSH_POINTS)[0].cap_max == 777
    # the INRIA strategy has no budget
    default, _ = make_strategy(TrainConfig(strategy="default"), 1.0, PLUSH_POINTS)
    assert not hasattr(default, "cap_max") and "duplicated" in default.counts


def test_preview_preset_keeps_the_inria_strategy():
    from splatforge.presets import resolve_config
    from splatforge.reconstruct_config import ReconstructConfig

    cfg = resolve_config(ReconstructConfig(preset="preview", train=TrainConfig()))
    assert cfg.train.strategy == "default"
    assert cfg.train.regularization() == (0.0, 0.0)
    cfg = resolve_config(ReconstructConfig(preset="preview", train=TrainConfig(max_steps=123)))
    assert cfg.train.strategy == "default" and cfg.train.max_steps == 123
    # the default preset is the model defaults: MCMC with the automatic budget
    cfg = resolve_config(ReconstructConfig(preset="default"))
    assert cfg.train.strategy == "mcmc" and cfg.train.cap_max is None


# --------------------------------------------------------------------------------------------
# fused_adam_step
# --------------------------------------------------------------------------------------------


def _adam_setup():
    """Three fused Adams as the trainer makes them (one group each, different lrs), one with
    two parameters and one with weight decay."""
    g = torch.Generator().manual_seed(0)
    shapes = [(50, 3), (50, 4), (50,), (7, 1, 3)]
    ps = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    opts = [
        torch.optim.Adam([{"params": [ps[0]], "lr": 1.6e-4, "name": "means"}], eps=1e-15,
                         betas=(0.9, 0.999), fused=True),
        torch.optim.Adam([{"params": [ps[1], ps[2]], "lr": 5e-2, "name": "two"}], eps=1e-15,
                         betas=(0.9, 0.999), fused=True),
        torch.optim.Adam([{"params": [ps[3]], "lr": 2.5e-3, "weight_decay": 0.01}],
                         betas=(0.8, 0.99), fused=True),
    ]
    return ps, opts


def test_fused_adam_step_is_bit_identical_to_adam_step():
    ref_p, ref_o = _adam_setup()
    new_p, new_o = _adam_setup()
    assert all(supports_fused_adam_step(o) for o in new_o)
    # no gradient: the third parameter at step 0 (no state yet), the first at step 3
    skip = {(0, 2), (3, 0)}
    for step in range(5):
        g = torch.Generator().manual_seed(100 + step)
        grads = [torch.randn(p.shape, generator=g) for p in ref_p]
        for i, (a, b, gr) in enumerate(zip(ref_p, new_p, grads)):
            a.grad = None if (step, i) in skip else gr.clone()
            b.grad = None if (step, i) in skip else gr.clone()
        before = [p.detach().clone() for p in new_p]
        for o in ref_o:
            o.step()
            o.zero_grad(set_to_none=True)
        fused_adam_step(new_o)
        assert all(p.grad is None for p in new_p), step
        for i, (a, b) in enumerate(zip(ref_p, new_p)):
            assert torch.equal(a, b), (step, i, float((a - b).abs().max()))
            moved = not torch.equal(b, before[i])
            assert moved == ((step, i) not in skip), (step, i)  # skipped ones stay put
        if step == 0:
            assert new_p[2] not in new_o[1].state or not new_o[1].state[new_p[2]]
    for a, b in zip(ref_o, new_o):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        assert sa["state"].keys() == sb["state"].keys()
        for k in sa["state"]:
            assert sa["state"][k].keys() == sb["state"][k].keys() == {"step", "exp_avg",
                                                                      "exp_avg_sq"}
            for name, ta in sa["state"][k].items():
                tb = sb["state"][k][name]
                assert ta.dtype == tb.dtype and ta.device == tb.device, (k, name)
                assert torch.equal(ta, tb), (k, name)
    # the step counters count the steps each parameter had a gradient
    assert float(new_o[0].state_dict()["state"][0]["step"]) == 4
    assert float(new_o[1].state_dict()["state"][1]["step"]) == 4
    assert float(new_o[1].state_dict()["state"][0]["step"]) == 5


def test_fused_adam_step_can_keep_the_gradients_and_ignores_an_empty_step():
    ps, opts = _adam_setup()
    fused_adam_step(opts)  # no gradients at all: nothing happens
    assert all(not o.state for o in opts)
    ps[0].grad = torch.ones_like(ps[0])
    fused_adam_step(opts, zero_grad=False)
    assert ps[0].grad is not None and len(opts[0].state) == 1


def test_supports_fused_adam_step_only_for_plain_fused_adam():
    p = torch.nn.Parameter(torch.zeros(4, 3))
    assert supports_fused_adam_step(torch.optim.Adam([p], fused=True))
    assert not supports_fused_adam_step(torch.optim.Adam([p]))
    assert not supports_fused_adam_step(torch.optim.Adam([p], fused=False))
    assert not supports_fused_adam_step(torch.optim.SparseAdam([p]))
    assert not supports_fused_adam_step(torch.optim.Adam([p], fused=True, amsgrad=True))
    assert not supports_fused_adam_step(torch.optim.Adam([p], fused=True, maximize=True))
    assert not supports_fused_adam_step(torch.optim.AdamW([p], fused=True))


# --------------------------------------------------------------------------------------------
# The position noise
# --------------------------------------------------------------------------------------------


def _noise_inputs(n=2000, seed=1):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g)
    quats = 2.0 * torch.randn(n, 4, generator=g)                  # not normalised
    log_scales = -3.0 + 0.5 * torch.randn(n, 3, generator=g)
    opacity_logits = torch.empty(n).uniform_(-12.0, 2.0, generator=g)
    return means, quats, log_scales, opacity_logits


def test_position_noise_reference_equals_gsplats_inject_noise_to_position():
    from gsplat.strategy import ops

    from splatforge.raster.mcmc import install_torch_relocation

    install_torch_relocation()  # gsplat's covariance op on CPU tensors
    means, quats, log_scales, opac = _noise_inputs()
    scaler = 4.0  # -> displacements of about 1e-2 (s^2 ~ e^-6)
    gate = torch.sigmoid(100.0 * ((1.0 - torch.sigmoid(opac)) - 0.995))
    assert float(gate.min()) < 1e-6 and float(gate.max()) > 0.5  # the gate varies
    params = {"means": means.clone(), "quats": quats, "scales": log_scales,
              "opacities": opac}
    torch.manual_seed(7)
    ops.inject_noise_to_position(params, {}, {}, scaler)
    torch.manual_seed(7)
    noise = position_noise_reference(means, quats, log_scales, opac, scaler,
                                     torch.randn_like(means))
    moved = params["means"] - means
    size = float(moved.abs().max())
    assert 1e-3 < size < 1.0, size
    assert float(moved.abs().mean()) > 1e-4
    # the same update up to float32 rounding (means are O(1), the noise O(1e-2))
    torch.testing.assert_close(params["means"], means + noise, rtol=0, atol=1e-6)
    torch.testing.assert_close(noise, moved, rtol=0, atol=1e-6)
    # opaque Gaussians (gate ~ 0) stay put, transparent ones move
    opaque = gate < 1e-6
    assert float(noise[opaque].abs().max()) < 1e-5 * size
    assert float(noise[gate > 0.5].abs().mean()) > 1e-3


def test_quat_to_rotmat_gives_rotations():
    _, quats, _, _ = _noise_inputs(500)
    r = quat_to_rotmat(quats)
    assert r.shape == (500, 3, 3)
    eye = torch.eye(3).expand(500, 3, 3)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(500), rtol=0, atol=1e-5)
    # w, x, y, z: 90 degrees about z, any norm
    c = 2 ** -0.5
    q = torch.tensor([[3 * c, 0.0, 0.0, 3 * c], [5.0, 0.0, 0.0, 0.0]])
    expect = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                           [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    torch.testing.assert_close(quat_to_rotmat(q), expect, rtol=0, atol=1e-6)


def test_inject_position_noise_falls_back_to_the_reference_on_cpu():
    means, quats, log_scales, opac = _noise_inputs(300)
    eps = torch.randn(300, 3, generator=torch.Generator().manual_seed(3))
    expect = means + position_noise_reference(means, quats, log_scales, opac, 4.0, eps)
    for fused in (True, False):
        m = means.clone()
        inject_position_noise_(m, quats, log_scales, opac, 4.0, eps=eps, fused=fused)
        assert torch.equal(m, expect), fused
    # [N, 1] opacities (the trainer's layout) and eps drawn from the global generator
    m = means.clone()
    torch.manual_seed(11)
    inject_position_noise_(m, quats, log_scales, opac[:, None], 4.0)
    torch.manual_seed(11)
    again = means + position_noise_reference(means, quats, log_scales, opac, 4.0,
                                             torch.randn_like(means))
    assert torch.equal(m, again) and not torch.equal(m, means)
    empty = torch.zeros(0, 3)
    inject_position_noise_(empty, torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), 4.0)
    for bad in ({"quats": quats[:, :3]}, {"log_scales": log_scales[:-1]},
                {"opacity_logits": opac[:-1]}):
        args = {"quats": quats, "log_scales": log_scales, "opacity_logits": opac, **bad}
        with pytest.raises(ValueError, match="shapes disagree"):
            inject_position_noise_(means.clone(), scaler=4.0, **args)


# --------------------------------------------------------------------------------------------
# Training with the default config
# --------------------------------------------------------------------------------------------

#: 12 steps, refinement at steps 3, 6 and 9 (2 < k < 12, k % 3 == 0), 200 Gaussians of budget
#: above the SfM points: +5 % (156) at step 3, the last 44 at step 6, none at step 9.
BUDGET_STEPS = 12
BUDGET_EXTRA = 200
#: Gaussians made transparent (opacity ~5e-5 < min_opacity 0.005) after step 1, so the first
#: refinement has dead Gaussians to relocate.
DEAD = 50


def _budget_config(**kw) -> TrainConfig:
    base = {"max_steps": BUDGET_STEPS, "save_steps": [6, BUDGET_STEPS],
            "densify_from_iter": 2, "densification_interval": 3,
            "densify_until_iter": BUDGET_STEPS, "sh_degree": 0, "log_every": 1,
            "eval_every": 0, "device": "cpu", "seed": 1}
    base.update(kw)
    return TrainConfig(**base)


def _kill_some(trainer, step):
    if step == 1:
        with torch.no_grad():
            trainer.params["opacities"].data[:DEAD] = -10.0


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory, plush_scene, plush_scene_config):
    from splatforge.train import run_train

    n0 = len(plush_scene.points)
    assert n0 == PLUSH_POINTS
    cfg = _budget_config(cap_max=n0 + BUDGET_EXTRA)
    md = tmp_path_factory.mktemp("budget")
    events: list = []
    res = run_train(cfg, plush_scene, md, events.append, scene_config=plush_scene_config,
                    step_hook=_kill_some)
    log = [json.loads(x) for x in (md / "train_log.jsonl").read_text().splitlines()
           if x.strip()]
    return cfg, md, res, [r for r in log if r.get("kind") != "eval"], events


def test_default_config_trains_with_mcmc_and_stays_in_budget(budget_run):
    from splatforge.train import load_checkpoint

    cfg, md, res, log, events = budget_run
    assert cfg.strategy == "mcmc"  # not passed: the default
    n0, cap = PLUSH_POINTS, PLUSH_POINTS + BUDGET_EXTRA
    budget = [e for e in events if e.kind == "info" and "cap_max" in e.data]
    assert [e.data["cap_max"] for e in budget] == [cap]
    assert [r["step"] for r in log] == list(range(1, BUDGET_STEPS + 1))
    sizes = {r["step"]: r["num_gaussians"] for r in log}
    assert max(sizes.values()) <= cap
    assert sizes[2] == n0 and sizes[3] == int(1.05 * n0) and sizes[6] == cap
    assert res.num_gaussians == cap
    dens = {r["step"]: r["densification"] for r in log}
    assert set(dens[1]) == {"relocated", "added", "refines", "pruned_significance"}
    assert dens[2] == {"relocated": 0, "added": 0, "refines": 0, "pruned_significance": 0}
    assert dens[3]["refines"] == 1 and dens[3]["relocated"] >= DEAD
    assert dens[3]["added"] == int(1.05 * n0) - n0
    final = dens[BUDGET_STEPS]
    assert final["refines"] == 3  # steps 3, 6, 9
    assert final["added"] == cap - n0  # MCMC never removes: what was added is the growth
    assert final["relocated"] >= DEAD
    ck = load_checkpoint(md / "ckpts" / f"step_{BUDGET_STEPS}.pt")
    assert ck["strategy_counts"] == final and ck["num_initial"] == n0
    assert ck["strategy_budget"] == {"budget_scale": 1.0}  # nothing pruned
    assert torch.isfinite(ck["splats"]["means"]).all()
    # the transparent ones were relocated (given live Gaussians' parameters): none is left
    # below min_opacity 0.005
    assert float(torch.sigmoid(ck["splats"]["opacities"]).min()) > 0.005


def test_automatic_budget_from_the_sfm_points_fresh_and_resumed(budget_run, tmp_path,
                                                               plush_scene,
                                                               plush_scene_config):
    """cap_max None: 15 x the initial Gaussians, counted at initialisation and kept in the
    checkpoint (a resumed run with more Gaussians than it started with keeps the budget)."""
    from splatforge.train import run_train

    _, md, _, _, _ = budget_run
    seen: list = []

    def hook(trainer, step):
        seen.append((step, trainer.num_initial, trainer.strategy.cap_max,
                     len(trainer.params["means"])))

    events: list = []
    run_train(TrainConfig(max_steps=1, sh_degree=0, eval_every=0, device="cpu"), plush_scene,
              tmp_path / "fresh", events.append, scene_config=plush_scene_config,
              step_hook=hook)
    assert seen == [(1, PLUSH_POINTS, PLUSH_CAP, PLUSH_POINTS)]
    assert [e.data["cap_max"] for e in events if "cap_max" in e.data] == [PLUSH_CAP]
    seen.clear()
    # resumed at step 6 with PLUSH_POINTS + BUDGET_EXTRA Gaussians and the automatic budget
    run_train(_budget_config(max_steps=7, save_steps=[7]), plush_scene, tmp_path / "resumed",
              scene_config=plush_scene_config, resume=md / "ckpts" / "step_6.pt",
              step_hook=hook)
    assert seen == [(7, PLUSH_POINTS, PLUSH_CAP, PLUSH_POINTS + BUDGET_EXTRA)]


@pytest.mark.parametrize("after_refine", [True, False])
def test_position_noise_after_refinement_follows_noise_after_refine(after_refine):
    from splatforge.train.strategies import make_strategy

    cfg = TrainConfig(max_steps=40, densify_from_iter=2, densify_until_iter=20,
                      densification_interval=1000, noise_after_refine=after_refine,
                      device="cpu")
    strat, state = make_strategy(cfg, scene_scale=1.0, num_initial=300)
    means, quats, log_scales, opac = _noise_inputs(300)
    params = {"means": torch.nn.Parameter(means.clone()), "quats": torch.nn.Parameter(quats),
              "scales": torch.nn.Parameter(log_scales),
              "opacities": torch.nn.Parameter(opac.clone().fill_(-6.0))}  # fully gated in
    moved = {}
    for step in (5, 19, 20, 35):
        before = params["means"].detach().clone()
        strat.post_backward(params, {}, state, step, {}, lr=1e-3)
        moved[step] = not torch.equal(params["means"].detach(), before)
    # during refinement the noise always runs; after densify_until_iter only if asked
    assert moved[5] and moved[19]
    assert moved[20] is after_refine and moved[35] is after_refine
