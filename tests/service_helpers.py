"""Helpers of the job-service tests: a real ``splatforge serve`` process on a free port, a
throwaway PostgreSQL database, the plush_dog COLMAP dataset as media, and polling."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx

from conftest import PLUSH_DOG

PG_ADMIN_URL = os.environ.get("SPLATFORGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
FINAL = ("succeeded", "failed", "cancelled")

#: A job small enough for CI: plush_dog at data_factor 8 (94x62 px), 30 steps on CPU.
TINY_JOB = {"preset": "preview", "scene": {"data_factor": 8},
            "train": {"max_steps": 30, "device": "cpu", "log_every": 10}}
#: A job that trains long enough to be cancelled or killed mid-training.
LONG_JOB = {"preset": "preview", "scene": {"data_factor": 8},
            "train": {"max_steps": 20000, "device": "cpu", "save_steps": [5],
                      "log_every": 5}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards; yields its URL."""
    import psycopg

    name = f"splatforge_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Server:
    """``splatforge serve`` in a subprocess (real uvicorn, real worker processes)."""

    def __init__(self, data_dir: Path, database_url: str | None = None, *,
                 max_jobs: int = 2, api_key: str | None = None,
                 max_upload_mb: float | None = None, storage: str | None = None,
                 extra_env: dict[str, str] | None = None):
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPLATFORGE_")}
        env.update({"SPLATFORGE_DATA_DIR": str(self.data_dir), "SPLATFORGE_MAX_JOBS":
                    str(max_jobs), "SPLATFORGE_ALLOWED_ROOTS": str(PLUSH_DOG.parent),
                    "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        if "SPLATFORGE_DATASETS" in os.environ:
            env["SPLATFORGE_DATASETS"] = os.environ["SPLATFORGE_DATASETS"]
        if database_url:
            env["SPLATFORGE_DATABASE_URL"] = database_url
        if api_key:
            env["SPLATFORGE_API_KEY"] = api_key
        if max_upload_mb:
            env["SPLATFORGE_MAX_UPLOAD_MB"] = str(max_upload_mb)
        if storage:
            env["SPLATFORGE_STORAGE"] = storage
        env.update(extra_env or {})
        self.env = env
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / f"server-{self.port}.log"

    def start(self, timeout: float = 60.0) -> "Server":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = open(self.data_dir / f"server-{self.port}.log", "wb")
        self.log_path = Path(log.name)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "splatforge", "serve", "--port", str(self.port),
             "--log-level", "warning"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                   + self.log_path.read_text()[-4000:])
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not start:\n" + self.log_path.read_text()[-4000:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60, **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def assert_no_server_paths(server: "Server", text: str) -> None:
    """``text`` (a response, a message, a log) names none of the server's folders."""
    for p in {str(server.data_dir), str(server.data_dir.resolve())}:
        assert p not in text, text


def wait_job(client: httpx.Client, job_id: str, until: tuple[str, ...] = FINAL,
             timeout: float = 180.0, cond: Any = None) -> dict[str, Any]:
    """Poll ``GET /jobs/{id}`` until its status is in ``until`` (and ``cond(job)`` holds)."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job.get("status") in until and (cond is None or cond(job)):
            return job
        if cond is not None and job.get("status") in FINAL and job["status"] not in until:
            break
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout} s: {job}")


def training(job: dict[str, Any]) -> bool:
    """The job is training and has done at least one step."""
    return job.get("stage") == "train" and (job["progress"].get("step") or 0) >= 1


def plush_zip_bytes(top: str = "plush") -> bytes:
    """plush_dog's COLMAP model (sparse/0) and images_4 in one zip under a top folder."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted((PLUSH_DOG / "sparse" / "0").iterdir()):
            zf.write(p, f"{top}/sparse/0/{p.name}")
        for p in sorted((PLUSH_DOG / "images_4").iterdir()):
            zf.write(p, f"{top}/images_4/{p.name}")
    return buf.getvalue()


def new_scene(client: httpx.Client, name: str = "plush") -> str:
    r = client.post("/scenes", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def scene_with_source(client: httpx.Client) -> str:
    """A scene whose media is the shared plush_dog dataset (a source_uri under the allowed
    root): nothing is copied."""
    sid = new_scene(client)
    r = client.post(f"/scenes/{sid}/media", data={"source_uri": str(PLUSH_DOG)})
    assert r.status_code == 200, r.text
    return sid


def read_sse(client: httpx.Client, path: str, timeout: float = 180.0) -> list[dict[str, Any]]:
    """Read a Server-Sent Events stream to its end: ``[{"event", "id", "data"}]``."""
    import json

    out: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    with client.stream("GET", path, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line == "":
                if "data" in cur:
                    cur["data"] = json.loads(cur["data"])
                    out.append(cur)
                cur = {}
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            cur[key] = value.lstrip(" ")
    return out


class NotifyListener:
    """A real HTTP listener on 127.0.0.1 that records every POST (body, signature header);
    ``status`` is what it answers."""

    def __init__(self, status: int = 200):
        import http.server
        import threading

        self.posts: list[tuple[bytes, str | None]] = []
        self.status = status
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                outer.posts.append((self.rfile.read(n),
                                    self.headers.get("X-Splatforge-Signature")))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def notices(self, secret: str) -> list[dict[str, Any]]:
        """The JSON bodies received, each checked against its HMAC-SHA256 signature."""
        import json

        from splatforge.jobs.notify import verify_signature

        out = []
        for body, sig in self.posts:
            assert verify_signature(body, sig, secret), (body[:200], sig)
            out.append(json.loads(body))
        return out

    def wait(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.posts) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
