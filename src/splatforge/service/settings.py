"""Settings of the job service (``splatforge serve``, its workers and Celery workers).

Every setting comes from an environment variable (``ServiceSettings.from_env``, a
``pydantic-settings`` model validated once at start-up: :mod:`splatforge.settings_env`) so
that a server, the worker processes it starts and Celery workers on other machines share one
configuration; the viewer routes read theirs from the same model, never ``os.environ`` per
request:

==============================  ===========================================================
variable                        meaning (default)
==============================  ===========================================================
``SPLATFORGE_DATA_DIR``         data directory: database, artifacts, job work dirs
                                (``./splatforge-data``)
``SPLATFORGE_DATABASE_URL``     SQLAlchemy URL (``sqlite:///<data_dir>/splatforge.db``);
                                ``postgresql://...`` uses psycopg 3
``SPLATFORGE_STORAGE``          artifact store: a local directory or ``s3://bucket/prefix``
                                (``<data_dir>/artifacts``)
``SPLATFORGE_S3_ENDPOINT_URL``  S3 endpoint (MinIO, moto, ...); else ``AWS_ENDPOINT_URL``
``SPLATFORGE_API_KEY``          bearer key every route but ``/healthz`` requires (none)
``SPLATFORGE_EXECUTOR``         ``local`` (worker processes on this machine) or ``celery``
``SPLATFORGE_BROKER_URL``       Celery broker (``redis://...`` or ``amqp://...``)
``SPLATFORGE_MAX_UPLOAD_MB``    largest upload (multipart) body, MiB (2048); any other
                                body may be 1 MiB at most
``SPLATFORGE_MAX_UNCOMPRESSED_MB`` uncompressed bytes one upload may hold, all its files
                                and zip members together, MiB (4096)
``SPLATFORGE_MAX_MEMBER_MB``    uncompressed size of one file inside an uploaded zip, MiB
                                (512)
``SPLATFORGE_MAX_STREAMS_PER_JOB`` open event streams (SSE) of one job (100)
``SPLATFORGE_MAX_STREAMS_PER_KEY`` open event streams of one API key, all jobs (200)
``SPLATFORGE_ALLOWED_ROOTS``    ``os.pathsep``-separated folders a ``source_uri`` may name
``SPLATFORGE_MAX_JOBS``         local executor: jobs at once (CUDA GPUs, else 1)
``SPLATFORGE_JOB_TIME_LIMIT_S`` hard time limit of one job in seconds (none)
``SPLATFORGE_TRAIN_GPUS``       ranks each job trains on unless its config says (1; set by
                               ``splatforge worker --gpus``)
``SPLATFORGE_NOTIFY_URL``       POST every job's final status here (none; a job's own
                                ``notify_url`` wins), see :mod:`splatforge.jobs.notify`
``SPLATFORGE_NOTIFY_SECRET``    HMAC-SHA256 key of the notifications' signature header
``SPLATFORGE_NOTIFY_HOSTS``     comma-separated hosts notifications may go to (names,
                                ``.domain`` suffixes, IPs, networks); none = any host but
                                link-local ones (169.254.0.0/16, fe80::/10), which are
                                refused unless listed
``SPLATFORGE_VIEWER_IDLE_SECONDS`` stop a viewer unused this long (600)
``SPLATFORGE_VIEWER_MAX_SPLATS`` display budget of one viewer's model
==============================  ===========================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from ..settings_env import EnvSettings

#: environment variable -> settings field.
ENV_VARS: dict[str, str] = {
    "SPLATFORGE_DATA_DIR": "data_dir",
    "SPLATFORGE_DATABASE_URL": "database_url",
    "SPLATFORGE_STORAGE": "storage",
    "SPLATFORGE_S3_ENDPOINT_URL": "s3_endpoint_url",
    "SPLATFORGE_API_KEY": "api_key",
    "SPLATFORGE_EXECUTOR": "executor",
    "SPLATFORGE_BROKER_URL": "broker_url",
    "SPLATFORGE_MAX_UPLOAD_MB": "max_upload_mb",
    "SPLATFORGE_MAX_UNCOMPRESSED_MB": "max_uncompressed_mb",
    "SPLATFORGE_MAX_MEMBER_MB": "max_member_mb",
    "SPLATFORGE_MAX_STREAMS_PER_JOB": "max_streams_per_job",
    "SPLATFORGE_MAX_STREAMS_PER_KEY": "max_streams_per_key",
    "SPLATFORGE_ALLOWED_ROOTS": "allowed_roots",
    "SPLATFORGE_MAX_JOBS": "max_concurrent_jobs",
    "SPLATFORGE_JOB_TIME_LIMIT_S": "job_time_limit_s",
    "SPLATFORGE_TRAIN_GPUS": "train_gpus",
    "SPLATFORGE_NOTIFY_URL": "notify_url",
    "SPLATFORGE_NOTIFY_SECRET": "notify_secret",
    "SPLATFORGE_NOTIFY_HOSTS": "notify_hosts",
    "SPLATFORGE_VIEWER_IDLE_SECONDS": "viewer_idle_seconds",
    "SPLATFORGE_VIEWER_MAX_SPLATS": "viewer_max_splats",
}


class ServiceSettings(EnvSettings):
    """Configuration of the job service; see the module docstring for the variables.

    Use :meth:`from_env` in programs; tests construct it directly (then no environment is
    read).
    """

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_prefix="SPLATFORGE_",
                                      env_ignore_empty=True, populate_by_name=True)
    error_title: ClassVar[str] = "invalid service settings"

    data_dir: Path = Field(Path("splatforge-data"),
                           description="Database, local artifacts and job work dirs.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default SQLite <data_dir>/splatforge.db (WAL).")
    storage: str | None = Field(
        None, description="Artifact store: local directory or s3://bucket/prefix; default "
                          "<data_dir>/artifacts.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint URL (MinIO, moto).")
    api_key: str | None = Field(None, description="Bearer API key (none = no auth).")
    executor: Literal["local", "celery"] = Field("local", description="Job executor.")
    broker_url: str | None = Field(None, description="Celery broker URL.")
    max_upload_mb: float = Field(2048.0, gt=0, description="Largest upload body, MiB.")
    max_uncompressed_mb: float = Field(
        4096.0, gt=0, description="Uncompressed bytes one upload may hold (its files and "
                                  "zip members together), MiB; over it: 413.")
    max_member_mb: float = Field(
        512.0, gt=0, description="Uncompressed size of one file in an uploaded zip, MiB; "
                                 "over it: 413 naming the member.")
    max_streams_per_job: int = Field(
        100, ge=1, description="Open event streams (SSE) of one job; over it: 429.")
    max_streams_per_key: int = Field(
        200, ge=1, description="Open event streams of one API key (or of all clients "
                               "when no key is set); over it: 429.")
    allowed_roots: Annotated[tuple[Path, ...], NoDecode] = Field(
        (), description="Local folders a source_uri may point into (os.pathsep-separated).")
    max_concurrent_jobs: int | None = Field(
        None, ge=1, le=1024, validation_alias=AliasChoices("max_concurrent_jobs",
                                                           "SPLATFORGE_MAX_JOBS"),
        description="Local executor: jobs at once (default: CUDA GPUs, else 1).")
    job_time_limit_s: float | None = Field(
        None, gt=0, description="Hard limit of one job, seconds (none).")
    train_gpus: int = Field(
        1, ge=1, le=64, description="Ranks each job trains on when its train config does not "
                                    "say (set by `splatforge worker --gpus 0,1`).")
    notify_url: str | None = Field(
        None, max_length=2048, pattern=r"^https?://[^\s]+$",
        description="POST each job's final status here (a job's notify_url wins).")
    notify_secret: str | None = Field(
        None, description="HMAC-SHA256 key of the notification signature header.")
    notify_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Hosts notifications may go to (comma-separated: names, .domain "
                        "suffixes, IPs, networks); empty: any host but link-local ones.")
    viewer_idle_seconds: float = Field(600.0, gt=0,
                                       description="Stop a viewer unused this long, s.")
    viewer_max_splats: int | None = Field(None, ge=1,
                                          description="Display budget of one viewer.")

    # -- derived values ---------------------------------------------------------------------
    @property
    def database(self) -> str:
        """The SQLAlchemy URL in use (the SQLite default made absolute)."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            elif url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url[len("postgres://"):]
            return url
        return f"sqlite:///{(self.data_dir / 'splatforge.db').resolve()}"

    @property
    def storage_url(self) -> str:
        """The artifact store in use (a local directory path or ``s3://bucket/prefix``)."""
        if self.storage:
            return self.storage
        return str((self.data_dir / "artifacts").resolve())

    @property
    def endpoint_url(self) -> str | None:
        """S3 endpoint: ``s3_endpoint_url``, else ``$AWS_ENDPOINT_URL_S3`` /
        ``$AWS_ENDPOINT_URL``, else None (AWS)."""
        return (self.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL") or None)

    @property
    def work_dir(self) -> Path:
        """Where jobs run: ``<data_dir>/work/<job_id>``."""
        return (self.data_dir / "work").resolve()

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_uncompressed_bytes(self) -> int:
        """``max_uncompressed_mb`` in bytes."""
        return int(self.max_uncompressed_mb * 1024 * 1024)

    @property
    def max_member_bytes(self) -> int:
        """``max_member_mb`` in bytes."""
        return int(self.max_member_mb * 1024 * 1024)

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _roots(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(Path(p) for p in v.split(os.pathsep) if p)
        return v

    @field_validator("notify_hosts", mode="before")
    @classmethod
    def _hosts(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(h.strip() for h in v.split(",") if h.strip())
        return v

    @model_validator(mode="after")
    def _notify_url_host(self) -> "ServiceSettings":
        from ..jobs.notify import NotifyURLRefused, check_notify_url

        if self.notify_url:
            try:
                check_notify_url(self.notify_url, self.notify_hosts)
            except NotifyURLRefused as e:
                raise ValueError(f"SPLATFORGE_NOTIFY_URL: {e}") from None
        return self

    # -- environment ------------------------------------------------------------------------
    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in another process."""
        out: dict[str, str] = {}
        for var, field in ENV_VARS.items():
            value = getattr(self, field)
            if value is None or value == ():
                continue
            if field == "notify_hosts":
                out[var] = ",".join(value)
            elif field == "allowed_roots":
                out[var] = os.pathsep.join(str(Path(p).resolve()) for p in value)
            elif field == "data_dir":
                out[var] = str(Path(value).resolve())
            else:
                out[var] = str(value)
        return out

    def resolved_max_jobs(self) -> int:
        """Local executor concurrency: the setting, else the number of CUDA GPUs, else 1."""
        if self.max_concurrent_jobs:
            return self.max_concurrent_jobs
        return max(1, len(cuda_device_ids()))


def cuda_device_ids() -> list[str]:
    """The CUDA GPUs this machine offers workers, without importing torch (a server need
    not load CUDA): ``$CUDA_VISIBLE_DEVICES`` when set, else the GPUs ``nvidia-smi -L``
    lists, else none."""
    import shutil
    import subprocess

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(k) for k, line in enumerate(
        ln for ln in out.splitlines() if ln.startswith("GPU "))]
