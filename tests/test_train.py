"""The trainer on CPU, on real data (plush_dog at data_factor 8, frames_colmap).

The expensive run (a few hundred steps with densification) happens once per session in
``conftest.trained_plush``; the other runs here are a few dozen steps each.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DATASETS, PLUSH_DOG, SESSION_SAVE_STEPS, SESSION_STEPS

from splatforge.config import SceneConfig, TrainConfig, parse_config
from splatforge.errors import ConfigError, InputError
from splatforge.export.ply import inria_ply_properties, write_ply
from splatforge.metrics import gaussian_window, psnr, ssim
from splatforge.splats import (
    SH_C0,
    init_splats,
    knn_mean_sq_dist,
    rgb_to_sh,
    sh_to_rgb,
)
from splatforge.train import (
    ImageCache,
    TrainingInterrupted,
    ViewSampler,
    evaluate_splats,
    expon_lr,
    find_latest_checkpoint,
    load_checkpoint,
    run_train,
    sh_degree_at,
)

# --------------------------------------------------------------------------------------------
# Pure parts: config, schedules, metrics, init, PLY, data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, field, expect", [
    ({"max_steps": 0}, "max_steps", "allowed: 1 <= value <= 10000000"),
    ({"sh_degree": 4}, "sh_degree", "allowed: 0 <= value <= 3"),
    ({"strategy": "foo"}, "strategy", "'default' or 'mcmc'"),
    ({"backend": "cuda"}, "backend", "'auto', 'gsplat' or 'torch'"),
    ({"device": "gpu0"}, "device", "auto|cpu|mps|cuda"),
    ({"densification_interval": 0}, "densification_interval", "allowed: 1 <="),
    ({"ssim_lambda": 1.5}, "ssim_lambda", "allowed: 0.0 <= value <= 1.0"),
    ({"max_steps": 100, "save_steps": [50, 200]}, "save_steps", "beyond max_steps (100)"),
    ({"iterations": 100, "save_iterations": [101]}, "save_steps", "beyond max_steps (100)"),
    ({"sparse_grad": True}, "sparse_grad", "packed"),
    ({"steps": 5}, "steps", "Extra inputs are not permitted"),
])
def test_bad_train_config_fails_clearly(data, field, expect):
    with pytest.raises(ConfigError) as e:
        parse_config(TrainConfig, data)
    msg = str(e.value)
    assert field in msg and expect in msg, msg


def test_config_aliases_defaults_and_notes():
    cfg = parse_config(TrainConfig, json.loads('{"iterations": 500, "save_iterations": [100]}'))
    assert cfg.max_steps == 500 and cfg.save_steps == [100]
    assert cfg.resolved_save_steps() == [100, 500]  # the last step is always saved (INRIA)
    assert TrainConfig().resolved_save_steps() == [7000, 30000]
    assert TrainConfig(max_steps=300).resolved_save_steps() == [300]  # 7000 dropped
    assert parse_config(TrainConfig, {"max_steps": 7}).max_steps == 7
    # INRIA names from job JSON
    inria = parse_config(TrainConfig, {"position_lr_init": 1e-4, "lambda_dssim": 0.3,
                                       "opacity_lr": 0.025})
    assert (inria.means_lr, inria.ssim_lambda, inria.opacities_lr) == (1e-4, 0.3, 0.025)
    # round trip through JSON under the canonical names
    again = parse_config(TrainConfig, json.loads(cfg.model_dump_json()))
    assert again == cfg
    # resolved defaults
    assert TrainConfig().grow_grad2d() == 2e-4
    assert TrainConfig(absgrad=True).grow_grad2d() == 8e-4
    assert TrainConfig().strategy == "mcmc" and TrainConfig().cap_max is None
    assert TrainConfig(strategy="mcmc").regularization() == (0.01, 0.01)
    assert TrainConfig().regularization() == (0.01, 0.01)  # the default is mcmc
    assert TrainConfig(strategy="default").regularization() == (0.0, 0.0)
    # cross-field oddities are notes, not errors
    odd = TrainConfig(max_steps=1000)
    assert any("densify_until_iter" in n for n in odd.notes())
    # data_factor has one definition: SceneConfig's
    assert "data_factor" not in TrainConfig.model_fields
    assert "data_factor" in SceneConfig.model_fields


def test_lr_and_sh_schedules():
    lr0, lr1, n = 1.6e-4, 1.6e-6, 30_000
    assert expon_lr(0, lr0, lr1, n) == pytest.approx(lr0)
    assert expon_lr(n, lr0, lr1, n) == pytest.approx(lr1)
    assert expon_lr(n // 2, lr0, lr1, n) == pytest.approx(math.sqrt(lr0 * lr1))
    assert expon_lr(2 * n, lr0, lr1, n) == pytest.approx(lr1)
    assert [sh_degree_at(k, 3) for k in (1, 999, 1000, 2500, 3000, 9000)] == [0, 0, 1, 2, 3, 3]


def test_ssim_matches_inria_2d_window_and_psnr():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 33, 41, 3, generator=g)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    # INRIA utils/loss_utils.py: 2D Gaussian window conv, zero padding window // 2
    w1 = gaussian_window(11, 1.5, torch.float64)
    w = (w1[:, None] @ w1[None, :]).expand(3, 1, 11, 11).contiguous()
    x, y = a.double().permute(0, 3, 1, 2), b.double().permute(0, 3, 1, 2)

    def f(t):
        return torch.nn.functional.conv2d(t, w, padding=5, groups=3)

    mu1, mu2 = f(x), f(y)
    s1, s2, s12 = f(x * x) - mu1 ** 2, f(y * y) - mu2 ** 2, f(x * y) - mu1 * mu2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ref = (((2 * mu1 * mu2 + c1) * (2 * s12 + c2))
           / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))).mean()
    assert float(ssim(a, b)) == pytest.approx(float(ref), abs=1e-5)
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(a, b, padding="valid")) < 1.0
    assert ssim(a, b, reduction="none").shape == (2,)
    mse = float(((a - b) ** 2).mean(dim=(1, 2, 3))[0])
    assert float(psnr(a[0], b[0])) == pytest.approx(-10 * math.log10(mse), rel=1e-5)


def test_init_from_sfm_points_follows_inria(plush_scene):
    init = init_splats(plush_scene, sh_degree=3)
    p = init.params
    n = len(plush_scene.points)
    assert init.method == "sfm" and p["means"].shape == (n, 3)
    assert p["shN"].shape == (n, 15, 3) and p["sh0"].shape == (n, 1, 3)
    assert torch.allclose(p["quats"], torch.tensor([1.0, 0, 0, 0]).expand(n, 4))
    assert torch.allclose(torch.sigmoid(p["opacities"]), torch.full((n,), 0.1))
    rgb = plush_scene.points_rgb.astype(np.float32) / 255
    assert np.allclose(p["sh0"][:, 0].numpy(), (rgb - 0.5) / SH_C0, atol=1e-6)
    assert np.allclose(sh_to_rgb(rgb_to_sh(rgb)), rgb, atol=1e-6)
    # scale = sqrt(mean squared distance to the 3 nearest neighbours), brute force check
    pts = torch.from_numpy(plush_scene.points[:200].astype(np.float64))
    d2 = torch.cdist(pts, torch.from_numpy(plush_scene.points.astype(np.float64))) ** 2
    nn3 = d2.sort(dim=1).values[:, 1:4].mean(1).clamp_min(1e-7)
    assert torch.allclose(p["scales"][:200, 0].double(), 0.5 * torch.log(nn3), atol=1e-5)
    assert np.allclose(knn_mean_sq_dist(plush_scene.points[:200].astype(np.float64), 3),
                       (torch.cdist(pts, pts) ** 2).sort(dim=1).values[:, 1:4].mean(1).numpy())


def test_frames_colmap_initialises_randomly(tmp_path):
    from splatforge.scene import load_scene

    scene = load_scene(DATASETS / "frames_colmap" / "dense", SceneConfig(cache_dir=tmp_path))
    assert 0 < len(scene.points) < SceneConfig().min_points  # 74 points
    init = init_splats(scene, 1, num_random=500, init_extent=3.0, seed=3)
    assert init.method == "random" and len(init.params["means"]) == 500
    half = 3.0 * scene.extent()
    center = scene.camera_centers().mean(0)
    m = init.params["means"].numpy()
    assert np.all(np.abs(m - center) <= half + 1e-5)
    assert np.abs(m - center).max() > 0.8 * half  # fills the cube, not the SfM points
    again = init_splats(scene, 1, num_random=500, init_extent=3.0, seed=3)
    assert torch.equal(init.params["means"], again.params["means"])  # seeded
    # a threshold of 0 (SceneConfig.min_points) uses the 74 points instead
    assert init_splats(scene, 1, min_points=0).method == "sfm"


def test_ply_writer_layout(tmp_path):
    from plyfile import PlyData

    n, k = 5, 8
    g = torch.Generator().manual_seed(1)
    sp = {"means": torch.rand(n, 3, generator=g).numpy(),
          "scales": torch.rand(n, 3, generator=g).numpy(),
          "quats": torch.rand(n, 4, generator=g).numpy(),
          "opacities": torch.rand(n, generator=g).numpy(),
          "sh0": torch.rand(n, 1, 3, generator=g).numpy(),
          "shN": torch.rand(n, k, 3, generator=g).numpy()}
    path = write_ply(tmp_path / "a" / "point_cloud.ply", sp)
    v = PlyData.read(str(path))["vertex"]
    assert [p.name for p in v.properties] == inria_ply_properties(k)
    assert all(p.val_dtype in ("f4", "float32", "float") for p in v.properties)
    assert np.allclose(v["f_rest_0"], sp["shN"][:, 0, 0])       # R coefficient 1
    assert np.allclose(v[f"f_rest_{k}"], sp["shN"][:, 0, 1])    # G coefficient 1
    assert np.allclose(v[f"f_rest_{2 * k + 1}"], sp["shN"][:, 1, 2])
    assert np.allclose(v["rot_0"], sp["quats"][:, 0]) and np.allclose(v["opacity"], sp["opacities"])
    assert list(tmp_path.joinpath("a").iterdir()) == [path]  # no temp files left


def test_view_sampler_is_seeded_and_resumable():
    idx = [1, 2, 3, 5, 8, 13, 21]
    a = ViewSampler(idx, seed=7)
    seq = [a.next() for _ in range(17)]
    assert sorted(seq[:7]) == idx and sorted(seq[7:14]) == idx  # one permutation per epoch
    b = ViewSampler(idx, seed=7)
    for _ in range(10):
        b.next()
    state = b.state_dict()
    c = ViewSampler(idx, seed=999)
    c.load_state_dict(state)
    assert [c.next() for _ in range(7)] == seq[10:17]
    assert [ViewSampler(idx, 8).next() for _ in range(7)] != seq[:7]
    with pytest.raises(ValueError):
        ViewSampler([1, 2], 0).load_state_dict(state)


def test_image_cache_respects_its_byte_budget(plush_scene):
    idx = plush_scene.train_indices[:6]
    one = ImageCache(plush_scene, idx, 0, torch.device("cpu")).nbytes(idx[0])
    cache = ImageCache(plush_scene, idx, budget_bytes=2 * one, device=torch.device("cpu"))
    first = [cache.get(i).clone() for i in idx]
    assert cache.host_bytes <= 2 * one and cache.decodes == 6
    cache.get(idx[-1])
    assert cache.decodes == 6  # most recent ones are cached
    cache.get(idx[0])
    assert cache.decodes == 7  # evicted, decoded again
    cache.prefetch(idx[1])
    assert torch.equal(cache.get(idx[1]), first[1]) and first[0].dtype == torch.uint8
    cache.close()
    big = ImageCache(plush_scene, idx, budget_bytes=10 * one, device=torch.device("cpu"))
    for _ in range(2):
        for i in idx:
            big.get(i)
    assert big.decodes == 6


def test_default_strategy_resets_opacity_inside_the_refine_window(plush_scene):
    """gsplat 1.5.3's DefaultStrategy never resets opacities (``== 0 & step > 0`` is always
    False); ours does, as INRIA, every opacity_reset_interval steps before
    densify_until_iter."""
    from splatforge.train import make_strategy
    from splatforge.train.evaluate import render_view

    cfg = TrainConfig(strategy="default", opacity_reset_interval=10, densify_from_iter=1000,
                      densify_until_iter=50, sh_degree=0)

    def one_step(step):
        p = {k: torch.nn.Parameter(v) for k, v in init_splats(plush_scene, 0).params.items()}
        opts = {k: torch.optim.Adam([{"params": [v], "lr": 1e-3, "name": k}], eps=1e-15)
                for k, v in p.items()}
        strat, state = make_strategy(cfg, plush_scene.extent())
        _, _, info = render_view(p, plush_scene, plush_scene.train_indices[0], 0, "torch")
        strat.pre_backward(p, opts, state, step, info)
        info["means2d"].sum().backward()  # any loss: only the 2D-mean gradient is read
        strat.post_backward(p, opts, state, step, info, lr=1e-3)
        return torch.sigmoid(p["opacities"].detach()), strat.counts

    opa, counts = one_step(10)
    assert counts["opacity_resets"] == 1 and float(opa.max()) <= 0.01 + 1e-6
    opa, counts = one_step(60)  # after densify_until_iter: no reset
    assert counts["opacity_resets"] == 0 and torch.allclose(opa, torch.full_like(opa, 0.1))


# --------------------------------------------------------------------------------------------
# The session run: quality, densification, outputs, progress
# --------------------------------------------------------------------------------------------


def test_training_raises_training_view_psnr(trained_plush):
    run = trained_plush
    from splatforge.splats import PARAM_NAMES  # noqa: F401

    ckpt = load_checkpoint(run.model_dir / "ckpts" / f"step_{SESSION_STEPS}.pt")
    after = evaluate_splats(ckpt["splats"], run.scene, run.eval_indices,
                            sh_degree_at(SESSION_STEPS, 1, 100), "torch")
    gain = after["psnr"] - run.initial_train_psnr
    print(f"training-view PSNR {run.initial_train_psnr:.2f} -> {after['psnr']:.2f} dB")
    # measured: 17.3 -> 22.9 dB (+5.6) after 300 steps
    assert gain > 3.0, (run.initial_train_psnr, after["psnr"])
    log = [r for r in run.log() if r.get("kind") != "eval"]
    assert log[-1]["loss"] < log[0]["loss"]


def test_densification_grows_and_prunes(trained_plush):
    log = [r for r in trained_plush.log() if r.get("kind") != "eval"]
    n0 = len(trained_plush.scene.points)
    counts = log[-1]["densification"]
    assert counts["duplicated"] + counts["split"] > 0, counts
    assert counts["pruned"] > 0, counts  # measured: 14 below opacity 0.005
    assert counts["refines"] == 3  # steps 100, 150, 200: 50 < k < 250, k % 50 == 0
    assert counts["opacity_resets"] == 0
    by_step = {r["step"]: r["num_gaussians"] for r in log}
    assert by_step[90] == n0  # the first refinement is at step 100 (k > 50, k % 50 == 0)
    assert by_step[100] > n0
    assert by_step[100] < by_step[150] < by_step[200]
    # refinement stops at densify_until_iter: the count is frozen after step 200
    assert len({by_step[k] for k in by_step if k >= 200}) == 1
    assert trained_plush.result.num_gaussians == by_step[SESSION_STEPS]


def test_outputs_at_exactly_the_save_steps_in_the_source_frame(trained_plush):
    from plyfile import PlyData

    from splatforge.scene import read_model

    run = trained_plush
    md = run.model_dir
    dirs = sorted(p.name for p in (md / "point_cloud").iterdir())
    assert dirs == sorted(f"iteration_{s}" for s in SESSION_SAVE_STEPS)
    assert sorted(p.name for p in (md / "ckpts").iterdir()) == sorted(
        f"step_{s}.pt" for s in SESSION_SAVE_STEPS)
    assert set(run.result.ply_paths) == set(SESSION_SAVE_STEPS)
    s = SESSION_SAVE_STEPS[0]
    v = PlyData.read(str(md / "point_cloud" / f"iteration_{s}" / "point_cloud.ply"))["vertex"]
    assert [p.name for p in v.properties] == inria_ply_properties(3)  # sh_degree 1
    ckpt = load_checkpoint(md / "ckpts" / f"step_{s}.pt")
    sp = ckpt["splats"]
    assert len(v) == len(sp["means"])
    # positions in the original COLMAP frame: near the SfM points as read from points3D.bin
    model = read_model(PLUSH_DOG / "sparse" / "0", read_points2D=False)
    src = model.points3D.xyz
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1)
    src_extent = run.scene.extent() / run.scene.scale
    assert np.linalg.norm(xyz.mean(0) - src.mean(0)) < 0.05 * src_extent
    assert np.allclose(xyz, run.scene.to_source(sp["means"].numpy()), atol=1e-4)
    # log scales shifted by -log(scale); opacity logits and quaternions unchanged
    assert np.allclose(v["scale_1"], sp["scales"][:, 1].numpy() - math.log(run.scene.scale),
                       atol=1e-5)
    assert np.allclose(v["opacity"], sp["opacities"].numpy())
    assert np.allclose(v["rot_2"], sp["quats"][:, 2].numpy())
    assert np.allclose(v["f_rest_0"], sp["shN"][:, 0, 0].numpy())


def test_checkpoint_contents_and_held_out_views(trained_plush):
    run = trained_plush
    ckpt = load_checkpoint(find_latest_checkpoint(run.model_dir))
    assert ckpt["step"] == SESSION_STEPS
    assert set(ckpt) >= {"splats", "optimizers", "strategy_state", "rng", "sampler",
                         "background_rng", "config", "step", "train_seconds"}
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python", "cuda"}
    assert ckpt["config"]["max_steps"] == SESSION_STEPS
    assert set(ckpt["optimizers"]["means"]["state"][0]) >= {"exp_avg", "exp_avg_sq", "step"}
    # the view order covers the training views only: held-out views are never trained on
    assert ckpt["sampler"]["indices"] == run.scene.train_indices
    assert set(ckpt["sampler"]["perm"]) <= set(run.scene.train_indices)
    assert not set(run.scene.train_indices) & set(run.scene.test_indices)


def test_metrics_log_and_progress_events(trained_plush):
    run = trained_plush
    m = json.loads((run.model_dir / "metrics.json").read_text())
    assert m["step"] == SESSION_STEPS and m["num_gaussians"] == run.result.num_gaussians
    assert m["test"]["num_images"] == len(run.scene.test_indices) == 11
    assert 10 < m["test"]["psnr"] < 60 and 0 < m["test"]["ssim"] <= 1
    assert m["train_seconds"] > 0
    log = [r for r in run.log() if r.get("kind") != "eval"]
    assert [r["step"] for r in log] == list(range(10, SESSION_STEPS + 1, 10))
    progress = [e for e in run.events if e.kind == "progress" and e.stage == "train"]
    assert all(e.total == SESSION_STEPS for e in progress)
    assert progress[-1].step == SESSION_STEPS
    by_step = {e.step: e for e in progress if "loss" in e.data}
    for rec in log[::5]:
        ev = by_step[rec["step"]]
        for key in ("loss", "psnr", "num_gaussians", "steps_per_second"):
            assert ev.data[key] == rec[key]
        assert ev.eta_s is not None and ev.eta_s >= 0
    kinds = [e.kind for e in run.events if e.stage == "train"]
    assert kinds[0] == "stage_started" and kinds[-1] == "stage_finished"


# --------------------------------------------------------------------------------------------
# Resume, Ctrl-C, MCMC, errors
# --------------------------------------------------------------------------------------------

RESUME_STEPS = 30


def _resume_config(**kw) -> TrainConfig:
    """The default (INRIA) strategy with refinement at steps 10, 15, 20 and 25 (on both sides
    of the step-15 checkpoint), an opacity reset at 24, SH degree 1 from step 12, random
    backgrounds (their generator is part of the state)."""
    base = {"strategy": "default", "max_steps": RESUME_STEPS,
            "save_steps": [RESUME_STEPS // 2, RESUME_STEPS], "sh_degree": 1,
            "sh_degree_interval": 12, "densify_from_iter": 5,
            "densification_interval": 5, "densify_until_iter": 26,
            "opacity_reset_interval": 24, "random_background": True, "log_every": 1,
            "seed": 3, "device": "cpu"}
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, plush_scene, plush_scene_config):
    md = tmp_path_factory.mktemp("straight")
    res = run_train(_resume_config(), plush_scene, md, scene_config=plush_scene_config)
    return md, res


def _assert_same_splats(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, va in a.items():
        vb = b[k]
        assert va.shape == vb.shape, k
        diff = (va - vb).abs().max().item() if va.numel() else 0.0
        assert diff < 1e-6, (k, diff)


def test_resumed_run_equals_uninterrupted_run(straight_run, tmp_path, plush_scene,
                                              plush_scene_config):
    md, res = straight_run
    half = RESUME_STEPS // 2
    mid = load_checkpoint(md / "ckpts" / f"step_{half}.pt")
    final = load_checkpoint(md / "ckpts" / f"step_{RESUME_STEPS}.pt")
    # densification happened on both sides of the checkpoint
    counts_mid, counts_end = mid["strategy_counts"], final["strategy_counts"]
    assert counts_mid["refines"] >= 1 and counts_end["refines"] > counts_mid["refines"]
    assert counts_end["duplicated"] + counts_end["split"] > 0
    assert counts_end["opacity_resets"] == 1  # step 24 (gsplat 1.5.3 alone never resets)
    resumed = run_train(_resume_config(), plush_scene, tmp_path / "resumed",
                        scene_config=plush_scene_config,
                        resume=md / "ckpts" / f"step_{half}.pt")
    assert resumed.resumed_from == md / "ckpts" / f"step_{half}.pt"
    assert resumed.step == RESUME_STEPS and resumed.num_gaussians == res.num_gaussians
    again = load_checkpoint(tmp_path / "resumed" / "ckpts" / f"step_{RESUME_STEPS}.pt")
    _assert_same_splats(final["splats"], again["splats"])
    for name in final["optimizers"]:
        sa, sb = final["optimizers"][name]["state"][0], again["optimizers"][name]["state"][0]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]), name


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes_the_run(
        straight_run, tmp_path, plush_scene, plush_scene_config):
    md_straight, _ = straight_run
    md = tmp_path / "interrupted"
    stop_at = 11

    def events(ev):
        if ev.kind == "progress" and ev.step == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as e:
        run_train(_resume_config(), plush_scene, md, events, scene_config=plush_scene_config)
    assert isinstance(e.value, TrainingInterrupted) and e.value.step == stop_at
    ck = md / "ckpts" / f"step_{stop_at}.pt"
    assert e.value.checkpoint == ck and ck.is_file()
    assert not list((md / "ckpts").glob("*.tmp*"))
    assert load_checkpoint(ck)["step"] == stop_at
    # starting again without resume refuses to overwrite the checkpoints
    with pytest.raises(InputError, match="resume"):
        run_train(_resume_config(), plush_scene, md, scene_config=plush_scene_config)
    out = run_train(_resume_config(), plush_scene, md, scene_config=plush_scene_config,
                    resume=True)
    assert out.resumed_from == ck and out.step == RESUME_STEPS
    _assert_same_splats(
        load_checkpoint(md_straight / "ckpts" / f"step_{RESUME_STEPS}.pt")["splats"],
        load_checkpoint(md / "ckpts" / f"step_{RESUME_STEPS}.pt")["splats"])
    steps = [json.loads(x)["step"] for x in (md / "train_log.jsonl").read_text().splitlines()
             if "kind" not in json.loads(x)]
    assert steps == list(range(1, RESUME_STEPS + 1))  # one record per step, none twice


def test_mcmc_stays_under_cap(tmp_path, plush_scene, plush_scene_config):
    n0 = len(plush_scene.points)
    cap = n0 + 100
    cfg = TrainConfig(strategy="mcmc", cap_max=cap, max_steps=12, densify_from_iter=2,
                      densification_interval=3, densify_until_iter=12, sh_degree=0,
                      log_every=1, device="cpu", seed=1)
    res = run_train(cfg, plush_scene, tmp_path / "mcmc", scene_config=plush_scene_config)
    counts = [json.loads(x).get("num_gaussians") for x in
              (tmp_path / "mcmc" / "train_log.jsonl").read_text().splitlines()]
    counts = [c for c in counts if c is not None]
    assert max(counts) <= cap and res.num_gaussians == cap  # grew by 5 % per refine, capped
    assert counts[0] == n0
    ck = load_checkpoint(tmp_path / "mcmc" / "ckpts" / "step_12.pt")
    assert torch.isfinite(ck["splats"]["means"]).all()
    assert float(torch.sigmoid(ck["splats"]["opacities"]).min()) > 0.0


def test_frames_colmap_trains_from_random_init(tmp_path):
    scfg = SceneConfig(cache_dir=tmp_path / "cache", test_every=5)
    cfg = TrainConfig(max_steps=3, init_num_pts=800, sh_degree=0, log_every=1, device="cpu")
    res = run_train(cfg, DATASETS / "frames_colmap" / "dense", tmp_path / "m", scene_config=scfg)
    assert res.init == "random" and res.num_gaussians == 800
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["test"]["num_images"] == 3 and m["init"] == "random"


def test_unavailable_device_or_backend_is_a_clear_error(tmp_path, plush_scene):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="gsplat.*CUDA|CUDA.*gsplat"):
        run_train(TrainConfig(max_steps=1, backend="gsplat"), plush_scene, tmp_path / "a")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run_train(TrainConfig(max_steps=1, device="cuda"), plush_scene, tmp_path / "b")
    assert not (tmp_path / "a" / "ckpts").exists()


def test_resume_errors(tmp_path, plush_scene, straight_run):
    with pytest.raises(InputError, match="checkpoint not found"):
        run_train(_resume_config(), plush_scene, tmp_path / "x", resume=tmp_path / "nope.pt")
    md, _ = straight_run
    with pytest.raises(ConfigError, match="sh_degree"):
        run_train(_resume_config(sh_degree=2), plush_scene, tmp_path / "y",
                  resume=md / "ckpts" / f"step_{RESUME_STEPS // 2}.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read as a checkpoint"):
        run_train(_resume_config(), plush_scene, tmp_path / "z", resume=bad)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def test_cli_train_end_to_end(tmp_path):
    out = tmp_path / "model"
    env = dict(os.environ, COLUMNS="200")
    cmd = [sys.executable, "-m", "splatforge", "train", str(PLUSH_DOG), "-o", str(out),
           "--iterations", "4", "--save-iterations", "2", "4", "--data-factor", "8",
           "--cache-dir", str(tmp_path / "cache"), "--sh-degree", "0", "--log-every", "1",
           "--device", "cpu"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "train: training 4/4" in p.stderr and "train: training 0/4" in p.stderr
    assert "loss=" in p.stderr and "psnr=" in p.stderr
    assert "trained 4 steps" in p.stdout and "PSNR" in p.stdout
    assert (out / "point_cloud" / "iteration_2" / "point_cloud.ply").is_file()
    assert (out / "point_cloud" / "iteration_4" / "point_cloud.ply").is_file()
    assert sorted(x.name for x in (out / "ckpts").iterdir()) == ["step_2.pt", "step_4.pt"]
    for name in ("train_log.jsonl", "metrics.json", "train_config.json"):
        assert (out / name).is_file()
    # the same command again refuses to overwrite; --resume finds the run complete
    p2 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p2.returncode == 2 and "--resume" in p2.stderr
    p3 = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env,
                        timeout=600)
    assert p3.returncode == 0, p3.stderr
    bad = subprocess.run(cmd[:7] + ["--max-steps", "0"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert bad.returncode == 2 and "max_steps" in bad.stderr and "1 <= value" in bad.stderr


def test_cli_sigint_writes_a_checkpoint_and_exits_130(tmp_path):
    """A real Ctrl-C (SIGINT) while the command trains."""
    import signal
    import time

    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "splatforge", "train", str(PLUSH_DOG), "-o", str(out),
           "--max-steps", "500", "--data-factor", "8", "--cache-dir", str(tmp_path / "cache"),
           "--sh-degree", "0", "--device", "cpu"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, COLUMNS="200"))
    try:
        deadline = time.monotonic() + 300
        seen = ""
        while time.monotonic() < deadline:
            line = p.stderr.readline()
            seen += line
            if "train: training 0/500" in line or not line:
                break
        assert "train: training 0/500" in seen, seen  # printed once the loop has started
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "--resume" in err
    ckpts = list((out / "ckpts").glob("step_*.pt"))
    assert len(ckpts) == 1 and ckpts[0].name != "step_500.pt"
    step = load_checkpoint(ckpts[0])["step"]
    assert 1 <= step < 500 and f"interrupted after step {step}" in err


# --------------------------------------------------------------------------------------------
# CUDA (gsplat backend): run through the device tool, excluded from CI
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_training_uses_gsplat_and_keeps_images_on_the_gpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from splatforge.scene import load_scene

    scfg = SceneConfig(cache_dir=tmp_path / "cache")  # images_4: 750x500
    scene = load_scene(PLUSH_DOG, scfg)
    cfg = TrainConfig(strategy="default", max_steps=3000, save_steps=[1500],
                      densify_from_iter=500, densification_interval=100,
                      densify_until_iter=2500, log_every=100, device="cuda", seed=0)
    res = run_train(cfg, scene, tmp_path / "default", scene_config=scfg)
    m = res.metrics
    print(f"default: {res.steps_per_second:.1f} steps/s, {res.num_gaussians} Gaussians, "
          f"test PSNR {m['test']['psnr']:.2f} SSIM {m['test']['ssim']:.3f}, "
          f"{res.train_seconds:.1f} s")
    assert res.backend == "gsplat" and res.device.startswith("cuda")
    assert m["image_cache"]["gpu_resident"]
    assert m["image_cache"]["decodes"] == len(scene.train_indices)  # decoded once each
    assert res.num_gaussians > len(scene.points)
    assert m["test"]["psnr"] > 17.0
    # MCMC with the gsplat kernels: +5 % per refinement (steps 600..1400), capped
    cap = len(scene.points) + 800
    mc = run_train(TrainConfig(strategy="mcmc", cap_max=cap, max_steps=1500, log_every=100,
                               device="cuda", seed=0), scene, tmp_path / "mcmc",
                   scene_config=scfg)
    print(f"mcmc: {mc.steps_per_second:.1f} steps/s, {mc.num_gaussians} Gaussians, "
          f"test PSNR {mc.metrics['test']['psnr']:.2f}")
    assert mc.num_gaussians == cap
    # absgrad + packed + sparse_grad + antialiased pass through to gsplat
    ab = run_train(TrainConfig(strategy="default", max_steps=700, absgrad=True, packed=True,
                               sparse_grad=True, antialiased=True, log_every=100,
                               device="cuda"), scene,
                   tmp_path / "abs", scene_config=scfg)
    assert ab.backend == "gsplat" and ab.num_gaussians > len(scene.points)
    # resume on CUDA: same schedule and densification; gsplat's backward uses atomics, so
    # values agree closely rather than bit for bit
    res2 = run_train(cfg, scene, tmp_path / "resumed", scene_config=scfg,
                     resume=tmp_path / "default" / "ckpts" / "step_1500.pt")
    a = load_checkpoint(tmp_path / "default" / "ckpts" / "step_3000.pt")["splats"]
    b = load_checkpoint(tmp_path / "resumed" / "ckpts" / "step_3000.pt")["splats"]
    print(f"resumed: {res2.num_gaussians} vs {res.num_gaussians} Gaussians, test PSNR "
          f"{res2.metrics['test']['psnr']:.2f}")
    assert abs(res2.num_gaussians - res.num_gaussians) <= 0.02 * res.num_gaussians
    # held-out PSNR of this scene varies by about 1 dB between identical CUDA runs (measured
    # 22.9 to 23.8 dB at 3000 steps)
    assert res2.metrics["test"]["psnr"] > 17.0
    if a["means"].shape == b["means"].shape:
        print("max |means diff|", float((a["means"] - b["means"]).abs().max()))
