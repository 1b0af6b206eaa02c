"""360 input: equirectangular frames with known poses, split into a cube rig and registered.

Test data: plush_dog's gsplat-trained splat (``third_party_ply/point_cloud_29999_clean.ply``)
is rendered into the six cube faces of a 360 camera at eight known poses on an arc around the
toy, inside a box room whose walls carry sceaux_castle photos (texture for every face, as a
real room has), and the faces are stitched into 768x384 equirectangular frames with numpy. The
toy is drawn as depth-sorted splat footprints (each Gaussian's centre, colour (SH band 0) and
projected size) rather than with the torch rasterizer: on this shared 2-core CPU one 160 px
torch-rasterized face took 66-77 s, this renderer takes milliseconds, and SfM needs texture,
not photometric accuracy. The frames then go through ``run_sfm`` (resampled back into cube
faces, one rig) and the recovered view rotations are compared with the rendering poses after a
similarity alignment.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from splatforge.config import SfmConfig
from splatforge.errors import InputError
from splatforge.ingest.equirect import (
    PinholeView,
    directions_to_equirect,
    equirect_to_view,
    is_equirect_size,
    make_views,
    view_directions,
)

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
PLY = DATASETS / "plush_dog" / "third_party_ply" / "point_cloud_29999_clean.ply"
FACE = 192
EQ_W, EQ_H = 4 * FACE, 2 * FACE
C0 = 0.28209479177387814  # SH band-0 constant (gsplat / INRIA sh_utils.py)


def _look_at(eye: np.ndarray, target: np.ndarray, yaw_deg: float) -> np.ndarray:
    """[4, 4] world-to-rig (OpenCV axes) of a camera at ``eye`` facing ``target``, then turned
    ``yaw_deg`` to the left about its vertical axis (world +y is down in this splat)."""
    z = target - eye
    z /= np.linalg.norm(z)
    y = np.array([0.0, 1.0, 0.0])
    y = y - z * (y @ z)
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    R = np.stack([x, y, z])  # rows: rig axes in world coordinates
    a = math.radians(yaw_deg)
    turn = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    R = turn @ R
    vm = np.eye(4)
    vm[:3, :3] = R
    vm[:3, 3] = -R @ eye
    return vm


def _texture(path: Path) -> np.ndarray:
    """[384, 512, 3] uint8 of a photo (JPEG decoded at reduced scale: fast)."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (512, 384))
        return np.asarray(im.convert("RGB").resize((512, 384)))


