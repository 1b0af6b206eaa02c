"""Settings of the job service (``splatforge serve``, its workers and Celery workers).

Every setting comes from an environment variable (``ServiceSettings.from_env``) so that a
server, the worker processes it starts and Celery workers on other machines share one
configuration:

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
``SPLATFORGE_MAX_UPLOAD_MB``    largest request body accepted, MiB (2048)
``SPLATFORGE_ALLOWED_ROOTS``    ``os.pathsep``-separated folders a ``source_uri`` may name
``SPLATFORGE_MAX_JOBS``         local executor: jobs at once (CUDA GPUs, else 1)
``SPLATFORGE_JOB_TIME_LIMIT_S`` hard time limit of one job in seconds (none)
==============================  ===========================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError

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
    "SPLATFORGE_ALLOWED_ROOTS": "allowed_roots",
    "SPLATFORGE_MAX_JOBS": "max_concurrent_jobs",
    "SPLATFORGE_JOB_TIME_LIMIT_S": "job_time_limit_s",
}


class ServiceSettings(BaseModel):
    """Configuration of the job service; see the module docstring for the variables.

    Use :meth:`from_env` in programs; tests construct it directly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    max_upload_mb: float = Field(2048.0, gt=0, description="Largest request body, MiB.")
    allowed_roots: tuple[Path, ...] = Field(
        (), description="Local folders a source_uri may point into.")
    max_concurrent_jobs: int | None = Field(
        None, ge=1, le=1024, description="Local executor: jobs at once (default: CUDA GPUs, "
                                         "else 1).")
    job_time_limit_s: float | None = Field(
        None, gt=0, description="Hard limit of one job, seconds (none).")

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
        return int(self.max_upload_mb * 1024 * 1024)

    # -- environment ------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object
                 ) -> "ServiceSettings":
        """Settings from ``env`` (default ``os.environ``); keyword ``overrides`` win.

        Raises:
            ConfigError: an invalid value, naming the variable.
        """
        env = os.environ if env is None else env
        data: dict[str, object] = {}
        for var, field in ENV_VARS.items():
            value = env.get(var)
            if value is None or value == "":
                continue
            if field == "allowed_roots":
                data[field] = tuple(Path(p) for p in value.split(os.pathsep) if p)
            else:
                data[field] = value
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            names = {f: v for v, f in ENV_VARS.items()}
            lines = []
            for e in err.errors():
                field = str(e["loc"][0]) if e.get("loc") else "?"
                lines.append(f"{names.get(field, field)}: {e['msg']} "
                             f"(got {e.get('input')!r})")
            raise ConfigError("invalid service settings:\n  " + "\n  ".join(lines)) from None

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in another process."""
        out: dict[str, str] = {}
        for var, field in ENV_VARS.items():
            value = getattr(self, field)
            if value is None or value == ():
                continue
            if field == "allowed_roots":
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
