"""Scene readers on the real datasets in ../shared/datasets (read-only; every write in tmp_path).

Covers COLMAP bin/txt readers and writers (cross-checked against pycolmap, which reads the same
files independently), nerfstudio / instant-ngp and Blender transforms, image folders and
data_factor, undistortion to PINHOLE with caching, split, normalisation, and malformed inputs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import splatforge  # noqa: F401  (import-order guard before pycolmap)
from splatforge.config import SceneConfig
from splatforge.errors import InputError
from splatforge.scene import (
    ColmapCamera,
    describe_scene,
    detect_format,
    holdout_split,
    image_size,
    load_image,
    load_scene,
    read_cameras_binary,
    read_images_binary,
    read_model,
    scene_cache_dir,
    scene_summary,
    write_model,
)
from splatforge.scene.loader import scale_camera
from splatforge.scene.types import SceneImage

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
PLUSH = DATASETS / "plush_dog"
FRAMES = DATASETS / "frames_colmap" / "dense"
FOX = DATASETS / "fox"
LEGO = DATASETS / "lego"

pytestmark = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"datasets not found at {DATASETS}")


def cfg(tmp: Path, **kw) -> SceneConfig:
    return SceneConfig(cache_dir=tmp / "cache", **kw)


def project(im: SceneImage, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, 3] world points -> ([N, 2] pixels, [N] depth)."""
    cam = pts @ im.viewmat[:3, :3].T + im.viewmat[:3, 3]
    uvw = cam @ im.K.T
    return uvw[:, :2] / uvw[:, 2:3], cam[:, 2]


def link_dataset(src_images: Path, dst: Path, name: str = "images") -> None:
    dst.mkdir(parents=True, exist_ok=True)
    os.symlink(src_images, dst / name)


@pytest.fixture(scope="session")
def fox_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fox_cache")


@pytest.fixture(scope="session")
def fox4(fox_cache):
    """fox at data_factor 4, not normalised (downsampled, then undistorted, once per session)."""
    t = time.perf_counter()
    scene = load_scene(FOX, SceneConfig(cache_dir=fox_cache, data_factor=4, normalize=False))
    return scene, time.perf_counter() - t


# ------------------------------------------------------------------------------------------
# COLMAP files
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_dir", [PLUSH / "sparse" / "0", FRAMES / "sparse"])
def test_colmap_reader_matches_pycolmap(model_dir):
    import pycolmap

    ours = read_model(model_dir)
    rec = pycolmap.Reconstruction(str(model_dir))
    assert set(ours.cameras) == set(rec.cameras)
    for cid, cam in rec.cameras.items():
        c = ours.cameras[cid]
        assert (c.model, c.width, c.height) == (cam.model.name, cam.width, cam.height)
        np.testing.assert_array_equal(c.params, cam.params)
    assert set(ours.images) == set(rec.images)
    for iid, im in rec.images.items():
        o = ours.images[iid]
        assert (o.name, o.camera_id) == (im.name, im.camera_id)
        np.testing.assert_allclose(o.viewmat()[:3], im.cam_from_world().matrix(), atol=1e-12)
        assert len(o.xys) == len(im.points2D)
        k = len(o.xys) // 2
        np.testing.assert_array_equal(o.xys[k], im.points2D[k].xy)
    assert len(ours.points3D) == len(rec.points3D)
    for row in (0, len(ours.points3D) // 2, len(ours.points3D) - 1):
        p = rec.points3D[int(ours.points3D.ids[row])]
        np.testing.assert_array_equal(ours.points3D.xyz[row], p.xyz)
        np.testing.assert_array_equal(ours.points3D.rgb[row], p.color)
        assert [tuple(t) for t in ours.points3D.track(row)] == [
            (e.image_id, e.point2D_idx) for e in p.track.elements]


def test_colmap_writers_round_trip(tmp_path):
    src = PLUSH / "sparse" / "0"
    model = read_model(src)
    write_model(tmp_path / "bin", model, ".bin")
    for f in ("cameras.bin", "images.bin", "points3D.bin"):  # byte-identical re-encoding
        assert (tmp_path / "bin" / f).read_bytes() == (src / f).read_bytes(), f
    write_model(tmp_path / "txt", model, ".txt")
    back = read_model(tmp_path / "txt")
    for iid, im in model.images.items():
        b = back.images[iid]
        assert b.name == im.name
        np.testing.assert_array_equal(b.qvec, im.qvec)
        np.testing.assert_array_equal(b.tvec, im.tvec)
        np.testing.assert_array_equal(b.xys, im.xys)
        np.testing.assert_array_equal(b.point3D_ids, im.point3D_ids)
    for f in ("ids", "xyz", "rgb", "errors", "track_offsets", "track_image_ids",
              "track_point2D_idxs"):
        np.testing.assert_array_equal(getattr(back.points3D, f), getattr(model.points3D, f))
    assert not list((tmp_path / "txt").glob("*.tmp"))  # atomic writes leave no temp files


def test_bin_and_txt_scenes_are_identical(tmp_path):
    model = read_model(PLUSH / "sparse" / "0")
    ds = tmp_path / "plush_txt"
    write_model(ds / "sparse" / "0", model, ".txt")
    link_dataset(PLUSH / "images_4", ds, "images_4")
    a = load_scene(PLUSH, cfg(tmp_path))
    b = load_scene(ds, cfg(tmp_path))
    assert [i.name for i in a.images] == [i.name for i in b.images]
    for x, y in zip(a.images, b.images):
        np.testing.assert_array_equal(x.viewmat, y.viewmat)
        np.testing.assert_array_equal(x.K, y.K)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.points_rgb, b.points_rgb)