def _room(viewmat: np.ndarray, view: PinholeView, room: dict) -> np.ndarray:
    """[s, s, 3] uint8: the walls of an axis-aligned box around the toy, each textured with a
    real photo, seen through ``view`` (per-pixel ray-box intersection, nearest texel)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    eye = -R.T @ t
    d = view_directions(view) @ view.cam_from_rig.T @ R  # camera rays -> world
    d = d.reshape(-1, 3)
    lo, hi = room["centre"] - room["half"], room["centre"] + room["half"]
    with np.errstate(divide="ignore", invalid="ignore"):
        tt = np.where(d > 0, (hi - eye) / d, (lo - eye) / d)
    tt = np.where(np.isfinite(tt) & (tt > 0), tt, np.inf)
    axis = tt.argmin(1)
    hit = eye + d * tt.min(1, keepdims=True)
    out = np.zeros((len(d), 3), np.uint8)
    for a in range(3):
        for side in (0, 1):
            m = (axis == a) & ((d[:, a] > 0) == bool(side))
            if not m.any():
                continue
            b, c = [k for k in range(3) if k != a]
            tex = room["textures"][2 * a + side]
            th, tw = tex.shape[:2]
            fu = (hit[m, b] - lo[b]) / (hi[b] - lo[b])
            fv = (hit[m, c] - lo[c]) / (hi[c] - lo[c])
            out[m] = tex[np.clip((fv * th).astype(int), 0, th - 1),
                         np.clip((fu * tw).astype(int), 0, tw - 1)]
    return out.reshape(view.size, view.size, 3)


def _render_face(splats: dict, viewmat: np.ndarray, view: PinholeView,
                 room: dict) -> np.ndarray:
    """[s, s, 3] uint8: the textured room, then every Gaussian of the toy drawn as a disc of
    its projected 1-sigma radius, far to near."""
    s = view.size
    img = _room(viewmat, view, room)
    cam = splats["means"] @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    keep = (z > 0.02) & (splats["alpha"] > 0.3)
    cam, z = cam[keep], z[keep]
    rgb = splats["rgb"][keep]
    sigma = splats["sigma"][keep]
    u = view.focal * cam[:, 0] / z + s / 2.0
    v = view.focal * cam[:, 1] / z + s / 2.0
    r = np.clip(view.focal * sigma / z, 0.5, 4.0)
    order = np.argsort(-z)
    u, v, r, rgb = u[order], v[order], r[order], rgb[order]
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            m = dx * dx + dy * dy <= r * r
            x = np.floor(u[m] + dx).astype(int)
            y = np.floor(v[m] + dy).astype(int)
            ok = (x >= 0) & (x < s) & (y >= 0) & (y < s)
            img[y[ok], x[ok]] = rgb[m][ok]
    # later (nearer) discs overwrite earlier ones per offset; redraw centres nearest-last
    x, y = np.floor(u).astype(int), np.floor(v).astype(int)
    ok = (x >= 0) & (x < s) & (y >= 0) & (y < s)
    img[y[ok], x[ok]] = rgb[ok]
    return img


def _stitch(faces: list[np.ndarray], views: list[PinholeView], w: int, h: int) -> np.ndarray:
    """Equirectangular [h, w, 3] uint8 from cube faces: each pixel's direction goes to the face
    it lies most centrally in (nearest-pixel lookup)."""
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    lon = 2 * math.pi * (u / w - 0.5)
    lat = math.pi * (0.5 - v / h)
    d = np.stack([np.cos(lat) * np.sin(lon), -np.sin(lat), np.cos(lat) * np.cos(lon)], -1)
    out = np.zeros((h, w, 3), np.uint8)
    best = np.full((h, w), -np.inf)
    for face, view in zip(faces, views):
        c = d @ view.cam_from_rig.T
        zc = c[..., 2]
        better = zc > best
        x = view.focal * c[..., 0] / np.maximum(zc, 1e-9) + view.size / 2.0
        y = view.focal * c[..., 1] / np.maximum(zc, 1e-9) + view.size / 2.0
        xi = np.clip(np.floor(x).astype(int), 0, view.size - 1)
        yi = np.clip(np.floor(y).astype(int), 0, view.size - 1)
        out[better] = face[yi[better], xi[better]]
        best = np.where(better, zc, best)
    return out


@pytest.fixture(scope="module")
def frames_360(tmp_path_factory):
    from PIL import Image

    from splatforge.export import read_ply

    raw = read_ply(PLY)
    splats = {
        "means": raw["means"].astype(np.float64),
        "rgb": np.clip((raw["sh0"][:, 0] * C0 + 0.5) * 255, 0, 255).astype(np.uint8),
        "sigma": np.exp(raw["scales"]).max(1),
        "alpha": 1 / (1 + np.exp(-raw["opacities"])),
    }
    centre = np.median(splats["means"], 0)
    photos = sorted((DATASETS / "sceaux_castle" / "images").iterdir())[:6]
    room = {"centre": centre, "half": np.array([1.2, 0.8, 1.2]),
            "textures": [_texture(p) for p in photos]}
    views = make_views("cube", size=FACE)
    src = tmp_path_factory.mktemp("frames360")
    rig_vms = {}
    for k, a in enumerate(np.linspace(-40, 40, 8)):
        t = math.radians(a)
        eye = centre + 0.4 * np.array([math.sin(t), -0.15, -math.cos(t)])
        vm = _look_at(eye, centre, yaw_deg=-30.0 + 4.0 * k)  # the toy straddles two faces
        faces = [_render_face(splats, _compose(v, vm), v, room) for v in views]
        name = f"frame_{k:04d}"
        Image.fromarray(_stitch(faces, views, EQ_W, EQ_H)).save(src / f"{name}.png")
        rig_vms[name] = vm
    return src, rig_vms, views


def _compose(view: PinholeView, rig_vm: np.ndarray) -> np.ndarray:
    vm = np.eye(4)
    vm[:3, :3] = view.cam_from_rig @ rig_vm[:3, :3]
    vm[:3, 3] = view.cam_from_rig @ rig_vm[:3, 3]
    return vm


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """s, R, t minimising |dst - (s R src + t)|^2 (Umeyama 1991, IEEE TPAMI 13(4))."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    R = U @ D @ Vt
    s = np.trace(np.diag(S) @ D) / (a ** 2).sum(1).mean()
    return s, R, md - s * R @ ms


