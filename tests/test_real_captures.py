"""Real captures (issue 13): appearance models, masks, pose refinement, LLFF input, and the
dataset-path probes of issue 14 that the scene readers own. CPU, real data, small."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATASETS

STATUE = DATASETS / "statue_of_liberty"
BEER = DATASETS / "beer_phone"
PLUSH = DATASETS / "plush_dog"


# --------------------------------------------------------------------------------------------
# fixtures: a 12-photo statue dataset (COLMAP + masks/ beside images/), data_factor 8
# --------------------------------------------------------------------------------------------

def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)  # a dataset may link its photos from elsewhere


@pytest.fixture(scope="session")
def statue_small(tmp_path_factory):
    """12 statue photos (every 11th by name) with their masks and the dataset's poses, as a
    COLMAP dataset with ``masks/`` beside ``images/``; loaded at data_factor 8 (100x154),
    no hold-out."""
    from splatforge.config import SceneConfig
    from splatforge.scene import load_scene, read_model, write_model
    from splatforge.scene.colmap import ColmapModel

    root = tmp_path_factory.mktemp("statue_small")
    model = read_model(STATUE / "sparse" / "0", read_points2D=False)
    ims = sorted(model.images.values(), key=lambda im: im.name)[::11][:12]
    for im in ims:
        _link(STATUE / "images" / im.name, root / "images" / im.name)
        _link(STATUE / "masks" / im.name, root / "masks" / im.name)
    write_model(root / "sparse" / "0", ColmapModel(model.cameras, {im.id: im for im in ims},
                                                   model.points3D))
    cfg = SceneConfig(data_factor=8, test_every=0, cache_dir=root / "cache")
    scene = load_scene(root, cfg)
    # every 12th SfM point (2293 of 27509): CPU rasterization cost follows the Gaussians
    scene.points, scene.points_rgb = scene.points[::12].copy(), scene.points_rgb[::12].copy()
    return scene, cfg


def _train(scene, cfg_scene, tmp, **kw):
    from splatforge.config import TrainConfig
    from splatforge.train import run_train

    base = dict(max_steps=60, strategy="default", sh_degree=0, densify_from_iter=10_000,
                log_every=1, seed=0, device="cpu", backend="torch", eval_every=0)
    base.update(kw)
    grab = {}

    def hook(trainer, step):
        grab["trainer"] = trainer

    res = run_train(TrainConfig(**base), scene, tmp, scene_config=cfg_scene, step_hook=hook)
    log = [json.loads(x) for x in (Path(tmp) / "train_log.jsonl").read_text().splitlines()]
    return res, [r["loss"] for r in log if "loss" in r], grab["trainer"]


# --------------------------------------------------------------------------------------------
# appearance
# --------------------------------------------------------------------------------------------

def test_appearance_models_lower_the_training_loss_on_statue(statue_small, tmp_path):
    """Both appearance models fit the in-the-wild photos better than none in the same steps
    (the mean loss of the last 20 steps), and the embedding run's PLY is the baked mean
    appearance."""
    from splatforge.export.ply import read_ply
    from splatforge.train.evaluate import render_view

    scene, sc = statue_small
    tails = {}
    runs = {}
    for kind in ("none", "embedding", "bilateral"):
        res, losses, tr = _train(scene, sc, tmp_path / kind, appearance=kind)
        tails[kind] = float(np.mean(losses[-20:]))
        runs[kind] = (res, tr)
    assert tails["embedding"] < tails["none"] * 0.985, tails
    assert tails["bilateral"] < tails["none"] * 0.985, tails
    # metrics.json carries plain and colour-corrected numbers
    m = json.loads((runs["embedding"][0].model_dir / "metrics.json").read_text())
    assert m["appearance"] == "embedding" and "cc_psnr" in m["test"]
    # the exported PLY (sh0/shN only) renders what the model renders with the mean embedding
    res, tr = runs["embedding"]
    sh0 = torch.as_tensor(read_ply(res.ply_paths[res.step])["sh0"])
    baked = tr.extras.export_params(tr.params)
    assert torch.allclose(sh0.reshape(baked["sh0"].shape), baked["sh0"].cpu(), atol=1e-5)
    with torch.no_grad():
        ref, _, _ = render_view(tr.extras.render_params(tr.params, None), scene, 0, 0, "torch")
        out, _, _ = render_view(baked, scene, 0, 0, "torch")
    assert torch.allclose(ref, out, atol=1e-5)
    assert not torch.allclose(baked["sh0"], tr.params["sh0"].detach())  # something was baked


def test_color_correct_undoes_a_colour_transform():
    from splatforge.metrics import psnr
    from splatforge.scene import load_image
    from splatforge.train.appearance import color_correct

    p = sorted((PLUSH / "images_4").iterdir())[0]
    img = torch.from_numpy(np.array(load_image(p, (1, 1, 1)))).float() / 255.0
    warped = (img @ torch.tensor([[0.6, 0.1, 0.0], [0.0, 0.7, 0.1], [0.05, 0.0, 0.5]])
              + 0.05).clamp(0, 1)
    assert float(psnr(warped, img)) < 20
    assert float(psnr(color_correct(warped, img), img)) > 35


def test_aws_splatfacto_w_maps_to_embedding():
    from splatforge.aws.job import parse_job

    job = {"uuid": "j1", "s3": {"bucketName": "bucket-1", "inputPrefix": "in", "inputKey": "a.zip",
                                "outputPrefix": "out"},
           "training": {"model": "splatfacto-w"}}
    spec = parse_job(job).pipeline_spec()
    assert spec.train.appearance == "embedding"
    assert parse_job({**job, "training": {"model": "splatfacto"}}).pipeline_spec() \
        .train.appearance == "none"


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------

def test_masks_are_found_resampled_and_undistorted(statue_small):
    """masks/ beside images/ is found; masks are undistorted and downsampled with their image
    (same size, and the statue's mask covers the statue's bright pixels, not the sky)."""
    from splatforge.scene.masks import load_mask

    scene, _ = statue_small
    assert all(im.mask_path is not None for im in scene.images)
    for im in scene.images[:3]:
        m = load_mask(im.mask_path, (im.width, im.height))
        assert 0.05 < m.mean() < 0.9


def test_pixels_outside_the_mask_do_not_change_the_gradient(statue_small):
    from splatforge.config import TrainConfig
    from splatforge.scene import load_image
    from splatforge.splats import init_splats
    from splatforge.train.evaluate import render_view
    from splatforge.train.losses import photometric_loss
    from splatforge.train.real_capture import CaptureExtras

    scene, _ = statue_small
    init = init_splats(scene, 0)
    extras = CaptureExtras(TrainConfig(device="cpu"), scene, torch.device("cpu"))
    i = 0
    gt = torch.from_numpy(np.array(load_image(scene.images[i], scene.background)))
    m = extras.masks.get(i)[..., 0] > 0.5
    noisy = gt.clone()
    g = torch.Generator().manual_seed(0)
    noisy[~m] = torch.randint(0, 256, (int((~m).sum()), 3), generator=g, dtype=torch.uint8)

    def grads(target, masked=True):
        p = {k: v.clone().requires_grad_(True) for k, v in init.params.items()}
        r, _, _ = render_view(p, scene, i, 0, "torch")
        ri, ti = extras.loss_inputs(r[0], target, i) if masked else (r[0], target)
        loss, _, _ = photometric_loss(ri, ti.float() / 255.0)
        loss.backward()
        return {k: v.grad for k, v in p.items()}

    a, b = grads(gt), grads(noisy)
    for k in ("means", "sh0", "opacities", "scales"):
        assert torch.equal(a[k], b[k]), k
    # without the mask the outside pixels do matter (the test can fail)
    c, d = grads(gt, masked=False), grads(noisy, masked=False)
    assert not torch.equal(c["sh0"], d["sh0"])


def test_background_mode_clears_alpha_outside_the_mask(statue_small, tmp_path):
    """mask_mode background: after a short run the rendered opacity outside the statue is
    near 0 (it starts near 0.5 from the SfM points around it)."""
    from splatforge.splats import init_splats
    from splatforge.train.evaluate import render_view

    scene, sc = statue_small

    def outside_alpha(params, masks):
        vals = []
        with torch.no_grad():
            for i in scene.train_indices[:4]:
                _, a, _ = render_view(params, scene, i, 0, "torch")
                m = masks.get(i)[..., 0] > 0.5
                vals.append(float(a[0, ..., 0][~m].mean()))
        return float(np.mean(vals))

    _, _, tr = _train(scene, sc, tmp_path / "bg", mask_mode="background", max_steps=60)
    before = outside_alpha(init_splats(scene, 0).params, tr.extras.masks)
    after = outside_alpha(tr.extras.export_params(tr.params), tr.extras.masks)
    assert after < 0.1, (before, after)
    assert after < 0.3 * before, (before, after)


def test_masks_from_transforms_and_option(tmp_path):
    """mask_path in transforms.json is used (and resampled with data_factor); --masks names a
    folder inside the dataset; 'none' turns auto-detection off."""
    from splatforge.config import SceneConfig
    from splatforge.errors import InputError
    from splatforge.scene import load_scene, read_model

    model = read_model(PLUSH / "sparse" / "0", read_points2D=False)
    ims = sorted(model.images.values(), key=lambda im: im.name)[:3]
    frames = []
    for im in ims:
        _link(PLUSH / "images_4" / im.name, tmp_path / "images" / im.name)
        (tmp_path / "segs").mkdir(exist_ok=True)
        from PIL import Image

        Image.new("L", (750, 500), 255).save(tmp_path / "segs" / (im.name + ".png"))
        c2w = np.linalg.inv(im.viewmat()) @ np.diag([1, -1, -1, 1])
        frames.append({"file_path": f"images/{im.name}", "mask_path": f"segs/{im.name}.png",
                       "transform_matrix": c2w.tolist()})
    cam = model.cameras[ims[0].camera_id]
    fx, fy, cx, cy = cam.params[:4]
    (tmp_path / "transforms.json").write_text(json.dumps(
        {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": 750, "h": 500, "frames": frames}))
    sc = load_scene(tmp_path, SceneConfig(data_factor=4, cache_dir=tmp_path / "c"))
    assert all(im.mask_path is not None for im in sc.images)
    from splatforge.scene.masks import load_mask

    assert load_mask(sc.images[0].mask_path, (sc.images[0].width, sc.images[0].height)).all()
    with pytest.raises(InputError, match="mask_path"):
        frames[0]["mask_path"] = "../../outside.png"
        (tmp_path / "transforms.json").write_text(json.dumps(
            {"fl_x": fx, "fl_y": fy, "w": 750, "h": 500, "frames": frames}))
        load_scene(tmp_path, SceneConfig(cache_dir=tmp_path / "c"))


# --------------------------------------------------------------------------------------------
# pose refinement
# --------------------------------------------------------------------------------------------

def test_pose_opt_recovers_a_perturbed_pose(trained_plush):
    """Against the session's trained plush_dog splats, a training camera rotated by 1.5 deg and
    shifted is pulled back towards its true pose by the learned SE(3) correction."""
    import copy

    from splatforge.scene import load_image
    from splatforge.splats import PARAM_NAMES
    from splatforge.train.checkpoint import find_latest_checkpoint, load_checkpoint
    from splatforge.train.evaluate import render_view
    from splatforge.train.losses import photometric_loss
    from splatforge.train.pose_opt import (PoseCorrection, axis_angle_to_matrix,
                                           make_optimizer, rotation_error_deg)

    scene = copy.copy(trained_plush.scene)
    ck = load_checkpoint(find_latest_checkpoint(trained_plush.model_dir), map_location="cpu")
    params = {k: ck["splats"][k] for k in PARAM_NAMES}
    scene.images = [copy.copy(im) for im in scene.images]
    idx = scene.train_indices[:3]
    truth = {i: scene.images[i].viewmat.copy() for i in idx}
    g = np.random.default_rng(0)
    for i in idx:
        axis = g.normal(size=3)
        axis /= np.linalg.norm(axis)
        R = axis_angle_to_matrix(torch.tensor(axis * np.radians(1.5))).numpy()
        P = np.eye(4)
        P[:3, :3] = R
        P[:3, 3] = g.normal(size=3) * 0.01
        scene.images[i].viewmat = P @ truth[i]
    pose = PoseCorrection(len(scene.images))
    opt = make_optimizer(pose, lr=2e-3)
    gts = {i: torch.from_numpy(np.array(load_image(scene.images[i], scene.background))
                               ).float() / 255 for i in idx}
    before = {i: rotation_error_deg(scene.images[i].viewmat, truth[i]) for i in idx}
    for step in range(40):
        for i in idx:
            vm = torch.as_tensor(scene.images[i].viewmat, dtype=torch.float32)[None]
            r, _, _ = render_view(params, scene, i, 1, "torch", viewmat=pose.apply(vm, i),
                                  K=torch.as_tensor(scene.images[i].K,
                                                    dtype=torch.float32)[None])
            loss, _, _ = photometric_loss(r[0], gts[i])
            loss.backward()
        opt.step()
        opt.zero_grad()
    refined = pose.refined_viewmats({i: scene.images[i].viewmat for i in idx})
    after = {i: rotation_error_deg(refined[i], truth[i]) for i in idx}
    assert np.mean(list(after.values())) < 0.6 * np.mean(list(before.values())), (before, after)


def test_pose_opt_training_writes_refined_model(trained_plush, tmp_path):
    """--pose-opt through the trainer: sparse_refined/ is a COLMAP model pycolmap reads, in
    the source frame (zero correction = the input poses), cameras.json written."""
    import pycolmap

    from splatforge.scene import read_model

    scene = trained_plush.scene
    _, _, tr = _train(scene, trained_plush.scene_config, tmp_path / "m", pose_opt=True,
                      max_steps=5, pose_opt_lr=1e-4)
    rec = pycolmap.Reconstruction(str(tmp_path / "m" / "sparse_refined"))
    assert rec.num_reg_images() == len(scene.images)
    ours = read_model(tmp_path / "m" / "sparse_refined", read_points2D=False)
    src = read_model(PLUSH / "sparse" / "0", read_points2D=False)
    by_name = {im.name: im for im in src.images.values()}
    test_name = scene.images[scene.test_indices[0]].name
    for im in ours.images.values():
        ref = by_name[im.name]
        if im.name == test_name:  # held-out views: no correction, the input pose exactly
            assert np.allclose(im.viewmat(), ref.viewmat(), atol=1e-6)
        else:
            assert np.allclose(im.viewmat()[:3, :3], ref.viewmat()[:3, :3], atol=1e-2)
    assert float(tr.extras.pose.deltas.detach().abs().sum()) > 0
    assert (tmp_path / "m" / "cameras.json").is_file()


# --------------------------------------------------------------------------------------------
# LLFF
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llff_beer(tmp_path_factory):
    """beer_phone as nerf_llff_data: its poses_bounds.npy (first 6 rows), images/ (6 frames,
    720x1280), images_4/ and images_8/ (made with Pillow), sparse/0 without images.bin."""
    from PIL import Image

    root = tmp_path_factory.mktemp("llff_beer")
    pb = np.load(BEER / "poses_bounds.npy")[:6]
    np.save(root / "poses_bounds.npy", pb)
    names = sorted(p.name for p in (BEER / "images").iterdir())[:6]
    for n in names:
        _link(BEER / "images" / n, root / "images" / n)
        im = Image.open(BEER / "images" / n)
        for f in (4, 8):
            (root / f"images_{f}").mkdir(exist_ok=True)
            im.resize((im.width // f, im.height // f)).save(root / f"images_{f}" / n)
    (root / "sparse" / "0").mkdir(parents=True)
    for f in ("cameras.bin", "points3D.bin"):
        shutil.copy(BEER / "sparse" / "0" / f, root / "sparse" / "0" / f)
    return root, pb, names


def test_llff_intrinsics_at_each_images_n(llff_beer):
    from splatforge.config import SceneConfig
    from splatforge.scene import load_scene, read_model

    root, pb, names = llff_beer
    H, W, focal = pb[0, :15].reshape(3, 5)[:, 4]
    for factor, (w, h) in ((1, (720, 1280)), (4, (180, 320)), (8, (90, 160)), (2, (360, 640))):
        sc = load_scene(root, SceneConfig(data_factor=factor, normalize=False,
                                          cache_dir=root / "cache", test_every=0))
        assert sc.source_format == "llff"
        im = sc.images[0]
        assert (im.width, im.height) == (w, h)
        s = w / W
        assert np.allclose([im.K[0, 0], im.K[1, 1], im.K[0, 2], im.K[1, 2]],
                           [focal * s, focal * (h / H), w / 2, h / 2], rtol=1e-9)
        if factor in (4, 8):
            assert Path(sc.info["image_folder"]).name == f"images_{factor}"
    assert len(sc.points) > 1000  # sparse/0/points3D.bin without images.bin
    # the poses are COLMAP's (LLFF was made from the dataset's COLMAP model)
    model = read_model(BEER / "sparse" / "0", read_points2D=False)
    by_name = {i.name: i for i in model.images.values()}
    from splatforge.train.pose_opt import rotation_error_deg

    for im in sc.images:
        ref = by_name[im.name].viewmat()
        assert rotation_error_deg(im.viewmat, ref) < 0.1
        assert np.allclose(im.camera_center, np.linalg.inv(ref)[:3, 3], atol=1e-3)


def test_llff_bad_poses_bounds(tmp_path):
    from splatforge.errors import InputError
    from splatforge.scene import load_scene

    _link(BEER / "images" / "0000.jpg", tmp_path / "images" / "0000.jpg")
    np.save(tmp_path / "poses_bounds.npy", np.zeros((3, 12)))
    with pytest.raises(InputError, match=r"\[N, 17\]"):
        load_scene(tmp_path)
    np.save(tmp_path / "poses_bounds.npy", np.load(BEER / "poses_bounds.npy")[:2])
    with pytest.raises(InputError, match="2 poses but images/ holds 1"):
        load_scene(tmp_path)


# --------------------------------------------------------------------------------------------
# issue 14 probe 1: dataset paths stay inside the dataset
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/etc/passwd", "../../x.jpg"])
def test_images_txt_names_outside_the_dataset_are_refused(tmp_path, monkeypatch, name):
    from splatforge.errors import InputError
    from splatforge.scene import load_scene, read_model, write_model
    from splatforge.scene import loader
    from splatforge.scene.colmap import ColmapModel, ColmapPoints3D

    model = read_model(PLUSH / "sparse" / "0", read_points2D=False)
    ims = sorted(model.images.values(), key=lambda im: im.name)[:2]
    _link(PLUSH / "images_4" / ims[0].name, tmp_path / "images" / ims[0].name)
    ims[1].name = name
    write_model(tmp_path / "sparse" / "0", ColmapModel(model.cameras, {i.id: i for i in ims},
                                                       ColmapPoints3D.empty()), ext=".txt")
    opened = []
    monkeypatch.setattr(loader, "image_size", lambda p: opened.append(p) or (750, 500))
    with pytest.raises(InputError) as e:
        load_scene(tmp_path)
    msg = str(e.value)
    assert name in msg and "images.txt" in msg
    assert str(tmp_path) not in msg
    assert opened == []  # nothing was read


def test_scene_images_option_stays_inside(tmp_path):
    from pydantic import ValidationError

    from splatforge.config import SceneConfig
    from splatforge.errors import ConfigError, InputError
    from splatforge.scene import load_scene

    for bad in ("/outside/dir", "../../..", "a/../../b"):
        with pytest.raises((ValidationError, ConfigError)):
            SceneConfig(images=bad)
    # the loader checks the name too (a config built without validation)
    shutil.copytree(PLUSH / "sparse", tmp_path / "sparse")
    cfg = SceneConfig.model_construct(**{**SceneConfig().model_dump(), "images": "../../etc"})
    with pytest.raises(InputError, match="scene.images") as e:
        load_scene(tmp_path, cfg)
    assert str(tmp_path) not in str(e.value)


def test_transforms_file_path_outside_is_refused(tmp_path):
    from splatforge.errors import InputError
    from splatforge.scene import load_scene

    (tmp_path / "transforms.json").write_text(json.dumps(
        {"fl_x": 100, "w": 10, "h": 10,
         "frames": [{"file_path": "../../etc/passwd", "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(InputError, match="file_path") as e:
        load_scene(tmp_path)
    assert str(tmp_path) not in str(e.value)