# ------------------------------------------------------------------------------------------
# COLMAP datasets
# ------------------------------------------------------------------------------------------

def test_plush_dog_scene(tmp_path):
    import pycolmap

    events = []
    scene = load_scene(PLUSH, cfg(tmp_path, normalize=False), events=events.append)
    assert scene.source_format == "colmap"
    assert len(scene.images) == 84
    assert {(i.width, i.height) for i in scene.images} == {(750, 500)}
    assert all(i.path.parent == PLUSH / "images_4" for i in scene.images)
    assert any("images_4" in e.message for e in events if e.kind == "info")
    assert scene.points.shape == (3122, 3) and scene.points.dtype == np.float32
    assert scene.points_rgb.shape == (3122, 3) and scene.points_rgb.dtype == np.uint8
    assert [i.name for i in scene.images] == sorted(i.name for i in scene.images)
    # a pose cross-checked with pycolmap's own reading of images.bin
    rec = pycolmap.Reconstruction(str(PLUSH / "sparse" / "0"))
    ref = next(im for im in rec.images.values() if im.name == "IMG_3511.jpg")
    ours = next(im for im in scene.images if im.name == "IMG_3511.jpg")
    np.testing.assert_allclose(ours.viewmat[:3], ref.cam_from_world().matrix(), atol=1e-12)
    np.testing.assert_allclose(ours.K, ref.camera.calibration_matrix(), atol=1e-9)
    # the explicit folder name (INRIA's --images) gives the same scene
    explicit = load_scene(PLUSH, cfg(tmp_path, normalize=False, images="images_4"))
    assert [i.path for i in explicit.images] == [i.path for i in scene.images]
    rgb = load_image(scene.images[0], scene.background)
    assert rgb.shape == (500, 750, 3) and rgb.dtype == np.uint8


@pytest.mark.parametrize("root", [PLUSH, FRAMES])
def test_sfm_points_reproject_onto_keypoints(tmp_path, root):
    """Poses and K are right: each observed 3D point lands on its keypoint, inside the image."""
    import pycolmap

    scene = load_scene(root, cfg(tmp_path, normalize=False))
    model_dir = PLUSH / "sparse" / "0" if root == PLUSH else FRAMES / "sparse"
    rec = pycolmap.Reconstruction(str(model_dir))
    by_name = {im.name: im for im in scene.images}
    errs, inside, total = [], 0, 0
    for im in rec.images.values():
        obs = [(p.xy, rec.points3D[p.point3D_id].xyz) for p in im.points2D if p.has_point3D()]
        xy = np.array([o[0] for o in obs])
        xyz = np.array([o[1] for o in obs])
        s = by_name[im.name]
        uv, z = project(s, xyz)
        assert (z > 0).all()
        errs.append(np.linalg.norm(uv - xy, axis=1))
        inside += int(((uv >= 0) & (uv <= [s.width, s.height])).all(1).sum())
        total += len(uv)
    errs = np.concatenate(errs)
    assert np.median(errs) < 1.0 and (errs < 4.0).mean() > 0.95
    assert inside / total > 0.99


