"""The viewer without a browser: display conversion and subsampling, the inputs
``splatforge view`` accepts, the page's controls, the CLI on a real port, the viewer manager
(start on demand, reuse, idle stop) and the job service's ``GET /scenes/{id}/view`` on a real
uvicorn server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import PLUSH_DOG


def _quat_z(angle: float) -> np.ndarray:
    return np.array([np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)])


def test_display_splats_covariance_colour_opacity():
    from splatforge.viewer.data import SH_C0, display_splats

    n = 3
    splats = {
        "means": np.arange(9, dtype=np.float32).reshape(n, 3),
        "scales": np.log(np.array([[1, 2, 3]] * n, np.float32)),
        "quats": np.stack([_quat_z(np.pi / 2) * 2.0] * n),  # not unit: normalised
        "opacities": np.array([0.0, 2.0, np.nan], np.float32),  # the NaN row is dropped
        "sh0": np.array([[[0, 0, 0]], [[1 / SH_C0, -1 / SH_C0, 0.1]], [[0, 0, 0]]],
                        np.float32),
    }
    d = display_splats(splats)
    assert (d.total, d.shown, d.subsampled) == (2, 2, False)
    # Rz(90) diag(1, 4, 9) Rz(90)^T = diag(4, 1, 9)
    np.testing.assert_allclose(d.covariances[0], np.diag([4.0, 1.0, 9.0]), atol=1e-5)
    np.testing.assert_allclose(d.rgbs[0], [0.5, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(d.rgbs[1], [1.0, 0.0, 0.5 + SH_C0 * 0.1], atol=1e-6)
    np.testing.assert_allclose(d.opacities[:, 0], [0.5, 1 / (1 + np.exp(-2.0))], atol=1e-6)
    np.testing.assert_array_equal(d.centers, splats["means"][:2])
    with pytest.raises(ValueError, match="max_splats"):
        display_splats(splats, max_splats=0)
    with pytest.raises(ValueError, match="means/scales"):
        display_splats({"means": splats["means"]})


def test_display_splats_subsamples_above_the_budget():
    from splatforge.viewer.data import display_splats

    rng = np.random.default_rng(1)
    n = 5000
    splats = {"means": rng.normal(size=(n, 3)).astype(np.float32),
              "scales": np.full((n, 3), -3.0, np.float32),
              "quats": np.tile([1.0, 0, 0, 0], (n, 1)).astype(np.float32),
              "opacities": np.zeros(n, np.float32), "sh0": np.zeros((n, 1, 3), np.float32)}
    d = display_splats(splats, max_splats=700)
    assert (d.total, d.shown, d.subsampled) == (n, 700, True)
    assert d.centers.shape == (700, 3) and d.covariances.shape == (700, 3, 3)
    # a subset of the real rows, no duplicates, the same every time (fixed seed)
    rows = {tuple(r) for r in splats["means"]}
    assert all(tuple(r) in rows for r in d.centers)
    assert len({tuple(r) for r in d.centers}) == 700
    np.testing.assert_array_equal(d.centers, display_splats(splats, max_splats=700).centers)


def test_view_sources(trained_plush, tmp_path):
    """Model folder, its PLY, a .splat, a reconstruct output folder and a dataset (cameras +
    SfM points only) all load; cameras agree between cameras.json and the dataset reader."""
    from splatforge.errors import InputError
    from splatforge.export import read_splats, write_splats
    from splatforge.viewer import load_view_source
    from splatforge.viewer.data import latest_point_cloud, up_direction

    model = trained_plush.model_dir
    ply = latest_point_cloud(model)
    assert ply is not None and ply.parent.name == "iteration_300"
    src = load_view_source(model)
    assert src.splats_path == ply
    assert len(src.splats["means"]) == trained_plush.result.num_gaussians
    assert len(src.cameras) == 84 and len(src.points) == 3122
    assert src.points_rgb.dtype == np.uint8 and src.points_rgb.max() > 0

    file_src = load_view_source(ply)  # the model folder's cameras and points come along
    assert file_src.splats_path == ply and len(file_src.cameras) == 84
    alone = shutil.copy(ply, tmp_path / "alone.ply")  # nothing beside it
    alone_src = load_view_source(alone)
    assert alone_src.cameras == [] and len(alone_src.points) == 0

    splat_file = write_splats(tmp_path / "m.splat", read_splats(ply))
    assert len(load_view_source(splat_file).splats["means"]) == len(src.splats["means"])

    out = tmp_path / "recon"
    shutil.copytree(model, out / "model", ignore=shutil.ignore_patterns("ckpts"))
    assert load_view_source(out).splats_path == out / "model" / ply.relative_to(model)

    data = load_view_source(PLUSH_DOG)  # cameras and points only
    assert data.splats is None and len(data.cameras) == 84 and len(data.points) == 3122
    by_name = {Path(c.name).stem: c for c in data.cameras}
    for cam in src.cameras:
        other = by_name[cam.name]
        np.testing.assert_allclose(cam.camtoworld, other.camtoworld, atol=1e-5)
        assert (cam.width, cam.height) == (94, 62)  # trained at data_factor 8
        assert abs(cam.fov_y - other.fov_y) < 0.02
    up = up_direction(src.cameras)
    assert abs(np.linalg.norm(up) - 1) < 1e-9
    # every camera's up vector is within 90 degrees of the scene's up
    assert np.all([(-c.camtoworld[:3, 1]) @ up > 0 for c in src.cameras])

    with pytest.raises(InputError, match="does not exist"):
        load_view_source(tmp_path / "missing.ply")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="unknown file type"):
        load_view_source(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="not a readable dataset"):
        load_view_source(empty)


def test_page_controls_several_models_and_subsample_notice(trained_plush):
    """Two models on one page, each with visibility and transform controls; the budget
    subsamples them and the page says so; camera/point toggles; look-through; up reset."""
    from splatforge.viewer import SplatViewer, load_view_source

    src = load_view_source(trained_plush.model_dir)
    n = len(src.splats["means"])
    viewer = SplatViewer("127.0.0.1", 0, max_splats=1000)
    try:
        a = viewer.add_source(src)
        b = viewer.add_source(src)
        assert (a.index, b.index) == (0, 1) and a.root != b.root
        assert a.display.shown == 1000 and a.display.total == n
        assert f"1,000 of {n:,} splats" in viewer.notice.content
        assert "1,000 shown" in a.info_markdown.content
        # the page is served
        r = httpx.get(viewer.url, timeout=10)
        assert r.status_code == 200 and "<html" in r.text.lower()
        # visibility per model
        b.visible_checkbox.value = False
        assert b.frame.visible is False and a.frame.visible is True
        # transform controls move the whole model (splats, cameras, points)
        viewer.set_model_transform(b, _quat_z(np.pi / 2), (1.0, 2.0, 3.0))
        np.testing.assert_allclose(b.frame.position, (1.0, 2.0, 3.0))
        np.testing.assert_allclose(b.gizmo.position, (1.0, 2.0, 3.0))
        np.testing.assert_allclose(a.frame.position, (0.0, 0.0, 0.0))
        wxyz, pos = viewer.model_pose(b, src.cameras[0].camtoworld)
        c = src.cameras[0].camtoworld[:3, 3]
        np.testing.assert_allclose(pos, np.array([-c[1], c[0], c[2]]) + [1, 2, 3], atol=1e-6)
        # toggles
        assert all(h.visible for h in a.camera_handles) and len(a.camera_handles) == 84
        viewer.show_cameras.value = False
        assert not any(h.visible for h in a.camera_handles + b.camera_handles)
        assert a.points_handle.visible is False
        viewer.show_points.value = True
        assert a.points_handle.visible and b.points_handle.visible
        viewer.set_up(np.array([0.0, 0.0, 2.0]))
        np.testing.assert_allclose(viewer.up, [0, 0, 1])
    finally:
        viewer.stop()


def _wait_port_closed(port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.2)
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_view_serves_until_interrupted(trained_plush, tmp_path):
    """``splatforge view a.ply b.ply`` prints the models and the URL; the page answers."""
    import signal

    ply = next((trained_plush.model_dir / "point_cloud").glob("iteration_100/*.ply"))
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "splatforge", "view", str(trained_plush.model_dir), str(ply),
         "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"view exited early: {''.join(lines)}"
            lines.append(line)
            if line.startswith("viewer: "):
                break
        text = "".join(lines)
        assert f"viewer: http://127.0.0.1:{port}/" in text
        assert "model 0:" in text and "84 cameras, 3122 SfM points" in text
        assert "model 1:" in text
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert _wait_port_closed(port)

    bad = subprocess.run([sys.executable, "-m", "splatforge", "view", str(tmp_path / "x.ply")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "x.ply: does not exist" in bad.stderr


def test_viewer_manager_reuses_and_stops_idle(trained_plush, tmp_path):
    from splatforge.errors import InputError
    from splatforge.viewer import ViewerManager

    manager = ViewerManager(idle_seconds=30, check_every=0)
    try:
        a = manager.get_or_start("s1", trained_plush.model_dir, version="v1")
        assert httpx.get(a.url, timeout=10).status_code == 200
        assert manager.get_or_start("s1", trained_plush.model_dir, version="v1") is a
        b = manager.get_or_start("s2", trained_plush.model_dir)
        assert b.port != a.port and sorted(manager.keys()) == ["s1", "s2"]
        a2 = manager.get_or_start("s1", trained_plush.model_dir, version="v2")  # new model
        assert a2 is not a and _wait_port_closed(a.port)
        assert manager.reap(now=time.monotonic() + 10) == []  # not idle yet
        assert sorted(manager.reap(now=time.monotonic() + 31)) == ["s1", "s2"]
        assert manager.keys() == [] and _wait_port_closed(a2.port) and \
            _wait_port_closed(b.port)
        with pytest.raises(InputError):
            manager.get_or_start("s3", tmp_path / "missing")
        assert manager.keys() == []
    finally:
        manager.close()
    with pytest.raises(ValueError, match="idle_seconds"):
        ViewerManager(idle_seconds=0)


def test_service_view_route(trained_plush, tmp_path):
    """``GET /scenes/{id}/view`` on a real uvicorn server with an API key: 307 to the
    service's signed proxy of a viewer of the scene's latest model (started on demand on
    127.0.0.1, reused); the page and its websocket answer only with that scene's token
    (issue 14, probe 2); 404s; the idle viewer stopped."""
    import asyncio

    import uvicorn
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    from splatforge.service.app import create_app
    from splatforge.service.db import Job, Scene, session_scope
    from splatforge.service.settings import ServiceSettings

    settings = ServiceSettings(data_dir=tmp_path / "data", viewer_idle_seconds=2,
                               api_key="view-key")
    app = create_app(settings, start_executor=False)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer view-key"}
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.1)
        store = app.state.storage
        model = trained_plush.model_dir
        # what a finished job publishes (splatforge.jobs.artifact_files): the INRIA layout
        store.put_file("outputs/scene1/point_cloud/iteration_300/point_cloud.ply",
                       model / "point_cloud" / "iteration_300" / "point_cloud.ply")
        for name in ("cameras.json", "input.ply", "metrics.json"):
            store.put_file(f"outputs/scene1/{name}", model / name)
        now = time.time()
        with session_scope(settings) as s:
            s.add(Scene(id="scene1", name="plush"))
            s.add(Scene(id="scene2", name="no model yet"))
            s.flush()
            s.add(Job(id="job1", scene_id="scene1", status="succeeded", finished_at=now))
        with httpx.Client(base_url=base, timeout=60) as http:
            assert http.get("/scenes/scene1/view").status_code == 401  # no key
            r = http.get("/scenes/scene1/view", headers=auth)
            assert r.status_code == 307, r.text
            url = r.headers["location"]
            assert url.startswith("/scenes/scene1/viewer/?token=")
            token = url.split("token=", 1)[1]
            manager = app.state.viewer_manager
            mv = manager.get("scene1")
            assert mv.viewer.host == "127.0.0.1" and mv.port != port
            # without the token, with another scene's path, or forged: refused
            assert http.get("/scenes/scene1/viewer/").status_code == 401
            assert http.get(f"/scenes/scene2/viewer/?token={token}").status_code == 401
            forged = token[:-1] + ("1" if token.endswith("0") else "0")  # one hex digit off
            assert http.get("/scenes/scene1/viewer/?token=" + forged).status_code == 401
            page = http.get(url)  # no API key: the link is the key
            assert page.status_code == 200 and "<html" in page.text.lower()
            assert "splatforge_viewer" in page.headers["set-cookie"]
            assert mv.viewer.models[0].display.total == trained_plush.result.num_gaussians
            assert len(mv.viewer.models[0].cameras) == 84

            async def ws(cookie: str | None) -> bytes:
                headers = {"Cookie": f"splatforge_viewer={cookie}"} if cookie else {}
                async with connect(f"ws://127.0.0.1:{port}/scenes/scene1/viewer",
                                   additional_headers=headers, open_timeout=30,
                                   subprotocols=[f"viser-v{_viser_version()}"]) as c:
                    return await asyncio.wait_for(c.recv(), 30)

            first = asyncio.run(ws(token))  # the viewer's first message, relayed
            assert isinstance(first, bytes) and len(first) > 0
            with pytest.raises(InvalidStatus):
                asyncio.run(ws(None))
            assert http.get("/scenes/scene1/view", headers=auth).status_code == 307
            assert manager.get("scene1") is mv  # reused
            job = http.get("/jobs/job1", headers=auth)
            assert job.status_code == 200 and "/scenes/scene1/view" in json.dumps(job.json())
            r = http.get("/scenes/scene2/view", headers=auth)
            assert r.status_code == 404 and "no trained model" in r.text
            assert http.get("/scenes/nope/view", headers=auth).status_code == 404
            # idle (no browser, no request for 2 s): stopped by the manager's thread
            assert _wait_port_closed(mv.port, timeout=20)
            assert manager.keys() == []
            assert http.get(url).status_code == 404  # a valid link, but no viewer runs
            # asked again: started again
            r = http.get("/scenes/scene1/view", headers=auth)
            assert r.status_code == 307
            assert http.get(r.headers["location"]).status_code == 200
    finally:
        mgr = getattr(app.state, "viewer_manager", None)
        if mgr is not None:
            mgr.close()
        server.should_exit = True
        thread.join(timeout=30)


def _viser_version() -> str:
    import viser

    return viser.__version__


def test_cli_train_with_viewer(plush_scene, plush_cache, tmp_path):
    """``splatforge train --viewer``: the URL is printed, the page answers while training, and
    the run finishes (``--no-viewer-keep-open``) with its model."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "model"
    proc = subprocess.Popen(
        [sys.executable, "-m", "splatforge", "train", str(PLUSH_DOG), "-o", str(out),
         "--data-factor", "8", "--cache-dir", str(plush_cache), "--max-steps", "8",
         "--device", "cpu", "--viewer", "--viewer-port", "0", "--viewer-refresh-every", "4",
         "--no-viewer-keep-open"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        url = None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("viewer: http://127.0.0.1:"):
                url = line.split()[1]
                assert httpx.get(url, timeout=10).status_code == 200
                break
        rest, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines) + rest
    assert url is not None, text
    assert proc.returncode == 0, text
    assert "trained 8 steps" in text
    assert (out / "point_cloud" / "iteration_8" / "point_cloud.ply").is_file()
    assert _wait_port_closed(int(url.rsplit(":", 1)[1].strip("/")))