def _angle_deg(R: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)))


# -- resampling ------------------------------------------------------------------------------

def test_cube_faces_and_equirect_round_trip():
    views = make_views("cube", size=32)
    assert [v.name for v in views] == ["front", "right", "back", "left", "up", "down"]
    for v in views:
        assert np.allclose(v.cam_from_rig @ v.cam_from_rig.T, np.eye(3))
        assert abs(np.linalg.det(v.cam_from_rig) - 1) < 1e-12
    # The centre ray of each face: front +z, right +x, up -y (OpenCV axes, y down).
    centre = {v.name: view_directions(PinholeView(v.name, v.cam_from_rig, 2, 90.0)).mean((0, 1))
              for v in views}
    assert np.allclose(centre["front"] / np.linalg.norm(centre["front"]), [0, 0, 1])
    assert np.allclose(centre["right"] / np.linalg.norm(centre["right"]), [1, 0, 0])
    assert np.allclose(centre["up"] / np.linalg.norm(centre["up"]), [0, -1, 0])
    # An equirect image coloured by direction resamples into faces whose pixels carry their
    # own ray directions.
    w, h = 512, 256
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    lon, lat = 2 * np.pi * (u / w - 0.5), np.pi * (0.5 - v / h)
    d = np.stack([np.cos(lat) * np.sin(lon), -np.sin(lat), np.cos(lat) * np.cos(lon)], -1)
    img = np.clip(np.rint((d + 1) * 127.5), 0, 255).astype(np.uint8)
    for view in views:
        face = equirect_to_view(img, view).astype(float) / 127.5 - 1
        want = view_directions(view)
        assert np.abs(face - want)[4:-4, 4:-4].max() < 0.06, view.name
    uu, vv = directions_to_equirect(np.array([0.0, 0.0, 1.0]), w, h)
    assert abs(uu - (w / 2 - 0.5)) < 1e-9 and abs(vv - (h / 2 - 0.5)) < 1e-9


def test_ring_layout_overlaps_and_validates():
    views = make_views("ring", size=64, fov_deg=100, num_views=6)
    assert len(views) == 8 and views[-2].name == "up" and views[-1].name == "down"
    assert views[1].name == "yaw060" and views[0].fov_deg == 100
    with pytest.raises(ValueError, match="90-degree"):
        make_views("cube", fov_deg=120)
    with pytest.raises(ValueError, match="num_views"):
        make_views("ring", num_views=2)
    assert is_equirect_size(3840, 1920) and not is_equirect_size(1920, 1080)


def test_explicit_equirect_with_a_non_2_1_frame_is_a_clear_error(tmp_path):
    import shutil

    from splatforge.sfm import run_sfm

    src = tmp_path / "src"
    src.mkdir()
    for p in sorted((DATASETS / "plush_dog" / "images_4").iterdir())[:3]:
        shutil.copy(p, src / p.name)
    with pytest.raises(InputError) as e:
        run_sfm(SfmConfig(camera_model="equirectangular"), src, tmp_path / "ws")
    assert "not an equirectangular (2:1)" in str(e.value) and "750x500" in str(e.value)


