"""Issue 14's probes: a client holding a valid API key, attacking a real ``splatforge serve``
on 127.0.0.1. Each answer is a clear 4xx naming the field (never a 500, a hang or a server
path), and nothing is stored or read outside the folder it belongs to.

Also the completion notifications of every job end (issue 17): a real HTTP listener on
127.0.0.1 verifies each signed POST; an unreachable URL does not change a job's outcome.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import zipfile
from pathlib import Path

import pytest

from conftest import PLUSH_DOG
from service_helpers import (
    assert_no_server_paths,
    LONG_JOB,
    TINY_JOB,
    NotifyListener,
    Server,
    new_scene,
    plush_zip_bytes,
    training,
    wait_job,
)

KEY = "hostile-key"
SECRET = "notify-secret"


@pytest.fixture(scope="module")
def hook():
    h = NotifyListener()
    yield h
    h.close()


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """An allowed root the tests may write links into."""
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, hook, roots, moto_endpoint):
    data = tmp_path_factory.mktemp("hostile")
    srv = Server(data, max_jobs=2, api_key=KEY, max_upload_mb=64, extra_env={
        "SPLATFORGE_ALLOWED_ROOTS": os.pathsep.join([str(PLUSH_DOG.parent), str(roots)]),
        "SPLATFORGE_NOTIFY_URL": hook.url, "SPLATFORGE_NOTIFY_SECRET": SECRET,
        "SPLATFORGE_S3_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1"}).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def _dataset_zip(mutate: str | None = None) -> bytes:
    """A small COLMAP dataset zip (cameras.txt marks it as one) with ``mutate`` applied to
    its image member: ``crc`` (a wrong CRC), ``deflate`` (a broken deflate stream) or
    ``size`` (the member inflates past its declared size)."""
    img = next((PLUSH_DOG / "images_4").iterdir()).read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("sparse/0/cameras.txt", "# none\n")
        zf.writestr("images/a.jpg", img)
    raw = bytearray(buf.getvalue())
    if mutate is None:
        return bytes(raw)
    zf = zipfile.ZipFile(io.BytesIO(bytes(raw)))
    info = zf.getinfo("images/a.jpg")
    local = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[local + 26: local + 30])
    data_at = local + 30 + name_len + extra_len
    cd = raw.rfind(b"PK\x01\x02", 0, raw.find(b"PK\x05\x06"))  # the image's entry is last
    if mutate == "crc":
        for at in (local + 14, cd + 16):
            raw[at: at + 4] = struct.pack("<I", (info.CRC ^ 0xDEADBEEF) & 0xFFFFFFFF)
    elif mutate == "deflate":
        for k in range(data_at + 10, data_at + 60):
            raw[k] ^= 0x5A
    elif mutate == "size":
        small = max(1, info.file_size // 4)
        for at in (local + 22, cd + 24):
            raw[at: at + 4] = struct.pack("<I", small)
    return bytes(raw)


def test_corrupt_zips_get_400_and_store_nothing(server, client):
    """probe 4: a bad CRC, a corrupt deflate stream, a member inflating past its size."""
    sid = new_scene(client)
    assert client.post(f"/scenes/{sid}/media", files={"files": (
        "ok.zip", _dataset_zip(), "application/zip")}).status_code == 200
    sid = new_scene(client)
    for how in ("crc", "deflate", "size"):
        r = client.post(f"/scenes/{sid}/media",
                        files={"files": (f"{how}.zip", _dataset_zip(how), "application/zip")})
        assert r.status_code == 400, (how, r.status_code, r.text)
        assert f"{how}.zip" in r.json()["detail"], r.text
        assert_no_server_paths(server, r.text)
    assert client.get(f"/scenes/{sid}").json()["media_files"] == 0


def test_zip_of_only_a_dataset_folder_keeps_it(client):
    """probe 8: a zip holding only sparse/0/... and images/... stays a dataset."""
    sid = new_scene(client)
    r = client.post(f"/scenes/{sid}/media",
                    files={"files": ("d.zip", _dataset_zip(), "application/zip")})
    assert r.status_code == 200, r.text
    assert r.json()["media_kind"] == "dataset"
    assert "sparse/0/cameras.txt" in r.json()["files"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # only sparse/: one top folder, kept
        zf.writestr("sparse/0/cameras.txt", "# none\n")
        zf.writestr("sparse/0/images.txt", "# none\n")
    sid = new_scene(client)
    r = client.post(f"/scenes/{sid}/media", files={"files": ("s.zip", buf.getvalue(),
                                                             "application/zip")})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["files"]) == ["sparse/0/cameras.txt", "sparse/0/images.txt"]
    assert r.json()["media_kind"] == "dataset"


def test_source_uri_hostile_paths(server, client, roots):
    """probes 3, 4, 9: links out of the root (directly or inside the folder), a symlink
    loop, a NUL byte, an over-long component: 400 naming source_uri, no server path."""
    (roots / "out").symlink_to("/etc", target_is_directory=True)
    (roots / "loop").symlink_to(roots / "loop")
    inside = roots / "scene"
    (inside / "images").mkdir(parents=True)
    (inside / "images" / "a.jpg").symlink_to("/etc/passwd")
    sid = new_scene(client)
    cases = {"link out": str(roots / "out"), "link inside": str(inside),
             "loop": str(roots / "loop" / "x"), "nul": str(roots) + "/a\x00b",
             "long": str(roots / ("x" * 300)), "relative": "scene",
             "outside": "/etc"}
    for what, uri in cases.items():
        r = client.post(f"/scenes/{sid}/media", data={"source_uri": uri})
        assert r.status_code == 400, (what, r.status_code, r.text)
        assert "source_uri" in r.json()["detail"], (what, r.text)
        assert str(roots.resolve()) not in r.json()["detail"].replace(uri, ""), r.text
    assert client.get(f"/scenes/{sid}").json()["source_uri"] is None


def test_artifact_name_too_long_and_nan_json(client):
    """probe 4: an artifact name over 255 bytes; NaN / Infinity in a JSON number."""
    sid = new_scene(client)
    r = client.get(f"/scenes/{sid}/artifacts/" + "a" * 300)
    assert r.status_code == 400, r.text
    assert "artifact name" in r.json()["detail"]
    for bad in ('{"train": {"means_lr": NaN}}', '{"train": {"means_lr": Infinity}}',
                '{"preset": -Infinity}'):
        r = client.post(f"/scenes/{sid}/jobs", content=bad,
                        headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422), (bad, r.status_code, r.text)
        detail = r.json()["detail"]  # a JSON answer (the echo no longer breaks it)
        assert detail and all("loc" in d and "msg" in d for d in detail)


def test_huge_json_bodies_are_refused_not_echoed(client):
    """probe 6: a 10 MB JSON body (and a 9 MB save_steps list) is answered 413, short."""
    sid = new_scene(client)
    huge = json.dumps({"preset": "x" * 10_000_000})
    r = client.post(f"/scenes/{sid}/jobs", content=huge,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 1000, (r.status_code, len(r.content))
    steps = json.dumps({"train": {"save_steps": list(range(1, 1_300_000))}})
    assert len(steps) > 9_000_000
    r = client.post(f"/scenes/{sid}/jobs", content=steps,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 1000
    assert client.get("/jobs", params={"scene_id": sid}).json() == []
    # a validation error names the field without echoing the value
    r = client.post(f"/scenes/{sid}/jobs", json={"train": {"max_steps": "y" * 50_000}})
    assert r.status_code == 422 and len(r.content) < 5000, len(r.content)
    assert "max_steps" in r.text


def test_train_gsplat_on_a_missing_bucket(client):
    """probe 4: the baking-server route on an s3:// source whose bucket does not exist."""
    sid = new_scene(client)
    r = client.post(f"/scenes/{sid}/media", data={"source_uri": "s3://no-such-bucket-x/p"})
    assert r.status_code == 200, r.text
    r = client.post(f"/scene/{sid}/train_gsplat", params={"max_steps": 5})
    assert r.status_code == 400, r.text
    assert "source_uri" in r.json()["detail"]


