"""Issue 23 (first half): a real ``splatforge serve`` on 127.0.0.1 under hostile and careless
clients holding the API key: bounded memory and disk, honest HTTP.

* one body-size guard for every content type and for chunked bodies (items 1, 2);
* one budget of uncompressed bytes per upload and per zip member, and zip members streamed
  at job time (items 3, 4);
* a cap on open event streams per job and per key, /healthz answering while they are open
  (item 5);
* downloads answer HEAD and conditional GETs, an unknown Range unit is ignored (item 13);
* SIGTERM while a client stalls mid-upload (item 14);
* a bounded soak of everything at once on a 2-worker server.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from conftest import PLUSH_DOG
from service_helpers import (
    assert_no_server_paths,
    LONG_JOB,
    Server,
    new_scene,
    scene_with_source,
    training,
    wait_job,
)

KEY = "limits-key"
#: Test budgets (MiB): small so that the probes stay cheap.
UPLOAD_MB = 64
UNCOMPRESSED_MB = 48
MEMBER_MB = 16
STREAMS_PER_JOB = 200
STREAMS_PER_KEY = 210


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("limits")
    srv = Server(data, max_jobs=1, api_key=KEY, max_upload_mb=UPLOAD_MB, extra_env={
        "SPLATFORGE_MAX_UNCOMPRESSED_MB": str(UNCOMPRESSED_MB),
        "SPLATFORGE_MAX_MEMBER_MB": str(MEMBER_MB),
        "SPLATFORGE_MAX_STREAMS_PER_JOB": str(STREAMS_PER_JOB),
        "SPLATFORGE_MAX_STREAMS_PER_KEY": str(STREAMS_PER_KEY)}).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def _raw_request(server: Server, head: str) -> socket.socket:
    """A socket to the server with ``head`` (request line + headers, no blank line) sent."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall((head + f"\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n\r\n")
                 .encode("latin-1"))
    return sock


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str]]:
    """The status code and headers of the answer on ``sock``."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    assert head and head[0].startswith("HTTP/1.1 "), buf[:200]
    headers = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(head[0].split()[1]), headers


def _rss(pid: int) -> int:
    """Resident set size of process ``pid``, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# --------------------------------------------------------------------------------------------
# items 1, 2: one body-size guard
# --------------------------------------------------------------------------------------------

def test_json_limit_for_every_content_type(server, client):
    """A 2 MiB job config is a 413 whatever its content type says (any case, any +json,
    text/plain, none), and no job is created."""
    sid = scene_with_source(client)
    big = json.dumps({"train": {"save_steps": list(range(1, 300_000))}}).encode()
    assert 1 << 20 < len(big) < UPLOAD_MB << 20
    for ctype in ("Application/JSON", "application/vnd.splatforge+json",
                  "APPLICATION/MERGE-PATCH+JSON; charset=utf-8", "text/plain", None,
                  "application/octet-stream"):
        headers = {"Content-Type": ctype} if ctype else {}
        r = client.post(f"/scenes/{sid}/jobs", content=big, headers=headers)
        assert r.status_code == 413, (ctype, r.status_code, r.text[:300])
        assert len(r.content) < 1000 and "1048576" in r.json()["detail"], r.text
    assert client.get("/jobs", params={"scene_id": sid}).json() == []


@pytest.mark.parametrize("ctype", ["text/plain", None, "application/x+json"])
def test_chunked_body_that_never_ends_gets_413(server, client, ctype):
    """A chunked body with no Content-Length is answered 413 as soon as it passes the limit,
    while the client still holds the rest: the server does not wait for (or keep) all of it."""
    sid = scene_with_source(client)
    head = f"POST /scenes/{sid}/jobs HTTP/1.1\r\nTransfer-Encoding: chunked"
    if ctype:
        head += f"\r\nContent-Type: {ctype}"
    sock = _raw_request(server, head)
    with sock:
        piece = b"x" * 65536
        for _ in range(17):  # 1 MiB + 64 KiB, then the client stalls (no final chunk)
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        status, headers = _read_head(sock)
    assert status == 413, (ctype, status)
    assert client.get("/jobs", params={"scene_id": sid}).json() == []