# -- SfM with the rig --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sfm_360(frames_360, tmp_path_factory):
    from splatforge.sfm import run_sfm

    src, rig_vms, views = frames_360
    ws = tmp_path_factory.mktemp("ws360")
    events = []
    res = run_sfm(SfmConfig(num_threads=1, max_num_features=2048), src, ws, events.append)
    return ws, res, events, rig_vms, views


def test_360_frames_are_detected_split_and_registered_as_one_rig(sfm_360):
    ws, res, events, rig_vms, views = sfm_360
    assert any("every frame is 2:1 (768x384)" in e.message for e in events)
    assert res.num_images == 8 * 6
    assert res.num_registered == 48, res.unregistered
    assert res.mean_reprojection_error < 1.5
    names = sorted(p.relative_to(ws / "images").as_posix()
                   for p in (ws / "images").rglob("*.jpg"))
    assert len(names) == 48 and "front/frame_0000.jpg" in names
    split = [e for e in events if e.kind == "progress" and e.message == "split 360 frames"]
    assert split[-1].step == split[-1].total == 8


def test_360_view_poses_match_the_rendering_poses(sfm_360):
    from splatforge.scene.colmap import read_model

    ws, res, _, rig_vms, views = sfm_360
    model = read_model(ws / "sparse" / "0", read_points2D=False)
    by_view = {v.name: v for v in views}
    est_c, true_c, est_R, true_R = [], [], [], []
    for im in model.images.values():
        view_name, frame = im.name.split("/")
        true = _compose(by_view[view_name], rig_vms[Path(frame).stem])
        est = im.viewmat()
        est_R.append(est[:3, :3])
        true_R.append(true[:3, :3])
        est_c.append(-est[:3, :3].T @ est[:3, 3])
        true_c.append(-true[:3, :3].T @ true[:3, 3])
    s, Ra, t = _umeyama(np.array(true_c), np.array(est_c))
    # world_est = s Ra world_true + t, so R_true ~ R_est @ Ra.
    errs = [_angle_deg(Re @ Ra @ Rt.T) for Re, Rt in zip(est_R, true_R)]
    assert max(errs) < 1.0, sorted(errs)[-5:]
    # Views of one frame share one centre (zero rig translations).
    centres: dict[str, list[np.ndarray]] = {}
    for im, c in zip(model.images.values(), est_c):
        centres.setdefault(im.name.split("/")[1], []).append(c)
    spread = max(np.ptp(np.array(cs), 0).max() for cs in centres.values())
    assert spread < 1e-6
    sfm = json.loads((ws / "sfm.json").read_text())
    assert sfm["num_registered"] == 48


def test_360_workspace_loads_and_trains_as_pinhole_views(sfm_360, tmp_path):
    """The rig's views are ordinary PINHOLE images in subfolders: the scene reader takes them
    and a few training steps run and lower the loss."""
    from splatforge.config import SceneConfig, TrainConfig
    from splatforge.scene import load_scene
    from splatforge.train import run_train

    ws = sfm_360[0]
    sc_cfg = SceneConfig(data_factor=4, cache_dir=tmp_path / "cache")
    scene = load_scene(ws, sc_cfg)
    assert len(scene.images) == 48
    assert {Path(n).parts[0] for n in (im.name for im in scene.images)} == {
        "front", "right", "back", "left", "up", "down"}
    events = []
    cfg = TrainConfig(max_steps=30, log_every=5, sh_degree=0, strategy="default",
                      densify_from_iter=1000, device="cpu", seed=0)
    res = run_train(cfg, scene, tmp_path / "model", events.append, scene_config=sc_cfg)
    losses = [e.data["loss"] for e in events if e.kind == "progress" and "loss" in e.data]
    # each logged loss is one random view's: compare the means of the first and last three
    assert len(losses) >= 6 and sum(losses[-3:]) < sum(losses[:3])
    assert res.num_gaussians > 0
    assert (tmp_path / "model" / "point_cloud" / "iteration_30" / "point_cloud.ply").is_file()