def test_last_event_id_out_of_range(client):
    """probe 5: Last-Event-ID of 2^63 or more (or not a number) is a 400, not a dead
    stream."""
    sid = new_scene(client)
    r = client.post(f"/scenes/{sid}/media",
                    files={"files": ("clip.mp4", b"not a video", "video/mp4")})
    assert r.status_code == 200, r.text
    job = client.post(f"/scenes/{sid}/jobs", json=TINY_JOB).json()["job_id"]
    for bad in (str(2**63), str(2**64 + 5), "9" * 40):
        r = client.get(f"/jobs/{job}/events", headers={"Last-Event-ID": bad})
        assert r.status_code == 400, (bad, r.status_code, r.text)
        assert "Last-Event-ID" in r.json()["detail"]
    r = client.get(f"/jobs/{job}/events", params={"after": 2**63})
    assert r.status_code == 422
    wait_job(client, job)
    with client.stream("GET", f"/jobs/{job}/events",
                       headers={"Last-Event-ID": str(2**63 - 1)}) as r:
        assert r.status_code == 200
        assert "event: end" in r.read().decode()


def test_every_job_end_is_notified_once(server, client, hook):
    """issue 17: succeeded, failed (no server path in its error), cancelled, worker lost:
    exactly one signed POST each; a job whose own notify_url is unreachable still succeeds
    (and that job's notice goes nowhere else)."""
    start = len(hook.posts)
    # failed: a "video" that is not one
    sid = new_scene(client)
    client.post(f"/scenes/{sid}/media", files={"files": ("v.mp4", b"garbage", "video/mp4")})
    failed = client.post(f"/scenes/{sid}/jobs", json=TINY_JOB).json()["job_id"]
    # cancelled, and worker lost: two long jobs on the dataset zip
    long_ids = []
    for _ in range(2):
        sid = new_scene(client)
        client.post(f"/scenes/{sid}/media",
                    files={"files": ("p.zip", plush_zip_bytes(), "application/zip")})
        long_ids.append(client.post(f"/scenes/{sid}/jobs", json=LONG_JOB).json()["job_id"])
    job = wait_job(client, failed)
    assert job["status"] == "failed"
    assert_no_server_paths(server, job["error"]["message"])
    cancelled, lost = long_ids
    wait_job(client, cancelled, until=("running",), cond=training)
    assert client.post(f"/jobs/{cancelled}/cancel").status_code == 202
    lj = wait_job(client, lost, until=("running",), cond=training)
    assert wait_job(client, cancelled)["status"] == "cancelled"
    # worker lost: its process killed outright 
    os.kill(lj["pid"], signal.SIGKILL)
    assert wait_job(client, lost)["status"] == "failed"
    # an unreachable URL of the job's own does not change the outcome
    sid = new_scene(client)
    client.post(f"/scenes/{sid}/media",
                files={"files": ("p.zip", plush_zip_bytes(), "application/zip")})
    ok = client.post(f"/scenes/{sid}/jobs",
                     json={**TINY_JOB, "notify_url": "http://127.0.0.1:9/nowhere"}
                     ).json()["job_id"]
    assert wait_job(client, ok)["status"] == "succeeded"
    # by now (the last job ran after the other three ended) every notice of theirs arrived
    ids = {failed, cancelled, lost, ok}
    notices = [n for n in hook.notices(SECRET)[start:] if n["id"] in ids]
    got = sorted((n["id"], n["status"]) for n in notices)
    assert got == sorted([(failed, "failed"), (cancelled, "cancelled"), (lost, "failed")]), got
    by_id = {n["id"]: n for n in notices}
    assert by_id[failed]["error"] and by_id[lost]["error"]
    assert by_id[cancelled]["artifacts"] == []