def test_upload_limit_for_chunked_multipart(server, client):
    """The upload route keeps its own (larger) limit, for a chunked body too."""
    sid = new_scene(client)
    big = b"\xff\xd8" + os.urandom(2 << 20)
    r = client.post(f"/scenes/{sid}/media", files={"files": ("a.jpg", big, "image/jpeg")})
    assert r.status_code == 200, r.text  # 2 MiB: over the JSON limit, fine for an upload

    def body():
        boundary = b"--b0undary"
        yield boundary + b"\r\nContent-Disposition: form-data; name=\"files\"; " \
                         b"filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
        chunk = b"\0" * (1 << 20)
        for _ in range(UPLOAD_MB + 2):
            yield chunk
        yield b"\r\n" + boundary + b"--\r\n"

    try:
        r = client.post(f"/scenes/{sid}/media", content=body(),
                        headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
        assert r.status_code == 413, r.text
        assert "SPLATFORGE_MAX_UPLOAD_MB" in r.json()["detail"]
    except httpx.TransportError:
        pass  # the server answered 413 and closed while the client was still sending
    assert client.get(f"/scenes/{sid}").json()["media_files"] == 1


# --------------------------------------------------------------------------------------------
# items 3, 4: one budget of uncompressed bytes
# --------------------------------------------------------------------------------------------

def _zip(members: dict[str, int | bytes], dataset: bool) -> bytes:
    """A deflated zip: ``members`` maps names to contents (or to a size of zero bytes: a
    bomb); ``dataset`` adds a COLMAP marker (sparse/0/cameras.txt)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if dataset:
            zf.writestr("sparse/0/cameras.txt", "# none\n")
        for name, content in members.items():
            if isinstance(content, int):
                with zf.open(name, "w", force_zip64=True) as out:
                    block = bytes(1 << 20)
                    for _ in range(content >> 20):
                        out.write(block)
            else:
                zf.writestr(name, content)
    return buf.getvalue()


def _tmp_leftovers(server: Server) -> list[str]:
    tmp = server.data_dir / "tmp"
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")) if tmp.exists() else []


@pytest.mark.parametrize("dataset", [True, False], ids=["dataset", "photos"])
def test_zip_member_over_the_budget_is_413(server, client, dataset):
    """A small zip whose one member inflates past SPLATFORGE_MAX_MEMBER_MB (a dataset zip or a
    zip of photos) is refused with a 413 naming the zip and the member; nothing is stored."""
    img = next((PLUSH_DOG / "images_4").iterdir()).read_bytes()
    data = _zip({"images/a.jpg": img, "images/bomb.jpg": (MEMBER_MB + 8) << 20}, dataset)
    assert len(data) < 1 << 20
    sid = new_scene(client)
    r = client.post(f"/scenes/{sid}/media", files={"files": ("b.zip", data, "application/zip")})
    assert r.status_code == 413, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert "b.zip" in detail and "images/bomb.jpg" in detail, detail
    assert "SPLATFORGE_MAX_MEMBER_MB" in detail, detail
    assert_no_server_paths(server, r.text)
    assert client.get(f"/scenes/{sid}").json()["media_files"] == 0
    assert _tmp_leftovers(server) == []


def test_upload_total_over_the_budget_is_413(server, client):
    """Members each under the per-member budget but together over the per-upload one (across
    two zips of one request): 413 naming the budget; nothing is stored."""
    members = {f"images/{k}.jpg": (MEMBER_MB - 2) << 20 for k in range(2)}
    a, b = _zip(members, True), _zip(members, False)
    sid = new_scene(client)
    r = client.post(f"/scenes/{sid}/media", files=[("files", ("a.zip", a, "application/zip")),
                                                   ("files", ("b.zip", b, "application/zip"))])
    assert r.status_code == 413, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert "SPLATFORGE_MAX_UNCOMPRESSED_MB" in detail and "b.zip" in detail, detail
    assert_no_server_paths(server, r.text)
    assert client.get(f"/scenes/{sid}").json()["media_files"] == 0
    assert _tmp_leftovers(server) == []
    # one of them alone fits
    r = client.post(f"/scenes/{sid}/media", files={"files": ("a.zip", a, "application/zip")})
    assert r.status_code == 200, r.text


def test_zip_members_are_streamed_at_job_time(tmp_path):
    """Ingest of a photo zip holding a 160 MiB member (a JPEG with a long tail: it decodes)
    never holds the member in memory: the process's peak RSS stays far below its size."""
    img = next((PLUSH_DOG / "images_4").iterdir()).read_bytes()
    zpath = tmp_path / "photos.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
        for k, p in enumerate(sorted((PLUSH_DOG / "images_4").iterdir())[:3]):
            zf.write(p, f"p{k}.jpg")
        with zf.open("big.jpg", "w", force_zip64=True) as out:
            out.write(img)
            block = os.urandom(1 << 20)
            for _ in range(160):
                out.write(block)
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from splatforge.config import IngestConfig\n"
        "from splatforge.ingest.stage import run_ingest\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "r = run_ingest(IngestConfig(min_images=3), Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(len(r.images), before, after)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code, str(zpath), str(tmp_path / "ws")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    n, before, after = map(int, out.stdout.split())
    assert n == 4
    assert (tmp_path / "ws" / "input" / "big.jpg").stat().st_size > 160 << 20
    assert (after - before) * 1024 < 64 << 20, (before, after)  # KiB -> bytes


# --------------------------------------------------------------------------------------------
# item 13: honest downloads
# --------------------------------------------------------------------------------------------

def test_downloads_head_conditional_and_unknown_range_unit(server, client):
    sid = new_scene(client)
    blob = (PLUSH_DOG / "sparse" / "0" / "points3D.bin").read_bytes()
    dest = server.data_dir / "artifacts" / "outputs" / sid / "point_cloud.ply"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(blob)
    url = f"/scenes/{sid}/artifacts/point_cloud.ply"
    r = client.get(url)
    assert r.status_code == 200 and r.content == blob
    etag, modified = r.headers["etag"], r.headers["last-modified"]
    # HEAD: the GET's headers, no body
    h = client.head(url)
    assert h.status_code == 200, h.status_code
    assert h.headers["etag"] == etag and h.headers["content-length"] == str(len(blob))
    assert h.content == b""
    assert client.head(f"/scenes/{sid}/artifacts/nothing.ply").status_code == 404
    # conditional GETs
    for hdrs in ({"If-None-Match": etag}, {"If-None-Match": f'"x", W/{etag}'},
                 {"If-None-Match": "*"}, {"If-Modified-Since": modified}):
        r = client.get(url, headers=hdrs)
        assert r.status_code == 304, (hdrs, r.status_code)
        assert r.content == b"" and r.headers["etag"] == etag
        assert client.head(url, headers=hdrs).status_code == 304
    for hdrs in ({"If-None-Match": '"other"'},
                 {"If-Modified-Since": formatdate(dest.stat().st_mtime - 3600, usegmt=True)},
                 {"If-None-Match": '"other"', "If-Modified-Since": modified}):
        r = client.get(url, headers=hdrs)
        assert r.status_code == 200 and r.content == blob, hdrs
    # ranges: an unknown unit is ignored (RFC 9110 14.2), bytes still work
    r = client.get(url, headers={"Range": "items=0-10"})
    assert r.status_code == 200 and r.content == blob, r.status_code
    r = client.get(url, headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and r.content == blob[:10]
    # the baking-server route serves the same file the same way
    compat = f"/scene/{sid}/gsplat/model"
    assert client.head(compat).status_code == 200
    assert client.get(compat, headers={"If-None-Match": etag}).status_code == 304


# --------------------------------------------------------------------------------------------
# item 5: open event streams are capped, and do not starve other requests
# --------------------------------------------------------------------------------------------

def _open_stream(server: Server, job_id: str) -> tuple[socket.socket, int, dict[str, str]]:
    sock = _raw_request(server, f"GET /jobs/{job_id}/events HTTP/1.1\r\n"
                                "Accept: text/event-stream")
    status, headers = _read_head(sock)
    return sock, status, headers


@pytest.mark.timeout(300)
def test_event_streams_are_capped_and_healthz_answers(server, client):
    """200 open SSE streams on one job (the per-job cap): /healthz and GET /jobs/{id} still
    answer, the 201st stream is a 429 with Retry-After; streams of another job count against
    the key's cap (210); closed streams free their slots."""
    # a job that stays running: its worker is stopped (SIGSTOP) once it trains; with one
    # job slot, a second job stays queued. Nothing writes to the database while it is
    # stopped (the worker might hold SQLite's write lock)
    running = client.post(f"/scenes/{scene_with_source(client)}/jobs", json=LONG_JOB).json()
    queued = client.post(f"/scenes/{scene_with_source(client)}/jobs",
                         json=LONG_JOB).json()["job_id"]
    job = wait_job(client, running["job_id"], until=("running",), cond=training)
    os.kill(job["pid"], signal.SIGSTOP)
    socks: list[socket.socket] = []
    try:
        for _ in range(STREAMS_PER_JOB):
            sock, status, _ = _open_stream(server, job["id"])
            socks.append(sock)
            assert status == 200, (len(socks), status)
        assert httpx.get(server.url + "/healthz", timeout=60).status_code == 200
        r = client.get(f"/jobs/{job['id']}")
        assert r.status_code == 200 and r.json()["status"] == "running"
        sock, status, headers = _open_stream(server, job["id"])
        sock.close()
        assert status == 429, status
        assert int(headers["retry-after"]) > 0
        r = client.get(f"/jobs/{job['id']}/events")
        assert r.status_code == 429 and "SPLATFORGE_MAX_STREAMS_PER_JOB" in r.json()["detail"]
        # the key's cap counts every job's streams
        for _ in range(STREAMS_PER_KEY - STREAMS_PER_JOB):
            sock, status, _ = _open_stream(server, queued)
            socks.append(sock)
            assert status == 200, (len(socks), status)
        r = client.get(f"/jobs/{queued}/events")
        assert r.status_code == 429 and "SPLATFORGE_MAX_STREAMS_PER_KEY" in r.json()["detail"]
        assert r.headers["retry-after"]
        assert httpx.get(server.url + "/healthz", timeout=60).status_code == 200
        # closing streams frees their slots (the server sees the disconnect)
        for s in socks:
            s.close()
        socks.clear()
        deadline = time.monotonic() + 60
        while True:
            sock, status, _ = _open_stream(server, job["id"])
            sock.close()
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == 200
    finally:
        for s in socks:
            s.close()
        os.kill(job["pid"], signal.SIGKILL)
    assert client.post(f"/jobs/{queued}/cancel").status_code == 202
    assert wait_job(client, job["id"])["status"] == "failed"
    assert wait_job(client, queued)["status"] == "cancelled"


# --------------------------------------------------------------------------------------------
# item 14: SIGTERM while a client stalls mid-upload
# --------------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_sigterm_during_a_stalled_upload(tmp_path):
    """The server stops at SIGTERM while a client has sent half an upload and stalls and
    another follows a running job's events: no 500, no traceback (CancelledError) in its log,
    nothing left for the graceful timeout to cancel, the event stream ends, and the partial
    upload is gone."""
    srv = Server(tmp_path / "data", max_jobs=1, api_key=KEY).start()
    try:
        with srv.client() as c:
            sid = new_scene(c)
            jid = c.post(f"/scenes/{scene_with_source(c)}/jobs", json=LONG_JOB).json()["id"]
        events, status, _ = _open_stream(srv, jid)
        assert status == 200
        img = next((PLUSH_DOG / "images_4").iterdir()).read_bytes()
        part = (b"--b0undary\r\nContent-Disposition: form-data; name=\"files\"; "
                b"filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n")
        length = len(part) + (8 << 20)
        sock = _raw_request(srv, f"POST /scenes/{sid}/media HTTP/1.1\r\nContent-Type: "
                                 f"multipart/form-data; boundary=b0undary\r\n"
                                 f"Content-Length: {length}")
        with sock:
            sock.sendall(part + img + os.urandom((2 << 20) - len(img)))  # then it stalls
            time.sleep(1.0)  # the server is reading the body
            srv.stop(signal.SIGTERM)
            with events:
                while events.recv(65536):  # the stream ends (EOF), it is not cut by a timeout
                    pass
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except OSError:
                pass
        assert not answer.startswith(b"HTTP/1.1 500"), answer[:300]
        if answer:
            assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
        log = srv.log()
        assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
        assert "graceful shutdown exceeded" not in log, log[-3000:]
        leftovers = [p for p in (srv.data_dir / "tmp").rglob("*")] \
            if (srv.data_dir / "tmp").exists() else []
        assert leftovers == []
        assert not (srv.data_dir / "artifacts" / "media" / sid).exists()
    finally:
        srv.stop(signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# soak: everything at once on a 2-worker server
# --------------------------------------------------------------------------------------------

@pytest.mark.timeout(600)
def test_soak_everything_at_once(tmp_path):
    """Uploads (good, over budget, over the body limit), tiny jobs followed to the end over
    SSE, long jobs cancelled while training, event streams dropped early and downloads
    (HEAD, ranges, conditional), all at once on a server with 2 job workers. Afterwards: no
    5xx, no traceback in the server log, every scene's media counts equal to its files on
    disk, and the server's memory back within 10 % of where it was after a warm-up round."""
    from concurrent.futures import ThreadPoolExecutor

    from service_helpers import TINY_JOB, read_sse

    srv = Server(tmp_path / "data", max_jobs=2, api_key=KEY, max_upload_mb=UPLOAD_MB,
                 extra_env={"SPLATFORGE_MAX_MEMBER_MB": str(MEMBER_MB)}).start()
    statuses: list[tuple[str, int]] = []
    images = sorted((PLUSH_DOG / "images_4").iterdir())[:3]
    dataset = _zip({"images/a.jpg": images[0].read_bytes()}, True)
    bomb = _zip({"images/bomb.jpg": (MEMBER_MB + 1) << 20}, False)

    def call(c: httpx.Client, method: str, url: str, **kw) -> httpx.Response:
        r = c.request(method, url, **kw)
        statuses.append((f"{method} {url}", r.status_code))
        return r

    def uploads(rounds: int) -> None:
        with srv.client() as c:
            for _ in range(rounds):
                sid = new_scene(c)
                call(c, "POST", f"/scenes/{sid}/media", files=[
                    ("files", (p.name, p.read_bytes(), "image/jpeg")) for p in images])
                call(c, "POST", f"/scenes/{sid}/media",
                     files={"files": ("d.zip", dataset, "application/zip")})
                assert call(c, "POST", f"/scenes/{sid}/media", files={
                    "files": ("b.zip", bomb, "application/zip")}).status_code == 413
                assert call(c, "POST", f"/scenes/{sid}/jobs", content=b"x" * (2 << 20),
                            headers={"Content-Type": "text/plain"}).status_code == 413

    def tiny_job() -> None:
        with srv.client() as c:
            sid = scene_with_source(c)
            jid = call(c, "POST", f"/scenes/{sid}/jobs", json=TINY_JOB).json()["job_id"]
            events = read_sse(c, f"/jobs/{jid}/events")
            assert events and wait_job(c, jid)["status"] == "succeeded"
            names = [a["name"] for a in call(c, "GET", f"/scenes/{sid}/artifacts")
                     .json()["artifacts"]]
            url = f"/scenes/{sid}/artifacts/{names[0]}"
            etag = call(c, "HEAD", url).headers["etag"]
            assert call(c, "GET", url, headers={"Range": "bytes=0-99"}).status_code == 206
            assert call(c, "GET", url, headers={"If-None-Match": etag}).status_code == 304
            for name in names:
                call(c, "GET", f"/scenes/{sid}/artifacts/{name}")

    def cancelled_job() -> None:
        with srv.client() as c:
            sid = scene_with_source(c)
            jid = call(c, "POST", f"/scenes/{sid}/jobs", json=LONG_JOB).json()["job_id"]
            wait_job(c, jid, until=("running",), cond=training, timeout=300)
            call(c, "POST", f"/jobs/{jid}/cancel")
            read_sse(c, f"/jobs/{jid}/events")
            assert wait_job(c, jid)["status"] == "cancelled"

    def dropped_streams(rounds: int) -> None:
        with srv.client() as c:
            for _ in range(rounds):
                for job in call(c, "GET", "/jobs").json()[:5]:
                    with c.stream("GET", f"/jobs/{job['id']}/events") as r:
                        statuses.append(("GET events", r.status_code))
                        next(r.iter_lines(), None)  # read a little, then hang up
                assert call(c, "GET", "/healthz").status_code == 200
                time.sleep(0.5)

    try:
        tiny_job()  # warm-up: every route once
        uploads(1)
        time.sleep(1.0)
        rss0 = _rss(srv.proc.pid)
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(cancelled_job), pool.submit(tiny_job),
                       pool.submit(uploads, 6), pool.submit(uploads, 6),
                       pool.submit(dropped_streams, 20), pool.submit(tiny_job)]
            for f in futures:
                f.result()
        with srv.client() as c:
            assert all(j["status"] in ("succeeded", "cancelled")
                       for j in call(c, "GET", "/jobs").json())
            scenes = call(c, "GET", "/scenes", params={"limit": 1000}).json()
        bad = [s for s in statuses if s[1] >= 500]
        assert not bad, bad
        log = srv.log()
        assert "Traceback" not in log and "Exception" not in log, log[-3000:]
        media = srv.data_dir / "artifacts" / "media"
        for scene in scenes:
            files = [p for p in (media / scene["id"]).rglob("*") if p.is_file()] \
                if (media / scene["id"]).exists() else []
            assert scene["media_files"] == len(files), scene
            assert scene["media_bytes"] == sum(p.stat().st_size for p in files), scene
        time.sleep(2.0)
        rss1 = _rss(srv.proc.pid)
        print(f"soak: {len(statuses)} requests, server RSS {rss0 >> 20} -> {rss1 >> 20} MiB")
        assert rss1 <= 1.10 * rss0, (rss0, rss1)
    finally:
        srv.stop()
