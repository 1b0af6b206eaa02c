"""The job store: SQLAlchemy 2 models (scenes, jobs, job events) and sessions.

SQLite (the default, in the data directory) runs in WAL mode with a busy timeout so the
server and its worker processes can write at once; PostgreSQL is used through psycopg 3.
The schema is created and upgraded by Alembic (:func:`init_db`, migrations in
``splatforge/service/migrations``), never by ``create_all``.

Times are UTC seconds since the epoch (``float``), the same on every backend.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from .settings import ServiceSettings

#: Job states; the moves between them: :data:`splatforge.service.lifecycle.TRANSITIONS`.
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def new_id() -> str:
    """A new scene or job id: 32 lowercase hex digits (uuid4)."""
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class Scene(Base):
    """A scene: its media (in the artifact store under ``media/{id}/``, or a ``source_uri``)
    and its jobs."""

    __tablename__ = "scenes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)
    #: images | zip | video | colmap | mixed, from the uploads (None before any).
    media_kind: Mapped[str | None] = mapped_column(String(32))
    #: number of media files stored under media/{id}/.
    media_files: Mapped[int] = mapped_column(Integer, default=0)
    media_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    #: s3://bucket/prefix or a local path under an allowed root (fetched by the runner).
    source_uri: Mapped[str | None] = mapped_column(Text)


class MediaObject(Base):
    """One stored media file of a scene, ``media/{scene_id}/{name}``: a name is reserved
    here (unique per scene) before its file is written, so no upload ever overwrites
    another's file, and the scene's counts grow by exactly what was stored."""

    __tablename__ = "media_objects"
    __table_args__ = (UniqueConstraint("scene_id", "name", name="uq_media_objects_scene_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scene_id: Mapped[str] = mapped_column(ForeignKey("scenes.id", ondelete="CASCADE"),
                                          index=True)
    #: the stored name, relative to media/{scene_id}/ (``images_4/IMG_3496.jpg``).
    name: Mapped[str] = mapped_column(String(1024))
    #: what the client called it (``IMG+é3496.jpg``; ``data.zip:images/a b.jpg``).
    original: Mapped[str] = mapped_column(Text)
    #: bytes.
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)


class Job(Base):
    """One pipeline run over a scene's media."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    scene_id: Mapped[str] = mapped_column(ForeignKey("scenes.id", ondelete="CASCADE"),
                                          index=True)
    #: reconstruct (POST /scenes/{id}/jobs) | train_gsplat (the compat route).
    kind: Mapped[str] = mapped_column(String(32), default="reconstruct")
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    #: the request body: {"preset", "ingest", "sfm", "scene", "train"}.
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: current pipeline stage (ingest | sfm | train | eval | export | upload ...).
    stage: Mapped[str | None] = mapped_column(String(32))
    step: Mapped[int | None] = mapped_column(Integer)
    total: Mapped[int | None] = mapped_column(Integer)
    max_steps: Mapped[int | None] = mapped_column(Integer)
    fraction: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error_stage: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: who runs it: "local" or a Celery worker name; pid and host of the worker process.
    worker: Mapped[str | None] = mapped_column(String(256))
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(256))
    #: executor-specific handle (a Celery task id).
    task_id: Mapped[str | None] = mapped_column(String(256))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)
    #: last sign of life of the worker (every ~0.5 s while it runs).
    heartbeat_at: Mapped[float | None] = mapped_column(Float)


class JobEvent(Base):
    """One progress event of a job (:class:`splatforge.events.Event`, or a service event such
    as ``status``), in the order they happened (``id``)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    time: Mapped[float] = mapped_column(Float, default=time.time)
    kind: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    step: Mapped[int | None] = mapped_column(Integer)
    total: Mapped[int | None] = mapped_column(Integer)
    eta_s: Mapped[float | None] = mapped_column(Float)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "job_id": self.job_id, "time": self.time, "kind": self.kind,
                "stage": self.stage, "message": self.message, "step": self.step,
                "total": self.total, "eta_s": self.eta_s, "data": self.data or {}}


# --------------------------------------------------------------------------------------------
# Engines and sessions
# --------------------------------------------------------------------------------------------

def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a 30 s busy timeout and foreign keys, and its
    folder is created.

    Raises:
        sqlalchemy.exc.ArgumentError: an unparseable URL.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        eng = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                            pool_size=20, max_overflow=40)
        event.listen(eng, "connect", _sqlite_pragmas)
        return eng
    return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=40)


_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
_lock = threading.Lock()


def get_engine(settings: ServiceSettings) -> Engine:
    """The process-wide engine of ``settings.database`` (made once)."""
    url = settings.database
    with _lock:
        eng = _engines.get(url)
        if eng is None:
            eng = _engines[url] = make_engine(url)
            _factories[url] = sessionmaker(eng, expire_on_commit=False)
        return eng


def session_factory(settings: ServiceSettings) -> sessionmaker[Session]:
    get_engine(settings)
    return _factories[settings.database]


@contextmanager
def session_scope(settings: ServiceSettings) -> Iterator[Session]:
    """A session that commits on success and rolls back on an exception."""
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    """Close every pooled connection (before a fork, at shutdown, in tests)."""
    with _lock:
        for eng in _engines.values():
            eng.dispose()
        _engines.clear()
        _factories.clear()


def alembic_config(url: str) -> Any:
    """An Alembic ``Config`` for the packaged migrations and ``url`` (no alembic.ini)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def init_db(settings: ServiceSettings) -> None:
    """Create or upgrade the schema to the newest migration (``alembic upgrade head``).

    Safe to call from several processes: Alembic's version table makes it a no-op when
    current. Raises ``sqlalchemy.exc.OperationalError`` when the database is unreachable.
    """
    from alembic import command

    eng = get_engine(settings)
    cfg = alembic_config(settings.database)
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def client_text(settings: ServiceSettings, text: str | None) -> str | None:
    """``text`` as a client may see it: every server folder (the data dir, the job work
    dirs, the allowed roots, the interpreter) redacted by
    :func:`splatforge.paths.redact_paths` (``/srv/data/logs/j.log`` becomes ``logs/j.log``).
    Every message an executor writes into a job row or event goes through it, as the
    runner's own messages do."""
    import sys

    from ..paths import redact_paths

    if text is None:
        return None
    return redact_paths(str(text), [settings.data_dir, settings.work_dir,
                                    *settings.allowed_roots, sys.prefix, sys.base_prefix])


def add_event(session: Session, job_id: str, kind: str, message: str = "",
              stage: str | None = None, **fields: Any) -> JobEvent:
    """Append a :class:`JobEvent` (committed with the session); returns it. A job's
    ``status`` events are written by :func:`splatforge.service.lifecycle.transition` alone."""
    ev = JobEvent(job_id=job_id, kind=kind, message=message, stage=stage,
                  time=fields.pop("time", None) or time.time(), **fields)
    session.add(ev)
    return ev
