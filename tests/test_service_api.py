"""The job service's HTTP API on a real ``splatforge serve`` process (uvicorn on a free
port, worker processes, real training), against SQLite and against PostgreSQL.

Jobs are tiny (plush_dog at data_factor 8, 30 steps on CPU, about 10 s each)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from conftest import PLUSH_DOG
from service_helpers import (
    TINY_JOB,
    Server,
    new_scene,
    plush_zip_bytes,
    postgres_database,
    read_sse,
    scene_with_source,
    wait_job,
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    data = tmp_path_factory.mktemp(f"svc-{request.param}")
    if request.param == "sqlite":
        srv = Server(data, max_jobs=2, max_upload_mb=64).start()
        try:
            yield srv
        finally:
            srv.stop()
        return
    with postgres_database() as url:
        srv = Server(data, url, max_jobs=2, max_upload_mb=64).start()
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def finished_job(server, client):
    """A scene uploaded as a zip of a COLMAP dataset and one tiny job run to the end, with
    the SSE stream read while it ran."""
    sid = new_scene(client, "zip upload")
    r = client.post(f"/scenes/{sid}/media",
                    files=[("files", ("plush.zip", plush_zip_bytes(), "application/zip"))])
    assert r.status_code == 200, r.text
    assert r.json()["media_kind"] == "dataset"
    r = client.post(f"/scenes/{sid}/jobs", json=TINY_JOB)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"/jobs/{job_id}"
    events = read_sse(client, f"/jobs/{job_id}/events")
    job = wait_job(client, job_id)
    return {"scene_id": sid, "job_id": job_id, "job": job, "events": events}


def test_health_docs_and_openapi(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["database"]
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/scenes", "/scenes/{scene_id}/media", "/scenes/{scene_id}/jobs",
              "/jobs/{job_id}", "/jobs/{job_id}/events", "/jobs/{job_id}/log",
              "/jobs/{job_id}/cancel", "/scenes/{scene_id}/artifacts",
              "/scenes/{scene_id}/artifacts/{name}", "/scene/{scene_id}/train_gsplat",
              "/scene/{scene_id}/train_gsplat/status", "/scene/{scene_id}/gsplat/model"):
        assert p in paths, p
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"JobOut", "JobCreated", "SceneDetail", "ArtifactList"} <= set(schemas)
    assert {"status", "progress", "error", "created_at", "events_url"} <= set(
        schemas["JobOut"]["properties"])


def test_scenes_and_not_found(client):
    sid = new_scene(client, "empty")
    got = client.get(f"/scenes/{sid}").json()
    assert got["id"] == sid and got["name"] == "empty" and got["jobs"] == []
    assert any(s["id"] == sid for s in client.get("/scenes").json())
    assert client.get("/scenes/nope").status_code == 404
    assert client.get("/jobs/nope").status_code == 404
    assert client.get("/jobs/nope/log").status_code == 404
    assert client.get("/jobs/nope/events").status_code == 404
    assert client.post("/jobs/nope/cancel").status_code == 404
    assert client.post("/scenes/nope/media", data={"source_uri": str(PLUSH_DOG)}
                       ).status_code == 404
    assert client.get("/scenes/nope/artifacts").status_code == 404


def test_job_requests_rejected(client):
    sid = new_scene(client)
    # no media -> 400
    r = client.post(f"/scenes/{sid}/jobs", json=TINY_JOB)
    assert r.status_code == 400 and "no media" in r.json()["detail"]
    # unknown scene -> 404
    assert client.post("/scenes/nope/jobs", json=TINY_JOB).status_code == 404
    r = client.post(f"/scenes/{sid}/media", data={"source_uri": str(PLUSH_DOG)})
    assert r.status_code == 200
    # invalid config -> 422 naming the field
    for body, field in (({"train": {"max_steps": -5}}, "train.max_steps"),
                        ({"scene": {"data_factor": 3}}, "scene.data_factor"),
                        ({"sfm": {"no_such_option": 1}}, "sfm.no_such_option"),
                        ({"preset": "fastest"}, "preset"),
                        ({"scene": {"cache_dir": "/tmp/x"}}, "cache_dir")):
        r = client.post(f"/scenes/{sid}/jobs", json=body)
        assert r.status_code == 422, (body, r.text)
        text = json.dumps(r.json())
        stage, _, name = field.rpartition(".")
        assert name in text and (not stage or stage in text), (field, text)
    assert client.get(f"/scenes/{sid}").json()["jobs"] == []  # nothing was queued


def test_source_uri_checked(client):
    sid = new_scene(client)
    for uri in ("/etc", "/work/../etc/passwd", "relative/path", "ftp://host/x",
                "s3://x"):
        r = client.post(f"/scenes/{sid}/media", data={"source_uri": uri})
        assert r.status_code == 400, (uri, r.text)
    assert client.post(f"/scenes/{sid}/media").status_code == 400  # nothing given
    got = client.get(f"/scenes/{sid}").json()
    assert got["source_uri"] is None and got["media_files"] == 0


def test_upload_sanitises_names(server, client):
    sid = new_scene(client)
    img = (PLUSH_DOG / "images_4").iterdir().__next__().read_bytes()
    files = [("files", ("../../escape.jpg", img, "image/jpeg")),
             ("files", ("sub\\dir\\win name?.JPG", img, "image/jpeg")),
             ("files", (".hidden.png", img, "image/png"))]
    r = client.post(f"/scenes/{sid}/media", files=files)
    assert r.status_code == 200, r.text
    assert sorted(r.json()["files"]) == ["escape.jpg", "hidden.png", "win_name_.JPG"]
    assert r.json()["media_kind"] == "images" and r.json()["media_files"] == 3
    root = server.data_dir / "artifacts"
    stored = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                    and f"media/{sid}" in p.as_posix())
    assert stored == [f"media/{sid}/escape.jpg", f"media/{sid}/hidden.png",
                      f"media/{sid}/win_name_.JPG"]
    assert not (server.data_dir / "escape.jpg").exists()
    assert not (server.data_dir.parent / "escape.jpg").exists()


def test_video_upload_kept_as_is(server, client):
    video = PLUSH_DOG.parent / "chair_video" / "input.mp4"
    sid = new_scene(client)
    r = client.post(f"/scenes/{sid}/media",
                    files=[("files", ("my chair video.MP4", video.read_bytes(), "video/mp4"))])
    assert r.status_code == 200, r.text
    assert r.json()["files"] == ["my_chair_video.MP4"] and r.json()["media_kind"] == "video"
    stored = server.data_dir / "artifacts" / "media" / sid / "my_chair_video.MP4"
    assert stored.read_bytes() == video.read_bytes()
    # a zip of photos (no model inside) is kept as it is, for ingest to read
    img = next((PLUSH_DOG / "images_4").iterdir()).read_bytes()
    sid2 = new_scene(client)
    r = client.post(f"/scenes/{sid2}/media", files=[("files", (
        "my photos.zip", _zip({"trip/day 1/a.jpg": img, "trip/b.jpg": img}),
        "application/zip"))])
    assert r.status_code == 200 and r.json()["files"] == ["my_photos.zip"], r.text
    assert r.json()["media_kind"] == "zip"
    # a video goes on its own
    r = client.post(f"/scenes/{sid}/media",
                    files=[("files", ("a.mp4", b"x", "video/mp4")),
                           ("files", ("b.jpg", b"x", "image/jpeg"))])
    assert r.status_code == 400


def test_video_only_folder_job_gets_past_ingest(server, client):
    """A source_uri folder holding only a video (chair_video/input.mp4) is a video input: the
    job extracts frames and reaches SfM (then is cancelled), as `splatforge reconstruct
    folder/` does."""
    sid = new_scene(client, "video folder")
    r = client.post(f"/scenes/{sid}/media",
                    data={"source_uri": str(PLUSH_DOG.parent / "chair_video")})
    assert r.status_code == 200, r.text
    job_id = client.post(f"/scenes/{sid}/jobs", json={
        **TINY_JOB, "ingest": {"max_num_images": 8}}).json()["job_id"]
    job = wait_job(client, job_id, until=("running", "succeeded", "failed"), timeout=120,
                   cond=lambda j: j["status"] != "running"
                   or j.get("stage") in ("sfm", "train", "eval", "export"))
    client.post(f"/jobs/{job_id}/cancel")
    assert job["status"] != "failed", job
    log = client.get(f"/jobs/{job_id}/log").text
    assert "[ingest] stage_finished" in log, log


def test_photos_job_fails_in_sfm_with_the_reason(server, client):
    """Photos uploaded as multipart go through ingest and SfM in the worker; three photos
    from far-apart viewpoints cannot be registered: the job ends failed in sfm, saying why."""
    sid = new_scene(client)
    photos = Path(__file__).resolve().parents[1] / "samples" / "plush_dog" / "images"
    files = [("files", (f"{n}.jpg", (photos / f"{n}.jpg").read_bytes(), "image/jpeg"))
             for n in ("IMG_3496", "IMG_3520", "IMG_3550")]
    assert client.post(f"/scenes/{sid}/media", files=files).status_code == 200
    job_id = client.post(f"/scenes/{sid}/jobs", json=TINY_JOB).json()["job_id"]
    job = wait_job(client, job_id, timeout=120)
    assert job["status"] == "failed", job
    assert job["error"]["stage"] == "sfm"
    assert "only 0 of 3 images could be registered" in job["error"]["message"]
    log = client.get(f"/jobs/{job_id}/log").text
    assert "[ingest] stage_finished" in log and "status: failed in sfm" in log
    # the finished ingest stage's output stays in the job's work dir
    assert len(list((server.data_dir / "work" / job_id / "out" / "workspace" / "input")
                    .glob("*.jpg"))) == 3


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_zip_slip_and_bad_uploads_write_nothing(server, client):
    sid = new_scene(client)
    img = next((PLUSH_DOG / "images_4").iterdir()).read_bytes()
    bad = [
        ("slip.zip", _zip({"ok/a.jpg": img, "../../evil.jpg": img})),
        ("abs.zip", _zip({"a.jpg": img, "/tmp/evil.jpg": img})),
        ("nested.zip", _zip({"a.jpg": img, "imgs/../../../evil.jpg": img})),
        ("link.zip", _zip({"a.jpg": img}, symlink="images/link.jpg")),
        ("notazip.zip", b"this is not a zip"),
        ("model.obj", b"v 0 0 0"),
    ]
    for name, data in bad:
        # a good image in the same request must not be stored either
        r = client.post(f"/scenes/{sid}/media",
                        files=[("files", ("good.jpg", img, "image/jpeg")),
                               ("files", (name, data, "application/octet-stream"))])
        assert r.status_code == 400, (name, r.text)
    assert client.get(f"/scenes/{sid}").json()["media_files"] == 0
    media = server.data_dir / "artifacts" / "media" / sid
    assert not media.exists() or not any(media.rglob("*"))
    assert not list(server.data_dir.rglob("evil.jpg"))
    assert not list(Path("/tmp").glob("evil.jpg"))
    leftovers = server.data_dir / "tmp"
    assert not leftovers.exists() or not any(leftovers.iterdir())


def test_job_runs_to_the_end(finished_job, client):
    job = finished_job["job"]
    assert job["status"] == "succeeded", job
    assert job["progress"]["max_steps"] == 30 and job["progress"]["fraction"] == 1.0
    assert job["metrics"]["step"] == 30 and job["metrics"]["num_gaussians"] > 1000
    assert 5 < job["metrics"]["psnr"] < 60
    assert job["error"] is None and job["started_at"] and job["finished_at"]
    assert job["view_url"] == f"/scenes/{finished_job['scene_id']}/view"
    assert job["pid"] and job["worker"].startswith("local")
    scene = client.get(f"/scenes/{finished_job['scene_id']}").json()
    assert [j["status"] for j in scene["jobs"]] == ["succeeded"]
    # one timestamp type in every resource: UTC, ISO 8601 with milliseconds
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    times = [job[k] for k in ("created_at", "started_at", "finished_at", "updated_at")]
    times += [scene["created_at"], scene["updated_at"], scene["jobs"][0]["created_at"]]
    assert all(stamp.match(t) for t in times), times
    assert scene["jobs"][0]["created_at"] == job["created_at"]


def test_sse_stream(finished_job):
    events = finished_job["events"]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "end" and events[-1]["data"]["status"] == "succeeded"
    body = [e for e in events if e["event"] != "end"]
    ids = [int(e["id"]) for e in body]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    train = [e["data"] for e in body if e["event"] == "progress"
             and e["data"]["stage"] == "train"]
    assert train and train[-1]["step"] == 30 and train[-1]["total"] == 30
    assert all(e["data"]["job_id"] == finished_job["job_id"] for e in body)
    started = [e["data"]["stage"] for e in body if e["event"] == "stage_started"]
    for stage in ("fetch", "train", "eval", "upload"):
        assert stage in started, started
    statuses = [e["data"]["data"]["status"] for e in body if e["event"] == "status"]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded" and "running" in statuses


def test_sse_resumes_after_last_event_id(finished_job, client):
    events = [e for e in finished_job["events"] if e["event"] != "end"]
    mid = events[len(events) // 2]["id"]
    with httpx.Client(base_url=client.base_url,
                      headers={**client.headers, "Last-Event-ID": mid}) as c2:
        rest = read_sse(c2, f"/jobs/{finished_job['job_id']}/events")
    assert [e["id"] for e in rest[:-1]] == [e["id"] for e in events
                                            if int(e["id"]) > int(mid)]


def test_log(server, finished_job, client):
    r = client.get(f"/jobs/{finished_job['job_id']}/log")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = r.text.strip().splitlines()
    assert "[train] progress 30/30" in r.text
    assert lines[-1].endswith("status: succeeded")
    # the job cached and undistorted files in its work folder and says so, without the path
    events = json.dumps(finished_job["events"])
    repo_src = Path(__file__).resolve().parents[1] / "src"
    for server_dir in (server.data_dir, server.data_dir.resolve(), repo_src):
        assert str(server_dir) not in r.text and str(server_dir) not in events, server_dir


def test_artifacts_listing_range_and_names(server, finished_job, client):
    sid = finished_job["scene_id"]
    listing = client.get(f"/scenes/{sid}/artifacts").json()
    assert listing["job_id"] == finished_job["job_id"]
    names = {a["name"]: a for a in listing["artifacts"]}
    for n in ("point_cloud.ply", "cameras.json", "metrics.json", "scene.splat", "scene.spz",
              "reconstruct.json", "cfg_args"):
        assert n in names, names.keys()
    assert any(n.startswith("renders/") and n.endswith(".png") for n in names)
    ply = server.data_dir / "artifacts" / "outputs" / sid / "point_cloud.ply"
    data = ply.read_bytes()
    assert names["point_cloud.ply"]["size"] == len(data)
    full = client.get(names["point_cloud.ply"]["url"])
    assert full.status_code == 200 and full.content == data
    assert full.headers.get("accept-ranges") == "bytes"
    r = client.get(f"/scenes/{sid}/artifacts/point_cloud.ply",
                   headers={"Range": "bytes=100-1099"})
    assert r.status_code == 206 and r.content == data[100:1100]
    assert r.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    r = client.get(f"/scenes/{sid}/artifacts/point_cloud.ply", headers={"Range": "bytes=-64"})
    assert r.status_code == 206 and r.content == data[-64:]
    r = client.get(f"/scenes/{sid}/artifacts/point_cloud.ply",
                   headers={"Range": f"bytes={len(data) + 10}-"})
    assert r.status_code == 416
    assert client.get(f"/scenes/{sid}/artifacts/metrics.json").json()["step"] == 30
    assert client.get(f"/scenes/{sid}/artifacts/nothing.ply").status_code == 404
    # '..' and absolute names are rejected before the store is touched (raw paths, so the
    # client does not normalise them away)
    for raw in (f"/scenes/{sid}/artifacts/..%2F..%2Fsplatforge.db",
                f"/scenes/{sid}/artifacts/renders/..%2F..%2F..%2Fsplatforge.db",
                f"/scenes/{sid}/artifacts/%2Fetc%2Fpasswd",
                f"/scenes/{sid}/artifacts/a%5C..%5Cb"):
        r = client.send(client.build_request("GET", httpx.URL(server.url + raw)))
        assert r.status_code in (400, 404) and b"SQLite" not in r.content, raw
        assert r.status_code == 400, (raw, r.status_code)


def test_compat_routes(server, finished_job, client):
    sid = finished_job["scene_id"]  # media: a COLMAP dataset
    st = client.get(f"/scene/{sid}/train_gsplat/status").json()
    assert st["status"] == "complete" and st["model_size"] > 0
    assert st["download_url"] == f"/scene/{sid}/gsplat/model"
    r = client.get(st["download_url"])
    assert r.status_code == 200
    assert f'filename="{sid}_gaussian_splatting.ply"' in r.headers["content-disposition"]
    assert r.content.startswith(b"ply\n")
    # a scene whose source_uri is a COLMAP dataset is accepted (cancelled at once here)
    src = scene_with_source(client)
    r = client.post(f"/scene/{src}/train_gsplat?data_factor=8&max_steps=20")
    assert r.status_code == 202, r.text
    client.post(f"/jobs/{r.json()['job_id']}/cancel")
    assert wait_job(client, r.json()["job_id"], timeout=60)["status"] == "cancelled"
    st = client.get(f"/scene/{src}/train_gsplat/status").json()
    assert st["status"] == "failed" and "cancel" in st["error"]
    # a scene without a COLMAP model -> 404; a model without images -> 400
    empty = new_scene(client)
    assert client.post(f"/scene/{empty}/train_gsplat").status_code == 404
    assert client.get(f"/scene/{empty}/train_gsplat/status").json()["status"] == "not_started"
    assert client.get(f"/scene/{empty}/gsplat/model").status_code == 404
    store = server.data_dir / "artifacts" / "colmap" / "frontend-scene-1" / "sparse" / "0"
    store.mkdir(parents=True)
    for p in (PLUSH_DOG / "sparse" / "0").iterdir():
        (store / p.name).write_bytes(p.read_bytes())
    r = client.post("/scene/frontend-scene-1/train_gsplat?data_factor=8&max_steps=20")
    assert r.status_code == 400 and "no images" in r.text
    assert client.post(f"/scene/{sid}/train_gsplat?data_factor=3").status_code == 422
    # the model beside its images in colmap/{id}/ (the seeds' layout): trains
    images = store.parent.parent / "images"
    images.mkdir()
    for p in (PLUSH_DOG / "images_4").iterdir():
        (images / p.name).write_bytes(p.read_bytes())
    r = client.post("/scene/frontend-scene-1/train_gsplat?data_factor=8&max_steps=20")
    assert r.status_code == 202, r.text
    st = client.get("/scene/frontend-scene-1/train_gsplat/status").json()
    assert st["status"] == "processing" and st["job_id"] == r.json()["job_id"]
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "succeeded" and job["kind"] == "train_gsplat", job
    assert job["config"]["train"]["max_steps"] == 20 and job["metrics"]["step"] == 20
    st = client.get("/scene/frontend-scene-1/train_gsplat/status").json()
    assert st["status"] == "complete" and st["config"]["scene"]["data_factor"] == 8
    assert client.get("/scene/frontend-scene-1/gsplat/model").content.startswith(b"ply")


def test_cancel_a_finished_job_changes_nothing(finished_job, client):
    r = client.post(f"/jobs/{finished_job['job_id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "succeeded"


def _raw_request(url: str, head: str, body: bytes) -> bytes:
    """Send a request over a plain socket (headers and the first body bytes only) and read
    the answer: shows that an oversized body is refused before it is read."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            b = sock.recv(65536)
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks)


