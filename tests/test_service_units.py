"""Service parts without a server: settings from the environment, the schema migrations on
SQLite and PostgreSQL, upload checks, ranges, worker exit reasons, and run_job recording
failures (fast: no training)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from service_helpers import postgres_database

from splatforge.errors import ConfigError
from splatforge.service import db
from splatforge.service.executors import exit_reason, pid_alive
from splatforge.service.routes_scenes import check_artifact_name, parse_range
from splatforge.service.runner import run_job
from splatforge.service.schemas import JobOut
from splatforge.service.store import check_allowed_path
from splatforge.service.settings import ServiceSettings
from splatforge.service.uploads import UploadRejected, check_zip, media_type, sanitize_name


def test_settings_from_env_and_back(tmp_path):
    env = {"SPLATFORGE_DATA_DIR": str(tmp_path), "SPLATFORGE_API_KEY": "k",
           "SPLATFORGE_MAX_UPLOAD_MB": "12.5", "SPLATFORGE_EXECUTOR": "local",
           "SPLATFORGE_ALLOWED_ROOTS": os.pathsep.join(["/a", "/b"]),
           "SPLATFORGE_MAX_JOBS": "3", "SPLATFORGE_DATABASE_URL": "postgresql://u@h/db",
           "SPLATFORGE_STORAGE": "s3://bkt/pre", "UNRELATED": "x"}
    s = ServiceSettings.from_env(env)
    assert s.data_dir == tmp_path and s.api_key == "k" and s.max_upload_bytes == 13107200
    assert s.allowed_roots == (Path("/a"), Path("/b")) and s.resolved_max_jobs() == 3
    assert s.database == "postgresql+psycopg://u@h/db" and s.storage_url == "s3://bkt/pre"
    assert ServiceSettings.from_env(s.to_env()) == s
    d = ServiceSettings.from_env({}, data_dir=tmp_path)
    assert d.database == f"sqlite:///{tmp_path.resolve() / 'splatforge.db'}"
    assert d.storage_url == str(tmp_path.resolve() / "artifacts") and d.api_key is None
    with pytest.raises(ConfigError, match="SPLATFORGE_MAX_JOBS"):
        ServiceSettings.from_env({"SPLATFORGE_MAX_JOBS": "many"})
    with pytest.raises(ConfigError, match="SPLATFORGE_EXECUTOR"):
        ServiceSettings.from_env({"SPLATFORGE_EXECUTOR": "threads"})


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    if request.param == "sqlite":
        yield ServiceSettings(data_dir=tmp_path)
        db.dispose_engines()
        return
    with postgres_database() as url:
        yield ServiceSettings(data_dir=tmp_path, database_url=url)
        db.dispose_engines()


def test_migrations_and_models(settings):
    db.init_db(settings)
    db.init_db(settings)  # idempotent
    eng = db.get_engine(settings)
    names = set(inspect(eng).get_table_names())
    assert {"scenes", "jobs", "job_events", "media_objects", "alembic_version"} <= names
    with eng.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        if settings.database.startswith("sqlite"):
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    with db.session_scope(settings) as s:
        scene = db.Scene(name="x")
        s.add(scene)
        s.flush()
        job = db.Job(scene_id=scene.id, config={"train": {"max_steps": 5}}, metrics={})
        s.add(job)
        s.flush()
        for k in range(3):
            db.add_event(s, job.id, "progress", "training", "train", step=k, total=3,
                         data={"loss": 0.5})
        job_id = job.id
    with db.session_scope(settings) as s:
        j = s.get(db.Job, job_id)
        assert j.status == "queued" and j.config["train"]["max_steps"] == 5
        evs = s.query(db.JobEvent).filter_by(job_id=job_id).order_by(db.JobEvent.id).all()
        assert [e.step for e in evs] == [0, 1, 2] and evs[0].data == {"loss": 0.5}
        out = JobOut.from_row(j)
        assert out.view_url == f"/scenes/{j.scene_id}/view" and out.error is None
        assert out.created_at.endswith("Z") and out.started_at is None


def test_run_job_records_failures(settings, tmp_path):
    db.init_db(settings)
    with db.session_scope(settings) as s:
        scene = db.Scene(name="empty")
        s.add(scene)
        s.flush()
        empty = db.Job(scene_id=scene.id, config={}, metrics={})
        bad = db.Job(scene_id=scene.id, config={"train": {"max_steps": 0}}, metrics={})
        done = db.Job(scene_id=scene.id, config={}, metrics={}, status="succeeded")
        s.add_all([empty, bad, done])
        s.flush()
        ids = empty.id, bad.id, done.id
    assert run_job(ids[0], settings) == "failed"
    assert run_job(ids[1], settings) == "failed"
    assert run_job(ids[2], settings) == "succeeded"  # finished jobs are not run again
    assert run_job("no-such-job", settings) == "failed"
    with db.session_scope(settings) as s:
        e = s.get(db.Job, ids[0])
        assert e.error_stage == "fetch" and "no media" in e.error_message
        assert e.pid == os.getpid() and e.started_at and e.finished_at
        b = s.get(db.Job, ids[1])
        assert b.status == "failed" and "train.max_steps" in b.error_message
        kinds = [ev.kind for ev in s.query(db.JobEvent).filter_by(job_id=ids[0])]
        assert kinds[-1] == "status" and "error" in kinds


def test_sanitize_and_types():
    assert sanitize_name("../../etc/passwd.jpg") == "passwd.jpg"
    assert sanitize_name("C:\\Users\\me\\IMG 1 (2).JPG") == "IMG_1_2_.JPG"
    assert sanitize_name(".bashrc.png") == "bashrc.png"
    assert sanitize_name("ｆｕｌｌ.png") == "full.png"  # NFKC
    for bad in ("", "..", "/", "...", "\\"):
        with pytest.raises(UploadRejected):
            sanitize_name(bad)
    assert media_type("a.JPG") == "image" and media_type("v.MOV") == "video"
    assert media_type("x.zip") == "zip"
    with pytest.raises(UploadRejected, match="unsupported"):
        media_type("x.exe")


def _zip(names: list[str]) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n in names:
            zf.writestr(n, b"data")
    buf.seek(0)
    return buf


def test_check_zip():
    plan = check_zip(_zip(["top/sparse/0/cameras.bin", "top/images/a b.jpg",
                           "top/.DS_Store", "__MACOSX/top/x.jpg", "top/notes.md"]), "z", 1000)
    assert sorted(rel for _, rel in plan.members) == ["images/a_b.jpg", "sparse/0/cameras.bin"]
    for evil in ("../x.jpg", "a/../../x.jpg", "/abs.jpg", "C:/win.jpg"):
        with pytest.raises(UploadRejected, match="escapes"):
            check_zip(_zip(["ok.jpg", evil]), "z", 1000)
    with pytest.raises(UploadRejected, match="uncompressed"):
        check_zip(_zip([f"{k}.jpg" for k in range(10)]), "z", 30)
    with pytest.raises(UploadRejected, match="not a readable zip"):
        check_zip(io.BytesIO(b"nope"), "z", 1000)
    with pytest.raises(UploadRejected, match="no images"):
        check_zip(_zip(["readme.md"]), "z", 1000)


def test_ranges_and_artifact_names():
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-5", 100) == (95, 99)
    assert parse_range("bytes=50-500", 100) == (50, 99)
    assert parse_range("bytes=0-1,5-6", 100) is None and parse_range("", 100) is None
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as e:
        parse_range("bytes=100-", 100)
    assert e.value.status_code == 416
    assert check_artifact_name("renders/a.png") == "renders/a.png"
    for bad in ("../x", "a/../../x", "/etc/passwd", "a\\b", "", "a//b", "C:/x"):
        with pytest.raises(HTTPException) as e:
            check_artifact_name(bad)
        assert e.value.status_code == 400


def test_exit_reasons_and_pids():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert pid_alive(p.pid)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (exit_reason(p.returncode, p.pid)
            == f"worker process {p.pid} exited with signal 9 (SIGKILL)")
    assert not pid_alive(p.pid)
    assert exit_reason(3) == "worker process exited with status 3"
    assert "without finishing" in exit_reason(None)
    assert not pid_alive(os.getpid(), "some-other-job-id")  # pid reuse is not mistaken


def test_allowed_roots(tmp_path):
    root = tmp_path / "root"
    (root / "scene").mkdir(parents=True)
    s = ServiceSettings(data_dir=tmp_path, allowed_roots=(root,))
    assert check_allowed_path(root / "scene", s) == (root / "scene").resolve()
    (root / "link").symlink_to("/etc")
    from splatforge.errors import InputError

    for bad in (root / "link", root / ".." / "root" / ".." , Path("/etc"), Path("rel"),
                root / "missing"):
        with pytest.raises(InputError):
            check_allowed_path(bad, s)


def test_time_limit_stops_a_job(tmp_path):
    """run_job in this process: a job over SPLATFORGE_JOB_TIME_LIMIT_S ends failed, saying so."""
    from conftest import PLUSH_DOG
    from service_helpers import LONG_JOB

    s = ServiceSettings(data_dir=tmp_path, allowed_roots=(PLUSH_DOG.parent,),
                        job_time_limit_s=4)
    db.init_db(s)
    with db.session_scope(s) as ss:
        scene = db.Scene(name="limit", source_uri=str(PLUSH_DOG))
        ss.add(scene)
        ss.flush()
        job = db.Job(scene_id=scene.id, config=LONG_JOB, metrics={})
        ss.add(job)
        ss.flush()
        job_id = job.id
    try:
        assert run_job(job_id, s) == "failed"
        with db.session_scope(s) as ss:
            j = ss.get(db.Job, job_id)
            assert j.error_message == "time limit of 4 s exceeded"
            assert j.finished_at - j.started_at < 30
    finally:
        db.dispose_engines()
