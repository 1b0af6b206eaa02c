"""Undistortion keeps an image's transparency (scene/undistort.py): RGBA photos of an object
cut out of its background (the NeRF-synthetic lego) stay cut out through SfM's workspace and
the loader's undistortion cache, so the object is composited on the configured background
instead of on the black that COLMAP's undistorter leaves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import splatforge  # noqa: F401  (import-order guard before pycolmap)
from splatforge.config import SceneConfig, SfmConfig
from splatforge.scene import load_image, load_scene
from splatforge.scene.colmap import (
    ColmapCamera,
    ColmapImage,
    ColmapModel,
    ColmapPoints3D,
    write_model,
)
from splatforge.scene.undistort import undistort_files

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
LEGO = DATASETS / "lego"

pytestmark = pytest.mark.skipif(not LEGO.is_dir(), reason=f"datasets not found at {DATASETS}")


def _cameras(size: int, k: float):
    import pycolmap

    f = 1.389 * size  # lego's 0.6911 rad field of view
    distorted = pycolmap.Camera(model="SIMPLE_RADIAL", width=size, height=size,
                                params=[f, size / 2, size / 2, k])
    return distorted, pycolmap.undistort_camera(pycolmap.UndistortCameraOptions(), distorted)


def test_transparent_colour_does_not_bleed_into_the_object(tmp_path):
    """A green disc on transparent red: every pixel that keeps some opacity after the warp
    is pure green (resampled premultiplied), fully transparent pixels stay transparent, and
    the alpha channel is the one a greyscale warp of the alpha alone gives."""
    size = 96
    yy, xx = np.mgrid[:size, :size]
    inside = (xx - 47.3) ** 2 + (yy - 45.8) ** 2 < 30.0 ** 2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0] = 255  # the colour transparent pixels hold
    rgba[inside] = (0, 255, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "disc.png")
    Image.fromarray(rgba[..., 3], "L").save(tmp_path / "alpha.png")
    distorted, pinhole = _cameras(size, -0.08)
    undistort_files([(tmp_path / "disc.png", tmp_path / "out" / "disc.png", distorted, pinhole),
                     (tmp_path / "alpha.png", tmp_path / "out" / "alpha.png", distorted,
                      pinhole)])
    with Image.open(tmp_path / "out" / "disc.png") as im:
        assert im.mode == "RGBA" and im.size == (pinhole.width, pinhole.height)
        out = np.asarray(im).astype(int)
    alpha = np.asarray(Image.open(tmp_path / "out" / "alpha.png")).astype(int)
    np.testing.assert_array_less(np.abs(out[..., 3] - alpha), 2)
    seen = out[..., 3] > 0
    edge = seen & (out[..., 3] < 255)
    assert edge.sum() > 50 and (out[..., 3] == 0).sum() > 1000
    assert (out[seen][:, 0] == 0).all() and (out[seen][:, 1] == 255).all()


def test_lego_keeps_alpha_through_the_loaders_undistortion(tmp_path):
    """A COLMAP dataset of lego's RGBA views with a SIMPLE_RADIAL camera: the undistorted
    copies are RGBA and load composited on the configured background (green here), where
    they used to show black."""
    names = ["r_0.png", "r_1.png", "r_2.png"]
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    for n in names:
        (ds / "images" / n).symlink_to(LEGO / "train" / n)
    distorted, pinhole = _cameras(400, -0.03)
    cam = ColmapCamera(1, "SIMPLE_RADIAL", 400, 400, list(distorted.params))
    images = {i + 1: ColmapImage(i + 1, [1.0, 0, 0, 0], [0.1 * i, 0, 4.0], 1, n)
              for i, n in enumerate(names)}
    write_model(ds / "sparse" / "0", ColmapModel({1: cam}, images, ColmapPoints3D.empty()))
    scene = load_scene(ds, SceneConfig(cache_dir=tmp_path / "cache", background=(0, 1, 0),
                                       test_every=0))
    assert len(scene.images) == 3
    for im in scene.images:
        assert im.path.is_relative_to(tmp_path / "cache" / "undistorted")
        assert (im.width, im.height) == (pinhole.width, pinhole.height)
        with Image.open(im.path) as f:
            assert f.mode == "RGBA"
        rgb = load_image(im, scene.background)
        assert tuple(rgb[0, 0]) == (0, 255, 0) and tuple(rgb[-1, -1]) == (0, 255, 0)
        assert rgb[150:250, 150:250].std() > 10  # the model itself is there


def test_sfm_workspace_of_rgba_photos_stays_transparent(tmp_path):
    """SfM on twelve of lego's RGBA views writes a workspace whose undistorted images are RGBA,
    transparent where the photos are, and whose scene loads on the configured background."""
    from splatforge.sfm import run_sfm

    import json

    media = tmp_path / "media"
    media.mkdir()
    # the twelve views whose cameras are nearest r_0's (lego's views are spread over a sphere)
    frames = json.loads((LEGO / "transforms_train.json").read_text())["frames"]
    centres = {Path(f["file_path"]).name + ".png": np.array(f["transform_matrix"])[:3, 3]
               for f in frames}
    names = sorted(centres, key=lambda n: np.linalg.norm(centres[n] - centres["r_0.png"]))[:12]
    for n in names:
        (media / n).symlink_to(LEGO / "train" / n)
    ws = tmp_path / "ws"
    res = run_sfm(SfmConfig(num_threads=2), media, ws)
    assert res.num_registered >= 10
    imgs = sorted((ws / "images").iterdir())
    assert len(imgs) == res.num_registered
    for p in imgs:
        with Image.open(p) as im:
            assert im.mode == "RGBA"
            a = np.asarray(im.getchannel("A"))
        with Image.open(LEGO / "train" / p.name) as src:
            transparent = (np.asarray(src.getchannel("A")) == 0).mean()
        # about the photo's share of transparent pixels (the warp moves them a little)
        assert abs((a == 0).mean() - transparent) < 0.03
    scene = load_scene(ws, SceneConfig(cache_dir=tmp_path / "cache", background=(0, 0, 1)))
    rgb = load_image(scene.images[0], scene.background)
    assert tuple(rgb[0, 0]) == (0, 0, 255)


def test_rgba_mask_of_one_colour_stays_a_mask(tmp_path):
    """A mask drawn as one colour with the mask in alpha (what some matting tools write),
    undistorted onto a PINHOLE camera wider than the photo: the copy still reads as the same
    mask (splatforge.scene.masks.load_mask uses alpha when the colour is constant), with the
    pixels outside the photo transparent."""
    import pycolmap

    from splatforge.scene.masks import load_mask

    size = 96
    yy, xx = np.mgrid[:size, :size]
    rgba = np.full((size, size, 4), 255, np.uint8)
    rgba[..., 3] = np.where((xx - 48) ** 2 + (yy - 48) ** 2 < 25 ** 2, 255, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "mask.png")
    distorted, fitted = _cameras(size, -0.05)
    f, cx, cy = fitted.params[0], fitted.params[2], fitted.params[3]
    wide = pycolmap.Camera(model="PINHOLE", width=size + 16, height=size + 16,
                           params=[f, f, cx + 8, cy + 8])
    undistort_files([(tmp_path / "mask.png", tmp_path / "out.png", distorted, wide)])
    with Image.open(tmp_path / "out.png") as im:
        out = np.asarray(im)
    assert (out[:3, :, 3] == 0).all() and (out[:, :3, 3] == 0).all()  # outside the photo
    mask = load_mask(tmp_path / "out.png")
    np.testing.assert_array_equal(mask, out[..., 3] >= 128)
    assert mask[size // 2 + 8, size // 2 + 8] and not mask[12, 12]
