"""The service's HTTP API from Python: :class:`ServiceClient` and :func:`wait_for_job`.

Errors a user can cause (server not reachable, 401, 404, a bad media path) raise
:class:`ClientError`. The ``splatforge client`` commands (:mod:`.commands`) are built on it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import httpx
from pydantic import BaseModel, ValidationError

from ..errors import SplatforgeError
from ..service.schemas import ArtifactList, JobCreated, JobOut, MediaAdded, SceneCreated

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
#: ``wait`` exit status per final job status.
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 3}
_CHUNK = 1 << 20


class ClientError(SplatforgeError):
    """A request the service refused or could not answer (message names URL and cause)."""


def _read(model: type[BaseModel], resp: httpx.Response) -> dict[str, Any]:
    """The JSON body of ``resp`` checked against the service's response model ``model``
    (:mod:`splatforge.service.schemas`), as a dict.

    Raises:
        ClientError: the body is not that model (a different service or version).
    """
    try:
        return model.model_validate(resp.json()).model_dump(mode="json")
    except (ValueError, ValidationError) as e:
        raise ClientError(f"{resp.request.method} {resp.request.url}: the answer is not a "
                          f"{model.__name__} ({e})") from None


# --------------------------------------------------------------------------------------------
# HTTP


class ServiceClient:
    """A small typed wrapper over the service's HTTP API (one :class:`httpx.Client`).

    Args:
        url: the service's base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: bearer token (``SPLATFORGE_API_KEY`` of the server), or None.
        timeout: seconds per request (connect and read); uploads and downloads stream.

    Raises (every method):
        ClientError: connection refused / DNS failure / timeout, or an HTTP error status, with
            the server's ``detail`` text when it sends one.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "ServiceClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ClientError(self._transport_message(e)) from None
        self._check(resp, method, path)
        return resp

    def _transport_message(self, e: Exception) -> str:
        if isinstance(e, httpx.ConnectError):
            return (f"cannot connect to the splatforge service at {self.url} ({e}); is "
                    "`splatforge serve` running there? (--url or SPLATFORGE_URL)")
        if isinstance(e, httpx.TimeoutException):
            return f"the splatforge service at {self.url} did not answer in time ({e!r})"
        return f"request to {self.url} failed: {e!r}"

    def _check(self, resp: httpx.Response, method: str, path: str) -> None:
        if resp.status_code < 400:
            return
        if not resp.is_closed:
            resp.read()
        detail: Any = resp.text.strip()
        try:
            body = resp.json()
            detail = body.get("detail", body) if isinstance(body, dict) else body
        except ValueError:
            pass
        if not isinstance(detail, str):
            detail = json.dumps(detail)
        where = f"{method} {self.url}{path}"
        if resp.status_code == 401:
            raise ClientError(f"{where}: 401 unauthorized ({detail}); pass the server's "
                              "SPLATFORGE_API_KEY with --api-key or the SPLATFORGE_API_KEY "
                              "variable")
        if resp.status_code == 404:
            raise ClientError(f"{where}: 404 not found ({detail})")
        raise ClientError(f"{where}: HTTP {resp.status_code} ({detail})")

    # -- API -------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz").json()

    def create_scene(self, name: str | None = None) -> str:
        """``POST /scenes`` -> the new scene id."""
        body = {"name": name} if name else {}
        return _read(SceneCreated, self._request("POST", "/scenes", json=body))["id"]

    def upload_media(self, scene_id: str, files: list[Path]) -> dict[str, Any]:
        """``POST /scenes/{id}/media`` with ``files`` as one multipart request (streamed)."""
        handles = []
        try:
            parts = []
            for p in files:
                f = open(p, "rb")
                handles.append(f)
                parts.append(("files", (p.name, f, _content_type(p))))
            return _read(MediaAdded, self._request(
                "POST", f"/scenes/{scene_id}/media", files=parts,
                timeout=httpx.Timeout(30.0, write=None, read=600.0)))
        finally:
            for f in handles:
                f.close()

    def add_source_uri(self, scene_id: str, uri: str) -> dict[str, Any]:
        """``POST /scenes/{id}/media`` with the form field ``source_uri`` (``s3://...`` or a
        folder under the server's ``SPLATFORGE_ALLOWED_ROOTS``; fetched when the job runs)."""
        return _read(MediaAdded, self._request("POST", f"/scenes/{scene_id}/media",
                                               data={"source_uri": uri}))

    def create_job(self, scene_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /scenes/{id}/jobs`` -> the job record (``id``, ``status``, ...)."""
        return _read(JobCreated, self._request("POST", f"/scenes/{scene_id}/jobs", json=body))

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{id}``: status, stage, progress, eta, metrics, error, timestamps."""
        return _read(JobOut, self._request("GET", f"/jobs/{job_id}"))

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``POST /jobs/{id}/cancel``."""
        return _read(JobOut, self._request("POST", f"/jobs/{job_id}/cancel"))

    def artifacts(self, scene_id: str) -> list[dict[str, Any]]:
        """``GET /scenes/{id}/artifacts`` -> ``[{"name": ..., "size": ...}, ...]``."""
        return _read(ArtifactList, self._request("GET", f"/scenes/{scene_id}/artifacts"))[
            "artifacts"]

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """``GET /jobs/{id}/events`` (server-sent events): yields each event's JSON data."""
        try:
            with self.http.stream("GET", f"/jobs/{job_id}/events",
                                  timeout=httpx.Timeout(30.0, read=120.0),
                                  headers={"Accept": "text/event-stream"}) as resp:
                self._check(resp, "GET", f"/jobs/{job_id}/events")
                data: list[str] = []
                for line in resp.iter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif not line and data:
                        text = "\n".join(data)
                        data = []
                        try:
                            obj = json.loads(text)
                        except ValueError:
                            continue
                        if isinstance(obj, dict):
                            yield obj
        except httpx.TransportError as e:
            raise ClientError(self._transport_message(e)) from None

    def download(self, scene_id: str, name: str, dest: Path,
                 log: Any = None) -> tuple[Path, int, int]:
        """Stream artifact ``name`` to ``dest``; returns ``(dest, bytes_total, resumed_at)``.

        Bytes go to ``<dest>.part`` first; when that file exists from an interrupted download
        the request asks for the rest with ``Range: bytes=<size>-`` and appends (a server
        answering 200 instead of 206 restarts from zero). The finished file is checked against
        the advertised length and renamed onto ``dest``, so ``dest`` is either absent or
        complete.
        """
        path = f"/scenes/{scene_id}/artifacts/{name}"
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.is_file() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with self.http.stream("GET", path, headers=headers,
                                  timeout=httpx.Timeout(30.0, read=300.0)) as resp:
                if resp.status_code == 416 and have:
                    # The partial file is already complete (or longer than the artifact).
                    resp.read()
                    total = _head_size(self, path)
                    if total == have:
                        os.replace(part, dest)
                        return dest, have, have
                    part.unlink()
                    return self.download(scene_id, name, dest, log)
                self._check(resp, "GET", path)
                if resp.status_code == 206:
                    start, total = _content_range(resp.headers.get("content-range", ""))
                    if start != have:
                        raise ClientError(f"GET {self.url}{path}: asked for bytes from {have}, "
                                          f"the server sent from {start}")
                    mode, resumed = "ab", have
                else:
                    length = resp.headers.get("content-length")
                    total = int(length) if length is not None else None
                    mode, resumed = "wb", 0
                if resumed and log:
                    log(f"{name}: resuming at byte {resumed}")
                with open(part, mode) as f:
                    for chunk in resp.iter_bytes(_CHUNK):
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
        except httpx.TransportError as e:
            raise ClientError(self._transport_message(e) + f"; the partial download stays in "
                              f"{part}, run the same command again to resume") from None
        size = part.stat().st_size
        if total is not None and size != total:
            raise ClientError(f"{name}: got {size} of {total} bytes; the partial download stays "
                              f"in {part}, run the same command again to resume")
        os.replace(part, dest)
        return dest, size, resumed


def _head_size(client: ServiceClient, path: str) -> int | None:
    resp = client._request("GET", path, headers={"Range": "bytes=0-0"})
    if resp.status_code == 206:
        return _content_range(resp.headers.get("content-range", ""))[1]
    n = resp.headers.get("content-length")
    return int(n) if n is not None else None


def _content_range(value: str) -> tuple[int, int | None]:
    """``'bytes 100-199/200'`` -> ``(100, 200)`` (RFC 9110 section 14.4)."""
    try:
        unit, _, rest = value.strip().partition(" ")
        span, _, total = rest.partition("/")
        start = int(span.split("-")[0])
        if unit != "bytes":
            raise ValueError(unit)
        return start, (None if total == "*" else int(total))
    except ValueError:
        raise ClientError(f"the server sent an unreadable Content-Range: {value!r}") from None


def _content_type(p: Path) -> str:
    s = p.suffix.lower()
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
            ".zip": "application/zip", ".mp4": "video/mp4", ".mov": "video/quicktime",
            ".json": "application/json"}.get(s, "application/octet-stream")