def test_frames_colmap_per_image_cameras(tmp_path):
    scene = load_scene(FRAMES, cfg(tmp_path))
    cams = read_cameras_binary(FRAMES / "sparse" / "cameras.bin")
    ims = {im.name: im for im in read_images_binary(FRAMES / "sparse" / "images.bin").values()}
    assert len(scene.images) == 15 and len(scene.points) == 74
    assert len({i.camera_id for i in scene.images}) == 15
    assert len({(i.width, i.height) for i in scene.images}) > 5
    for s in scene.images:
        cam = cams[ims[s.name].camera_id]
        assert cam.model == "PINHOLE"
        assert (s.width, s.height) == (cam.width, cam.height) == image_size(s.path)
        np.testing.assert_array_equal(s.K[[0, 1, 0, 1], [0, 1, 2, 2]], cam.params)
    # the dense/sparse layout is also found from the dataset's own root
    fmt, root, model_dir = detect_format(FRAMES.parent)
    assert (fmt, root, model_dir) == ("colmap", FRAMES, FRAMES / "sparse")
    # and from the model folders themselves
    assert detect_format(FRAMES / "sparse")[1:] == (FRAMES, FRAMES / "sparse")
    assert detect_format(PLUSH / "sparse" / "0")[1:] == (PLUSH, PLUSH / "sparse" / "0")
    assert detect_format(PLUSH / "sparse" / "0" / "cameras.bin")[1] == PLUSH


def test_split_every_8th_by_sorted_name(tmp_path):
    scene = load_scene(PLUSH, cfg(tmp_path))
    names = [i.name for i in scene.images]
    assert scene.test_indices == list(range(0, 84, 8))
    assert [names[i] for i in scene.test_indices] == sorted(names)[::8]
    assert sorted(scene.train_indices + scene.test_indices) == list(range(84))
    none = load_scene(PLUSH, cfg(tmp_path, test_every=0))
    assert none.test_indices == [] and none.train_indices == list(range(84))
    assert holdout_split(list("abcdefghij"), 3) == ([1, 2, 4, 5, 7, 8], [0, 3, 6, 9])


def test_normalisation_keeps_pixels_and_round_trips(tmp_path):
    raw = load_scene(PLUSH, cfg(tmp_path, normalize=False))
    norm = load_scene(PLUSH, cfg(tmp_path, normalize=True))
    np.testing.assert_array_equal(raw.transform, np.eye(4))
    c = norm.camera_centers()
    np.testing.assert_allclose(c.mean(0), 0, atol=1e-9)
    assert np.linalg.norm(c, axis=1).max() == pytest.approx(1.0)
    # the formula: x_scene = s (x - mean camera centre), s = 1 / largest distance to it
    c0 = raw.camera_centers()
    s = 1 / np.linalg.norm(c0 - c0.mean(0), axis=1).max()
    assert norm.scale == pytest.approx(s)
    np.testing.assert_allclose(norm.transform[:3, 3], -s * c0.mean(0))
    # every image projects every point to the same pixel
    for a, b in zip(raw.images[::7], norm.images[::7]):
        uv_a, za = project(a, raw.points.astype(np.float64))
        uv_b, zb = project(b, norm.points.astype(np.float64))
        seen = (za > 1e-3) & ((uv_a >= 0) & (uv_a <= [a.width, a.height])).all(1)
        assert seen.sum() > 100
        np.testing.assert_allclose(uv_b[seen], uv_a[seen], atol=1e-3)  # float32 points
        np.testing.assert_allclose(zb[seen], za[seen] * norm.scale, rtol=1e-5)
        np.testing.assert_allclose(b.viewmat[:3, :3], a.viewmat[:3, :3])
    np.testing.assert_allclose(norm.to_source(norm.points.astype(np.float64)), raw.points,
                               atol=1e-4)
    np.testing.assert_allclose(norm.to_source(c), c0, atol=1e-9)


