"""``splatforge client``: drive a splatforge job service over HTTP.

The flows of a baking-server test script, one subcommand each::

    splatforge client submit photos/ --preset preview     # scene + upload + job -> ids
    splatforge client wait <job>                          # progress bar; exit 0 on success
    splatforge client status <job>                        # the job record as JSON
    splatforge client download <scene> -o out/            # artifacts, resumable (Range)
    splatforge client cancel <job>

Every subcommand takes ``--url`` (default ``$SPLATFORGE_URL`` or ``http://127.0.0.1:8000``)
and ``--api-key`` (default ``$SPLATFORGE_API_KEY``, sent as ``Authorization: Bearer``).
Errors a user can cause (server not reachable, 401, 404, a bad media path) raise
:class:`ClientError`, which ``splatforge`` prints as one line and exits with status 2.
``wait`` exits 0 when the job succeeded, 1 when it failed, 3 when it was cancelled.
The same commands are the ``splatforge-client`` console script (:func:`main`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import tyro

from ..errors import SplatforgeError
from .api import (DEFAULT_URL, EXIT_CODES, ClientError, ServiceClient, WaitDisplay, log,
                  safe_relpath, wait_for_job, zip_folder)


@dataclass
class _Common:
    url: str = field(default_factory=lambda: os.environ.get("SPLATFORGE_URL") or DEFAULT_URL)
    """Base URL of the service ($SPLATFORGE_URL)."""
    api_key: str | None = field(default_factory=lambda: os.environ.get("SPLATFORGE_API_KEY")
                                or None)
    """Bearer token ($SPLATFORGE_API_KEY)."""

    def client(self) -> ServiceClient:
        return ServiceClient(self.url, self.api_key)


@dataclass(kw_only=True)
class Submit(_Common):
    """Create a scene, upload the media, start a job; prints the scene and job ids. Media:
    image files, a folder (zipped on the fly, sub-folders kept, so a COLMAP dataset travels
    whole), a .zip or a video; or --source-uri."""

    media: tyro.conf.Positional[list[Path]] = field(default_factory=list)
    """Image files, one folder, a .zip or a video."""
    source_uri: str | None = None
    """Instead of uploading: a URI the server reads (s3://..., file://..., a path)."""
    preset: Literal["preview", "default", "quality"] | None = None
    """Stage settings preset (default: the server's, ``splatforge.presets.DEFAULT_PRESET``)."""
    max_steps: int | None = None
    """Training steps (train.max_steps)."""
    data_factor: int | None = None
    """Image downsampling factor (scene.data_factor): 1, 2, 4 or 8."""
    config: str | None = None
    """JSON object merged into the job body, e.g. '{"train": {"device": "cpu"}}'."""
    name: str | None = None
    """A name for the scene."""
    json_output: Annotated[bool, tyro.conf.arg(name="json")] = False
    """Print {"scene_id": ..., "job_id": ..., "status": ...} as JSON."""

    def job_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.config:
            try:
                extra = json.loads(self.config)
            except ValueError as e:
                raise ClientError(f"--config is not valid JSON: {e}") from None
            if not isinstance(extra, dict):
                raise ClientError("--config must be a JSON object")
            body.update(extra)
        if self.preset:
            body["preset"] = self.preset
        if self.max_steps is not None:
            body.setdefault("train", {})["max_steps"] = self.max_steps
        if self.data_factor is not None:
            body.setdefault("scene", {})["data_factor"] = self.data_factor
        return body

    def run(self) -> int:
        if not self.media and not self.source_uri:
            raise ClientError("give media to upload (files, a folder, a .zip or a video) or "
                              "--source-uri")
        if self.media and self.source_uri:
            raise ClientError("give either media to upload or --source-uri, not both")
        for p in self.media:
            if not p.exists():
                raise ClientError(f"{p}: does not exist")
        if len(self.media) > 1 and any(p.is_dir() for p in self.media):
            raise ClientError("give one folder, or files; not folders and files together")
        body = self.job_body()
        with self.client() as c, tempfile.TemporaryDirectory(prefix="splatforge-up-") as tmp:
            scene_id = c.create_scene(self.name)
            if self.source_uri:
                c.add_source_uri(scene_id, self.source_uri)
            else:
                files = self.media
                if files[0].is_dir():
                    log(f"zipping {files[0]} ...")
                    files = [zip_folder(files[0], Path(tmp) / f"{files[0].name or 'media'}.zip")]
                size = sum(p.stat().st_size for p in files)
                log(f"uploading {len(files)} file(s), {size / 1e6:.1f} MB to scene {scene_id}")
                c.upload_media(scene_id, files)
            job = c.create_job(scene_id, body)
        if self.json_output:
            print(json.dumps({"scene_id": scene_id, "job_id": job["id"],
                              "status": job.get("status")}))
        else:
            print(f"scene {scene_id}\njob {job['id']} ({job.get('status', 'queued')})")
        return 0


@dataclass(kw_only=True)
class Status(_Common):
    """Print a job's record (status, stage, progress, ETA, metrics, error) as JSON."""

    job: tyro.conf.Positional[str]
    """Job id."""

    def run(self) -> int:
        with self.client() as c:
            print(json.dumps(c.job(self.job), indent=2))
        return 0


@dataclass(kw_only=True)
class Wait(_Common):
    """Follow a job with a progress bar (stage, step k of n, ETA) until it ends. Exit
    status: 0 succeeded, 1 failed, 3 cancelled, 2 a client error (unreachable, 404, timeout)."""

    job: tyro.conf.Positional[str]
    """Job id."""
    poll: float = 1.0
    """Seconds between status requests."""
    timeout: float | None = None
    """Give up after this many seconds (the job keeps running)."""
    no_events: bool = False
    """Poll only; do not follow the server-sent events stream."""

    def run(self) -> int:
        display = WaitDisplay(self.job)
        try:
            with self.client() as c:
                job = wait_for_job(c, self.job, poll=self.poll, timeout=self.timeout,
                                   use_events=not self.no_events, display=display)
        finally:
            display.close()
        status = job.get("status")
        line = f"job {self.job} {status}"
        if status == "failed" and job.get("error"):
            err = job["error"]
            if isinstance(err, dict):
                err = (f"[{err['stage']}] " if err.get("stage") else "") + str(
                    err.get("message") or "")
            line += f": {err}"
        if status == "succeeded" and job.get("metrics"):
            m = job["metrics"]
            nums = {k: v for k, v in m.items() if isinstance(v, (int, float))}
            if nums:
                line += " (" + ", ".join(f"{k} {v:.4g}" for k, v in nums.items()) + ")"
        print(line)
        return EXIT_CODES.get(status, 1)


@dataclass(kw_only=True)
class Download(_Common):
    """Download a scene's artifacts into a folder (default: all of them). Interrupted
    downloads resume from their .part file with an HTTP Range request; each file appears
    complete or not at all."""

    scene: tyro.conf.Positional[str]
    """Scene id."""
    output: Annotated[Path, tyro.conf.arg(aliases=["-o"])] = Path(".")
    """Folder to write into."""
    name: list[str] = field(default_factory=list)
    """Artifact name(s) to fetch (default: every artifact the scene lists)."""

    def run(self) -> int:
        with self.client() as c:
            names = list(self.name)
            if not names:
                names = [a["name"] for a in c.artifacts(self.scene)]
                if not names:
                    raise ClientError(f"scene {self.scene} has no artifacts yet (has its job "
                                      "finished?)")
            for n in names:
                dest = self.output / Path(*safe_relpath(n).parts)
                path, size, resumed = c.download(self.scene, n, dest, log=log)
                extra = f", resumed at byte {resumed}" if resumed else ""
                print(f"{path} ({size} bytes{extra})")
        return 0


@dataclass(kw_only=True)
class Cancel(_Common):
    """Ask the service to cancel a job (queued or running); prints the job's status."""

    job: tyro.conf.Positional[str]
    """Job id."""

    def run(self) -> int:
        with self.client() as c:
            rec = c.cancel(self.job)
        print(f"job {self.job}: {rec.get('status', 'cancel requested')}")
        return 0


ClientCommand = Union[
    Annotated[Submit, tyro.conf.subcommand("submit")],
    Annotated[Status, tyro.conf.subcommand("status")],
    Annotated[Wait, tyro.conf.subcommand("wait")],
    Annotated[Download, tyro.conf.subcommand("download")],
    Annotated[Cancel, tyro.conf.subcommand("cancel")],
]


def client(command: ClientCommand) -> None:
    """Talk to a splatforge job service: submit, status, wait, download, cancel.

    Args:
        command: the subcommand.
    """
    code = command.run()
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``splatforge-client`` console script (``splatforge client``'s
    subcommands). Returns the exit status: the command's (``wait``: 0 succeeded, 1 failed,
    3 cancelled), 2 after a :class:`ClientError` or another splatforge error (printed as one
    line)."""
    command = tyro.cli(ClientCommand, args=argv, prog="splatforge-client")
    try:
        return command.run() or 0
    except SplatforgeError as e:
        print(f"splatforge-client: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