def _colmap_text_zip(names: list[str]) -> bytes:
    """A COLMAP text dataset whose images.txt lists ``names`` (one PINHOLE camera, one point)
    and whose images/ folder holds one real photo, a.jpg."""
    img = next((PLUSH_DOG / "images_4").iterdir()).read_bytes()
    lines = ["# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME"]
    for i, name in enumerate(names, 1):
        lines += [f"{i} 1 0 0 0 0 0 {i} 1 {name}", ""]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("sparse/0/cameras.txt", "1 PINHOLE 375 250 300 300 187.5 125\n")
        zf.writestr("sparse/0/images.txt", "\n".join(lines) + "\n")
        zf.writestr("sparse/0/points3D.txt", "1 0 0 5 128 128 128 0.5\n")
        zf.writestr("images/a.jpg", img)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["/etc/passwd", "../../../etc/passwd"])
def test_dataset_image_names_outside_the_dataset_fail_the_job(server, client, name):
    """probe 1, through the service: an uploaded dataset whose images.txt names a file outside
    it fails the job with an error naming the entry; nothing outside is read or published."""
    sid = new_scene(client)
    r = client.post(f"/scenes/{sid}/media", files={"files": (
        "ds.zip", _colmap_text_zip(["a.jpg", name]), "application/zip")})
    assert r.status_code == 200 and r.json()["media_kind"] == "dataset", r.text
    r = client.post(f"/scenes/{sid}/jobs", json=TINY_JOB)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "failed", job
    msg = job["error"]["message"]
    assert name in msg and ("outside" in msg or "absolute" in msg), msg
    assert_no_server_paths(server, msg)
    assert_no_server_paths(server, client.get(f"/jobs/{job['id']}/log").text)
    listing = client.get(f"/scenes/{sid}/artifacts")
    names = [a["name"] for a in listing.json().get("artifacts", [])] \
        if listing.status_code == 200 else []
    assert not any("passwd" in n for n in names), names


@pytest.mark.parametrize("images", ["/outside/dir", "../../..", "images/../../x"])
def test_scene_images_option_must_name_a_folder_inside(server, client, images):
    """probe 1: ``scene.images`` naming a folder outside the dataset is refused up front."""
    sid = new_scene(client)
    assert client.post(f"/scenes/{sid}/media", files={"files": (
        "ds.zip", _colmap_text_zip(["a.jpg"]), "application/zip")}).status_code == 200
    r = client.post(f"/scenes/{sid}/jobs", json={**TINY_JOB, "scene": {"images": images}})
    assert r.status_code in (400, 422), (r.status_code, r.text)
    assert "images" in r.text
    assert_no_server_paths(server, r.text)