def test_data_factor_2_downsamples_into_cache_and_reuses_it(tmp_path):
    ds = tmp_path / "frames"
    shutil.copytree(FRAMES, ds)  # real files, so a source can be changed below
    cache = tmp_path / "cache"
    conf = SceneConfig(cache_dir=cache, data_factor=2, normalize=False)
    full = load_scene(ds, SceneConfig(cache_dir=cache, normalize=False))
    half = load_scene(ds, conf)
    for f, h in zip(full.images, half.images):
        assert h.path.is_relative_to(cache / "downsample_2")
        assert (h.width, h.height) == (round(f.width / 2), round(f.height / 2))
        assert image_size(h.path) == (h.width, h.height)
        np.testing.assert_allclose(h.K[0], f.K[0] * h.width / f.width)
        np.testing.assert_allclose(h.K[1], f.K[1] * h.height / f.height)
    stamps = {i.name: i.path.stat().st_mtime_ns for i in half.images}
    events = []
    again = load_scene(ds, conf, events=events.append)
    assert {i.name: i.path.stat().st_mtime_ns for i in again.images} == stamps
    assert any("reused" in e.message for e in events)
    # a changed source image is rebuilt, the others are kept
    name = half.images[3].name
    src = ds / "images" / name
    with Image.open(src) as f:
        flipped = f.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    flipped.save(src, quality=90)
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = load_scene(ds, conf)
    new = {i.name: i.path.stat().st_mtime_ns for i in third.images}
    assert new[name] != stamps[name]
    assert all(new[n] == stamps[n] for n in stamps if n != name)
    assert not any(p.name.startswith("downsample") for p in ds.iterdir())


def test_data_factor_on_an_images_n_folder(tmp_path):
    scene = load_scene(PLUSH, cfg(tmp_path, data_factor=2, images="images_4"))
    assert {(i.width, i.height) for i in scene.images} == {(375, 250)}
    np.testing.assert_allclose(scene.images[0].K[0, 0] * 2,
                               read_cameras_binary(PLUSH / "sparse/0/cameras.bin")[1].params[0])


DISTORTIONS = {
    "SIMPLE_RADIAL": lambda fx, fy, cx, cy: [fx, cx, cy, 8.0],
    "RADIAL": lambda fx, fy, cx, cy: [fx, cx, cy, 8.0, -20.0],
    "OPENCV": lambda fx, fy, cx, cy: [fx, fy, cx, cy, 8.0, 0.0, 0.001, 0.0],
    "FULL_OPENCV": lambda fx, fy, cx, cy: [fx, fy, cx, cy, 8.0, 0, 0.001, 0, 1.0, 0, 0, 0],
    "OPENCV_FISHEYE": lambda fx, fy, cx, cy: [fx, fy, cx, cy, 8.0, 0.0, 0.0, 0.0],
}


@pytest.mark.parametrize("model_name", list(DISTORTIONS))
def test_distorted_colmap_cameras_are_undistorted_and_cached(tmp_path, model_name):
    """frames_colmap with a distorted camera per image (different sizes) -> PINHOLE copies
    whose K and size are exactly what COLMAP's undistorter chooses."""
    import pycolmap

    model = read_model(FRAMES / "sparse")
    for cid, c in model.cameras.items():
        model.cameras[cid] = ColmapCamera(cid, model_name, c.width, c.height,
                                          DISTORTIONS[model_name](*c.params))
    ds = tmp_path / "distorted"
    write_model(ds / "sparse", model)
    link_dataset(FRAMES / "images", ds)
    conf = cfg(tmp_path, normalize=False)
    scene = load_scene(ds, conf)
    opts = pycolmap.UndistortCameraOptions()
    by_name = {im.name: im for im in model.images.values()}
    changed = 0
    for s in scene.images:
        assert s.path.is_relative_to(tmp_path / "cache" / "undistorted")
        c = model.cameras[by_name[s.name].camera_id]
        ref = pycolmap.undistort_camera(opts, pycolmap.Camera(
            model=model_name, width=c.width, height=c.height, params=c.params))
        assert (s.width, s.height) == (ref.width, ref.height) == image_size(s.path)
        np.testing.assert_allclose(s.K, ref.calibration_matrix(), rtol=1e-9)
        changed += (s.width, s.height) != (c.width, c.height)
    assert changed > 5  # the distortion really changed the cameras
    assert scene_summary(scene)["undistorted_images"] == 15
    stamps = [s.path.stat().st_mtime_ns for s in scene.images]
    events = []
    again = load_scene(ds, conf, events=events.append)
    assert [s.path.stat().st_mtime_ns for s in again.images] == stamps
    assert any(e.message.startswith("reused") for e in events)