def safe_relpath(name: str) -> PurePosixPath:
    """An artifact name as a relative path that cannot leave the output folder."""
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or not p.parts:
        raise ClientError(f"refusing artifact name {name!r}: not a plain relative path")
    return p


def zip_folder(folder: Path, dest: Path) -> Path:
    """Zip every file under ``folder`` (relative paths kept, hidden files skipped) to
    ``dest``; images are stored, not recompressed."""
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder)
            if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                zf.write(p, rel.as_posix(), compress_type=zipfile.ZIP_STORED
                         if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".mp4")
                         else zipfile.ZIP_DEFLATED)
    return dest


# --------------------------------------------------------------------------------------------
# progress display


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress_line(job: dict[str, Any]) -> str:
    from ..progress import format_eta

    prog = job.get("progress") or {}
    step, total = prog.get("step"), prog.get("max_steps")
    parts = [f"{job.get('status', '?')}", f"stage {job.get('stage') or '-'}"]
    if step is not None:
        parts.append(f"step {step}/{total}" if total else f"step {step}")
    if job.get("eta_s") is not None:
        parts.append(format_eta(float(job["eta_s"])))
    return "  ".join(parts)


class WaitDisplay:
    """On a terminal: one rich progress bar per stage (step k of n, ETA; a pulsing bar while
    the stage has no step count), the finished stages' bars left above. Elsewhere: plain
    lines, one per change of status or stage and at most one every ``interval`` seconds."""

    def __init__(self, job_id: str, interval: float = 2.0):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        self.interval = interval
        self.job_id = job_id
        self._bar: Any = None
        self._task: Any = None
        self._stage: str | None = None
        self._total: int | None = None
        self._last: tuple[Any, Any] = (None, None)
        self._last_t = 0.0

    def update(self, job: dict[str, Any]) -> None:
        if self.live:
            self._update_bar(job)
            return
        key = (job.get("status"), job.get("stage"))
        now = time.monotonic()
        if key != self._last or now - self._last_t >= self.interval:
            self._last, self._last_t = key, now
            log(f"job {self.job_id}: {_progress_line(job)}")

    def _update_bar(self, job: dict[str, Any]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from ..progress import format_eta

        status = job.get("status") or ""
        prog = job.get("progress") or {}
        step, total = prog.get("step") or 0, prog.get("max_steps") or prog.get("total")
        stage = job.get("stage") or status
        if self._bar is None:
            self._bar = Progress(TextColumn("[bold blue]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[eta]}"),
                                 console=self.console)
            self._bar.start()
        if status in TERMINAL:
            if self._task is None:
                self._task = self._bar.add_task(status, total=1, eta="")
            label = status if self._stage in (None, status) else f"{status}: {self._stage}"
            done: dict[str, Any] = {}
            if status == "succeeded":
                done = {"completed": self._total or 1, "total": self._total or 1}
            elif not self._total:
                done = {"completed": 0, "total": 1}  # stop the pulsing bar
            self._bar.update(self._task, description=label, eta="", **done)
            return
        if stage != self._stage or self._task is None:
            if self._task is not None:  # the previous stage is over: a full bar
                self._bar.update(self._task, completed=self._total or 1,
                                 total=self._total or 1, eta="")
            self._task = self._bar.add_task(stage, total=total or None, eta="")
            self._stage, self._total = stage, total
        if total:
            self._total = total
        eta = job.get("eta_s")
        label = status if stage == status else f"{status}: {stage}"
        self._bar.update(self._task, description=label, completed=step,
                         total=total or None,
                         eta=format_eta(float(eta)) if eta is not None else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _apply_event(job: dict[str, Any], ev: dict[str, Any]) -> bool:
    """Fold one SSE event (a job event row) into the local ``job`` record; True when the
    job's status may have changed (fetch the record again)."""
    kind = ev.get("kind")
    if kind == "progress":
        if ev.get("stage"):
            job["stage"] = ev["stage"]
        prog = dict(job.get("progress") or {})
        prog.update(step=ev.get("step"), max_steps=ev.get("total"), total=ev.get("total"))
        job["progress"] = prog
        job["eta_s"] = ev.get("eta_s")
        return False
    if kind == "stage_started" and ev.get("stage"):
        job["stage"] = ev["stage"]
        job["progress"], job["eta_s"] = {}, None
        return False
    return kind == "status" or "status" in ev


def wait_for_job(client: ServiceClient, job_id: str, poll: float = 1.0,
                 timeout: float | None = None, use_events: bool = True,
                 display: WaitDisplay | None = None) -> dict[str, Any]:
    """Follow a job until it is succeeded, failed or cancelled; returns its final record.

    Follows ``GET /jobs/{id}/events`` (server-sent events: progress updates the display as
    it happens; status events and the closing ``end`` event fetch ``GET /jobs/{id}``) and
    falls back to polling ``GET /jobs/{id}`` every ``poll`` seconds when the stream is
    unavailable or ends early.

    Raises:
        ClientError: the service is unreachable, the job does not exist, or ``timeout``
            seconds passed (the job keeps running on the server).
    """
    t0 = time.monotonic()
    job = client.job(job_id)
    if display:
        display.update(job)

    def check_timeout() -> None:
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise ClientError(f"job {job_id} still {job.get('status')} after {timeout:g} s "
                              "(it keeps running on the server)")

    if use_events and job.get("status") not in TERMINAL:
        try:
            for ev in client.events(job_id):
                check_timeout()
                if _apply_event(job, ev):
                    job = client.job(job_id)
                if display:
                    display.update(job)
                if job.get("status") in TERMINAL:
                    break
        except ClientError as e:
            if "/events" not in str(e):
                raise
            # no event stream here: poll instead
    while job.get("status") not in TERMINAL:
        check_timeout()
        time.sleep(poll)
        job = client.job(job_id)
        if display:
            display.update(job)
    return job