def test_api_key_and_upload_limit(tmp_path):
    srv = Server(tmp_path / "auth", api_key="s3cret-key", max_jobs=1, max_upload_mb=1).start()
    try:
        assert httpx.get(srv.url + "/healthz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"},
                        {"Authorization": "Basic s3cret-key"}):
            r = httpx.post(srv.url + "/scenes", json={}, headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == "Bearer"
            assert httpx.get(srv.url + "/docs", headers=headers).status_code == 401
        assert httpx.get(srv.url + "/scenes").status_code == 401
        with srv.client() as c:
            sid = new_scene(c)
            assert c.get("/scenes").status_code == 200
            # the limit is 1 MiB: a declared 2 MiB body is refused before it is read
            head = (f"POST /scenes/{sid}/media HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer s3cret-key\r\n"
                    "Content-Type: multipart/form-data; boundary=b\r\n"
                    f"Content-Length: {2 << 20}\r\n\r\n")
            answer = _raw_request(srv.url, head, b"--b\r\n" + b"x" * 1000)
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
            big = b"\xff" * (1536 << 10)
            r = c.post(f"/scenes/{sid}/media", files=[("files", ("big.jpg", big, "image/jpeg"))])
            assert r.status_code == 413, r.text
            # a chunked body (no Content-Length) is counted as it arrives

            def chunks():
                yield (b"--b\r\nContent-Disposition: form-data; name=\"files\"; "
                       b"filename=\"c.jpg\"\r\n\r\n")
                for _ in range(24):
                    yield b"\xff" * (64 << 10)
                yield b"\r\n--b--\r\n"
            r = c.post(f"/scenes/{sid}/media", content=chunks(),
                       headers={"Content-Type": "multipart/form-data; boundary=b"})
            assert r.status_code == 413, r.text
            assert c.get(f"/scenes/{sid}").json()["media_files"] == 0
    finally:
        srv.stop()
    assert not (tmp_path / "auth" / "artifacts" / "media").exists()


def test_serve_refuses_public_bind_without_key(tmp_path):
    env = {"SPLATFORGE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "splatforge", "serve", "--host", "0.0.0.0",
                        "--port", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "SPLATFORGE_API_KEY" in r.stderr, r.stderr
    assert not (tmp_path / "splatforge.db").exists()