@pytest.mark.parametrize("model_name", list(DISTORTIONS) + ["SIMPLE_PINHOLE", "PINHOLE"])
@pytest.mark.parametrize("size", [(375, 250), (376, 250), (1500, 1000)])
def test_scale_camera_is_exact(model_name, size):
    """Rescaled cameras map every camera ray to the rescaled pixel (pycolmap's projection)."""
    import pycolmap

    base = [600.0, 610.0, 370.0, 255.0]
    params = (DISTORTIONS[model_name](*base) if model_name in DISTORTIONS
              else base if model_name == "PINHOLE" else [600.0, 370.0, 255.0])
    cam = ColmapCamera(1, model_name, 750, 500, params)
    new = scale_camera(cam, *size)
    rays = np.array([[0.1, 0.2, 1.0], [0.3, -0.2, 1.0], [-0.25, 0.1, 1.0]])
    a = pycolmap.Camera(model=cam.model, width=750, height=500, params=cam.params)
    b = pycolmap.Camera(model=new.model, width=new.width, height=new.height, params=new.params)
    np.testing.assert_allclose(b.img_from_cam(rays), a.img_from_cam(rays) * [size[0] / 750,
                                                                             size[1] / 500])


def test_splatforge_workspace_and_default_cache_dirs(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    write_model(ws / "sparse" / "0", read_model(FRAMES / "sparse"))
    link_dataset(FRAMES / "images", ws)
    (ws / "sfm.json").write_text("{}")
    assert scene_cache_dir(ws, SceneConfig()) == ws / "cache"
    scene = load_scene(ws, SceneConfig(data_factor=2))
    assert all(i.path.is_relative_to(ws / "cache") for i in scene.images)
    monkeypatch.setenv("SPLATFORGE_CACHE_DIR", str(tmp_path / "global"))
    d = scene_cache_dir(FRAMES, SceneConfig())
    assert d.parent == tmp_path / "global" and d.name.startswith("dense-")
    assert d != scene_cache_dir(PLUSH, SceneConfig())
    assert scene_cache_dir(FRAMES, SceneConfig(cache_dir=tmp_path / "x")) == tmp_path / "x"


# ------------------------------------------------------------------------------------------
# transforms.json
# ------------------------------------------------------------------------------------------

def test_fox_nerfstudio_scene(fox4, fox_cache):
    import pycolmap

    scene, seconds = fox4
    meta = json.loads((FOX / "transforms.json").read_text())
    assert scene.source_format == "nerfstudio" and len(scene.images) == 67
    assert len(scene.train_indices) + len(scene.test_indices) == 67
    assert scene.points.shape == (0, 3) and scene.points_rgb.shape == (0, 3)
    # undistorted exactly as COLMAP undistorts the OPENCV camera scaled to 270x480
    cam = pycolmap.Camera(model="OPENCV", width=270, height=480, params=[
        meta["fl_x"] / 4, meta["fl_y"] / 4, meta["cx"] / 4, meta["cy"] / 4,
        meta["k1"], meta["k2"], meta["p1"], meta["p2"]])
    ref = pycolmap.undistort_camera(pycolmap.UndistortCameraOptions(), cam)
    for s in scene.images:
        assert (s.width, s.height) == (ref.width, ref.height)
        np.testing.assert_allclose(s.K, ref.calibration_matrix(), rtol=1e-9)
        assert s.path.is_relative_to(fox_cache)
    assert abs(ref.width - 270) < 10 and abs(ref.height - 480) < 15
    # first frame: camera centre = translation of transform_matrix, axes flipped y/z
    tm = np.array(meta["frames"][0]["transform_matrix"])
    first = next(s for s in scene.images if s.name == meta["frames"][0]["file_path"])
    np.testing.assert_allclose(first.camera_center, tm[:3, 3], atol=1e-9)
    np.testing.assert_allclose(first.camtoworld[:3, :3], tm[:3, :3] * [1, -1, -1], atol=1e-9)
    rgb = load_image(first)
    assert rgb.shape == (first.height, first.width, 3)


def test_fox_second_load_reuses_cache_and_json_path(fox4, fox_cache):
    scene, _ = fox4
    events = []
    again = load_scene(FOX / "transforms.json",
                       SceneConfig(cache_dir=fox_cache, data_factor=4, normalize=False),
                       events=events.append)
    assert [i.path for i in again.images] == [i.path for i in scene.images]
    assert sum(e.message.startswith("reused") for e in events) == 2  # downsample + undistort


def _fox_copy(tmp_path: Path, meta: dict | str) -> Path:
    ds = tmp_path / "fox"
    link_dataset(FOX / "images", ds)
    text = meta if isinstance(meta, str) else json.dumps(meta)
    (ds / "transforms.json").write_text(text)
    return ds


def test_transforms_intrinsics_from_angle_and_frame_overrides(tmp_path):
    meta = json.loads((FOX / "transforms.json").read_text())
    for k in ("fl_x", "fl_y", "k1", "k2", "p1", "p2", "camera_angle_y", "cx", "cy"):
        meta.pop(k)
    meta["frames"] = meta["frames"][:6]
    meta["frames"][2].update(fl_x=1000.0, fl_y=1001.0, cx=500.0, cy=900.0)
    ds = _fox_copy(tmp_path, meta)
    scene = load_scene(ds, cfg(tmp_path, normalize=False, test_every=0))
    fx = 0.5 * 1080 / math.tan(0.5 * meta["camera_angle_x"])
    names = {s.name: s for s in scene.images}
    plain = names[meta["frames"][0]["file_path"]]
    np.testing.assert_allclose(plain.K, [[fx, 0, 540], [0, fx, 960], [0, 0, 1]])
    assert plain.path == ds / meta["frames"][0]["file_path"]  # pinhole: used directly
    over = names[meta["frames"][2]["file_path"]]
    np.testing.assert_allclose(over.K, [[1000, 0, 500], [0, 1001, 900], [0, 0, 1]])
    assert over.camera_id != plain.camera_id
    assert len({s.camera_id for s in scene.images}) == 2


def test_transforms_ply_points(tmp_path):
    from plyfile import PlyData, PlyElement

    meta = json.loads((FOX / "transforms.json").read_text())
    meta.update(frames=meta["frames"][:3], k1=0, k2=0, p1=0, p2=0, ply_file_path="sparse_pc.ply")
    ds = _fox_copy(tmp_path, meta)
    v = np.zeros(4, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"),
                           ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]
    v["red"], v["green"], v["blue"] = 10, 20, 30
    PlyData([PlyElement.describe(v, "vertex")]).write(str(ds / "sparse_pc.ply"))
    scene = load_scene(ds, cfg(tmp_path, normalize=False))
    np.testing.assert_array_equal(scene.points[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(scene.points_rgb, [[10, 20, 30]] * 4)


@pytest.mark.parametrize("background", [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0)])
def test_lego_blender_scene(tmp_path, background):
    scene = load_scene(LEGO, cfg(tmp_path, background=background, normalize=False))
    assert scene.source_format == "blender"
    assert len(scene.train_indices) == 100 and len(scene.test_indices) == 25
    assert all(scene.images[i].name.startswith("train/") for i in scene.train_indices)
    assert all(scene.images[i].name.startswith("test/") for i in scene.test_indices)
    assert {(i.width, i.height) for i in scene.images} == {(400, 400)}
    assert scene.points.shape == (0, 3) and scene.points_rgb.shape == (0, 3)
    angle = json.loads((LEGO / "transforms_train.json").read_text())["camera_angle_x"]
    f = 0.5 * 400 / math.tan(0.5 * angle)
    np.testing.assert_allclose(scene.images[0].K, [[f, 0, 200], [0, f, 200], [0, 0, 1]])
    im = scene.images[scene.train_indices[0]]
    with Image.open(im.path) as f:
        assert np.asarray(f)[0, 0, 3] == 0  # the corner is transparent
    rgb = load_image(im, scene.background)
    assert rgb.shape == (400, 400, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == tuple(int(round(255 * c)) for c in background)
    assert tuple(rgb[-1, -1]) == tuple(rgb[0, 0])
    assert rgb[150:250, 150:250].std() > 10  # the model itself is there


def test_lego_data_factor_2_keeps_alpha(tmp_path):
    scene = load_scene(LEGO, cfg(tmp_path, data_factor=2, background=(0.0, 0.0, 0.0)))
    assert {(i.width, i.height) for i in scene.images} == {(200, 200)}
    np.testing.assert_allclose(scene.images[0].K[:2, 2], [100, 100])
    im = scene.images[scene.train_indices[0]]
    assert im.path.suffix == ".png" and im.path.is_relative_to(tmp_path / "cache")
    with Image.open(im.path) as f:
        assert f.mode == "RGBA"
    assert tuple(load_image(im, scene.background)[0, 0]) == (0, 0, 0)


@pytest.mark.parametrize("which", ["fox", "lego"])
def test_cameras_look_at_the_object(tmp_path, which, fox4):
    """OpenGL -> OpenCV axes are right: the point nearest to every optical axis (the object
    the cameras orbit) lies in front of every camera and near the middle of its image."""
    scene = fox4[0] if which == "fox" else load_scene(LEGO, cfg(tmp_path))
    A, b = np.zeros((3, 3)), np.zeros(3)
    for im in scene.images:
        d = im.camtoworld[:3, 2]  # +z = viewing direction in OpenCV axes
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ im.camera_center
    target = np.linalg.solve(A, b)
    for im in scene.images:
        uv, z = project(im, target[None])
        assert z[0] > 0
        assert (np.abs(uv[0] / [im.width, im.height] - 0.5) < 0.35).all(), im.name


def test_describe_scene(tmp_path, fox4):
    text = describe_scene(load_scene(PLUSH, cfg(tmp_path)))
    for part in ("colmap", "84 (train 73, test 11)", "750x500 x84", "points:       3122",
                 "PINHOLE", "normalised:   yes", "images_4"):
        assert part in text, part
    fox_text = describe_scene(fox4[0])
    assert "OPENCV" in fox_text and "67 images undistorted" in fox_text
    assert "normalised:   no" in fox_text


# ------------------------------------------------------------------------------------------
# Images and malformed inputs
# ------------------------------------------------------------------------------------------

def test_load_image_modes_and_errors(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255
    rgba[0, 1, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", (0.0, 0.0, 1.0))
    assert out.shape == (4, 5, 3)
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[1, 1]) == (0, 0, 255)
    assert tuple(out[0, 1]) == (round(200 * 128 / 255), 0, round(255 * 127 / 255))
    Image.fromarray(np.full((3, 2), 77, np.uint8), "L").save(tmp_path / "g.png")
    assert tuple(load_image(tmp_path / "g.png")[0, 0]) == (77, 77, 77)
    Image.fromarray(np.full((3, 2, 3), 9, np.uint8)).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (3, 2, 3)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InputError, match="broken.jpg.*cannot be decoded"):
        load_image(bad)
    with pytest.raises(InputError, match="broken.jpg"):
        image_size(bad)
    wrong = SceneImage("a.png", tmp_path / "a.png", 9, 9, np.eye(3), np.eye(4))
    with pytest.raises(InputError, match="5x4 but the scene expects 9x9"):
        load_image(wrong)


def _plush_copy(tmp_path: Path) -> Path:
    ds = tmp_path / "plush"
    shutil.copytree(PLUSH / "sparse", ds / "sparse")
    link_dataset(PLUSH / "images_4", ds, "images_4")
    return ds


def test_truncated_binary_files(tmp_path):
    ds = _plush_copy(tmp_path)
    model = ds / "sparse" / "0"
    for name, keep in (("cameras.bin", 30), ("images.bin", 500_000), ("points3D.bin", 1000)):
        data = (PLUSH / "sparse" / "0" / name).read_bytes()
        os.chmod(model / name, 0o644)
        (model / name).write_bytes(data[:keep])
        with pytest.raises(InputError, match=f"{name}.*truncated"):
            load_scene(ds, cfg(tmp_path))
        (model / name).write_bytes(data)
    load_scene(ds, cfg(tmp_path))  # restored copy loads
    (model / "cameras.bin").write_bytes(b"")
    with pytest.raises(InputError, match="cameras.bin"):
        load_scene(ds, cfg(tmp_path))


def test_unknown_and_unsupported_camera_models(tmp_path):
    ds = _plush_copy(tmp_path)
    path = ds / "sparse" / "0" / "cameras.bin"
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    struct.pack_into("<i", data, 12, 99)  # model id of the first camera
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="cameras.bin.*unknown camera model id 99"):
        load_scene(ds, cfg(tmp_path))
    model = read_model(PLUSH / "sparse" / "0")
    cam = model.cameras[1]
    model.cameras[1] = ColmapCamera(1, "THIN_PRISM_FISHEYE", cam.width, cam.height,
                                    list(cam.params) + [0.0] * 8)
    write_model(ds / "sparse" / "0", model)
    with pytest.raises(InputError, match="cameras.bin.*THIN_PRISM_FISHEYE"):
        load_scene(ds, cfg(tmp_path))
    model.cameras[1] = ColmapCamera(1, "FOV", cam.width, cam.height, list(cam.params) + [0.1])
    write_model(ds / "sparse" / "0", model, ".txt")
    for f in ("cameras.bin", "images.bin", "points3D.bin"):
        (ds / "sparse" / "0" / f).unlink()
    with pytest.raises(InputError, match="cameras.txt.*FOV"):
        load_scene(ds, cfg(tmp_path))


def test_missing_image_referenced_by_images_bin(tmp_path):
    ds = tmp_path / "frames"
    shutil.copytree(FRAMES / "sparse", ds / "sparse")
    (ds / "images").mkdir()
    for p in sorted((FRAMES / "images").iterdir())[1:]:
        os.symlink(p, ds / "images" / p.name)
    missing = sorted((FRAMES / "images").iterdir())[0].name
    with pytest.raises(InputError, match=f"{missing}.*not found.*images.bin"):
        load_scene(ds, cfg(tmp_path))
    shutil.rmtree(ds / "images")
    with pytest.raises(InputError, match="image folder not found"):
        load_scene(ds, cfg(tmp_path))


def test_malformed_transforms(tmp_path):
    meta = json.loads((FOX / "transforms.json").read_text())
    good = json.dumps(meta)
    ds = _fox_copy(tmp_path, good[: len(good) // 2])
    with pytest.raises(InputError, match=r"transforms.json: not valid JSON.*line 1"):
        load_scene(ds, cfg(tmp_path))
    (ds / "transforms.json").write_text(json.dumps({"fl_x": 10}))
    with pytest.raises(InputError, match="transforms.json.*no 'frames'"):
        load_scene(ds, cfg(tmp_path))
    meta["frames"] = meta["frames"][:2] + [dict(meta["frames"][2], file_path="images/nope.jpg")]
    (ds / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="nope.jpg.*not found.*transforms.json"):
        load_scene(ds, cfg(tmp_path))
    meta["frames"][2] = {"file_path": "images/0001.jpg"}
    (ds / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="frame 2 has no 'transform_matrix'"):
        load_scene(ds, cfg(tmp_path))


def test_malformed_text_model(tmp_path):
    ds = tmp_path / "txt"
    write_model(ds / "sparse", read_model(FRAMES / "sparse"), ".txt")
    link_dataset(FRAMES / "images", ds)
    images_txt = ds / "sparse" / "images.txt"
    lines = images_txt.read_text().splitlines()
    del lines[5]  # the keypoint line of the first image
    images_txt.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="images.txt: line 6: expected the keypoint line"):
        load_scene(ds, cfg(tmp_path))
    (ds / "sparse" / "cameras.txt").write_text("1 PINHOLE 10 10 1 2 3\n")
    with pytest.raises(InputError, match="cameras.txt: line 1: camera model PINHOLE needs 4"):
        load_scene(ds, cfg(tmp_path))


def test_unknown_layout_lists_what_was_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as e:
        load_scene(tmp_path / "empty")
    msg = str(e.value)
    for part in ("transforms.json", "transforms_train.json", "sparse/0", "dense/sparse"):
        assert part in msg
    with pytest.raises(InputError, match="does not exist"):
        load_scene(tmp_path / "nowhere")


def test_colmap_model_in_root_folder(tmp_path):
    ds = tmp_path / "flat"
    write_model(ds, read_model(FRAMES / "sparse"), ".txt")
    link_dataset(FRAMES / "images", ds)
    assert detect_format(ds)[2] == ds
    assert len(load_scene(ds, cfg(tmp_path)).images) == 15
