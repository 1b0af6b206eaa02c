"""Render jobs (``POST /scenes/{id}/renders``) through a real server: the job renders with the
renderer of ``splatforge render`` (antialiased models stay antialiased), and a request whose
frame rate or frame count cannot make a video is refused with a 422."""

from __future__ import annotations

import json

import numpy as np
import pytest
from service_helpers import TINY_JOB, Server, scene_with_source, wait_job


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("svc-render"), max_jobs=1).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def trained(server):
    """A scene trained for a few steps with antialiased rasterization."""
    with server.client() as c:
        sid = scene_with_source(c)
        body = {**TINY_JOB, "train": {**TINY_JOB["train"], "max_steps": 10,
                                      "antialiased": True}}
        job = wait_job(c, c.post(f"/scenes/{sid}/jobs", json=body).json()["job_id"])
        assert job["status"] == "succeeded", job
    return sid


def _frames(path) -> np.ndarray:
    import av

    with av.open(str(path)) as f:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])


@pytest.mark.parametrize("render", [{"fps": 1e-300}, {"fps": 0}, {"frames": 0},
                                    {"fps": 120, "path": "orbit", "frames": 3001}])
def test_render_request_without_frames_is_422(server, trained, render):
    with server.client() as c:
        r = c.post(f"/scenes/{trained}/renders", json=render)
        assert r.status_code == 422, r.text
        assert "fps" in r.text or "frames" in r.text


def test_render_job_equals_cli_render_of_antialiased_model(server, trained, tmp_path):
    from splatforge.cli import main

    with server.client() as c:
        r = c.post(f"/scenes/{trained}/renders", json={"path": "orbit", "frames": 3, "fps": 3})
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["job_id"])
        assert job["status"] == "succeeded", job
        (tmp_path / "job.mp4").write_bytes(
            c.get(f"/scenes/{trained}/artifacts/{job['metrics']['video']}").content)
        # the published model folder, as a user downloads it
        model = tmp_path / "model"
        names = c.get(f"/scenes/{trained}/artifacts").json()
        names = [a["name"] if isinstance(a, dict) else a
                 for a in (names.get("artifacts", names) if isinstance(names, dict) else names)]
        for name in names:
            if name.startswith("point_cloud/") or name in ("cfg_args", "config.json",
                                                           "cameras.json"):
                (model / name).parent.mkdir(parents=True, exist_ok=True)
                (model / name).write_bytes(c.get(f"/scenes/{trained}/artifacts/{name}").content)
    assert json.loads((model / "config.json").read_text())["train"]["antialiased"]
    assert main(["render", str(model), "-o", str(tmp_path / "cli.mp4"), "--frames", "3",
                 "--fps", "3"]) == 0
    # the same model rendered in classic mode, to show the comparison tells them apart
    classic = tmp_path / "classic"
    classic.mkdir()
    for p in model.rglob("*"):
        if p.is_file():
            (classic / p.relative_to(model)).parent.mkdir(parents=True, exist_ok=True)
            (classic / p.relative_to(model)).write_bytes(p.read_bytes())
    cfg = json.loads((model / "config.json").read_text())
    cfg["train"]["antialiased"] = False
    (classic / "config.json").write_text(json.dumps(cfg))
    assert main(["render", str(classic), "-o", str(tmp_path / "classic.mp4"), "--frames", "3",
                 "--fps", "3"]) == 0
    job_f, cli_f, classic_f = (_frames(tmp_path / n) for n in ("job.mp4", "cli.mp4",
                                                               "classic.mp4"))
    assert job_f.shape == cli_f.shape == classic_f.shape
    d_cli = np.abs(job_f.astype(float) - cli_f).mean()
    d_classic = np.abs(job_f.astype(float) - classic_f).mean()
    assert d_cli < 1.0, d_cli
    assert d_cli < d_classic / 2, (d_cli, d_classic)
