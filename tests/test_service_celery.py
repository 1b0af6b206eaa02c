"""The Celery executor for real: the Redis on this machine (127.0.0.1:6379, its own database
number and a queue name of its own), a throwaway PostgreSQL database shared by the server and
the workers, ``splatforge serve`` with ``SPLATFORGE_EXECUTOR=celery`` and two
``splatforge worker`` processes. Jobs train plush_dog at data_factor 8 on CPU.

Checked: two jobs run at once on the two workers (their running intervals overlap) and both
succeed; a cancel ends a running job ``cancelled`` within seconds; a pool process killed by
SIGKILL (what the OOM killer does) and a whole worker killed by SIGKILL both end their job
``failed`` with the cause while the server keeps answering and the other worker's job
completes; the killed worker's message is never run again.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from service_helpers import FINAL, Server, postgres_database, scene_with_source, training, \
    wait_job

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: Redis database of these tests (SPLATFORGE_TEST_REDIS_DB); the queue name is unique per run.
REDIS_DB = int(os.environ.get("SPLATFORGE_TEST_REDIS_DB", "13"))

SHORT = {"preset": "preview", "scene": {"data_factor": 8},
         "train": {"max_steps": 30, "device": "cpu", "log_every": 10}}
LONG = {"preset": "preview", "scene": {"data_factor": 8},
        "train": {"max_steps": 20000, "device": "cpu", "log_every": 5}}


def _ts(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Worker:
    """``splatforge worker`` in its own process group."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, *args: str):
        self.name = name
        self.log_path = log_dir / f"worker-{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "splatforge", "worker", "--name", name,
                 "--loglevel", "INFO", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log()[-3000:]}")
            if " ready." in self.log():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.name} not ready:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Warm shutdown (SIGTERM to the main process); SIGKILL to the group after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def redis_url():
    import redis

    r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    r.ping()
    queue = f"splatforge-test-{uuid.uuid4().hex[:8]}"
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}", queue
    # leave nothing of this run behind: its queue, its exchange bindings and any
    # unacknowledged message of it
    r.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    for tag, payload in r.hgetall("unacked").items():
        if queue.encode() in payload:
            r.hdel("unacked", tag)
            r.zrem("unacked_index", tag)


@pytest.fixture(scope="module")
def cluster(redis_url, tmp_path_factory):
    """The server and two workers; yields (server, {name: Worker})."""
    url, queue = redis_url
    data = tmp_path_factory.mktemp("celery-svc")
    with postgres_database() as db_url:
        server = Server(data, db_url, extra_env={
            "SPLATFORGE_EXECUTOR": "celery", "SPLATFORGE_BROKER_URL": url,
            "SPLATFORGE_CELERY_QUEUE": queue})
        server.start()
        workers: dict[str, Worker] = {}
        try:
            for name in ("w1", "w2"):
                workers[name] = Worker(name, server.env, data)
            for w in workers.values():
                w.wait_ready()
            yield server, workers
        finally:
            for w in workers.values():
                w.stop()
            server.stop()


@pytest.fixture(scope="module")
def http(cluster):
    server, _ = cluster
    with server.client() as c:
        yield c


def start(http, config) -> str:
    sid = scene_with_source(http)
    r = http.post(f"/scenes/{sid}/jobs", json=config)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def test_two_workers_run_two_jobs_at_once(cluster, http):
    server, workers = cluster
    a, b = start(http, SHORT), start(http, SHORT)
    ja, jb = wait_job(http, a, timeout=240), wait_job(http, b, timeout=240)
    assert ja["status"] == "succeeded", (ja, server.log()[-2000:])
    assert jb["status"] == "succeeded", jb
    # one per worker, and their running intervals overlap
    assert {ja["worker"].split("@")[0], jb["worker"].split("@")[0]} == {"w1", "w2"}
    sa, fa, sb, fb = (_ts(ja["started_at"]), _ts(ja["finished_at"]),
                      _ts(jb["started_at"]), _ts(jb["finished_at"]))
    assert sa < fb and sb < fa, (ja, jb)
    assert ja["metrics"]["step"] == jb["metrics"]["step"] == 30
    names = {x["name"] for x in http.get(f"/scenes/{ja['scene_id']}/artifacts")
             .json()["artifacts"]}
    assert "point_cloud.ply" in names


def test_cancel_ends_a_running_job_within_seconds(cluster, http):
    job_id = start(http, LONG)
    wait_job(http, job_id, until=("running",), cond=training, timeout=120)
    r = http.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 202, r.text
    job = wait_job(http, job_id, timeout=120)
    assert job["status"] == "cancelled", job
    # the runner stopped training itself (checkpoint kept) before the revoke's grace ran out
    log = http.get(f"/jobs/{job_id}/log").text
    assert "interrupted after step" in log and "cancelled" in log
    # ... and the task was revoked with terminate=True, signal SIGTERM
    _, workers = cluster
    assert f"Terminating {job_id} (15)" in workers[job["worker"].split("@")[0]].log()


def test_killed_pool_process_fails_its_job_and_the_worker_goes_on(cluster, http):
    """SIGKILL of the process running a job (the OOM killer): WorkerLostError in the worker,
    the job fails with the cause at once, the worker takes the next job."""
    server, workers = cluster
    job_id = start(http, LONG)
    job = wait_job(http, job_id, until=("running",), cond=training, timeout=120)
    os.kill(job["pid"], signal.SIGKILL)
    job = wait_job(http, job_id, timeout=120)
    assert job["status"] == "failed", job
    msg = job["error"]["message"]
    assert msg.startswith("worker lost") and "signal 9 (SIGKILL)" in msg, msg
    assert job["error"]["stage"] == "train"
    name = job["worker"].split("@")[0]
    assert workers[name].proc.poll() is None  # the worker itself lives on


def test_killed_worker_fails_its_job_server_and_other_jobs_go_on(cluster, http):
    """SIGKILL of a whole worker mid-job: the server's monitor marks its job failed with the
    cause; the server keeps serving and the job on the other worker completes."""
    server, workers = cluster
    victim = start(http, LONG)
    job = wait_job(http, victim, until=("running",), cond=training, timeout=120)
    other = start(http, SHORT)
    wait_job(http, other, until=("running",), timeout=60)
    name = job["worker"].split("@")[0]
    workers[name].proc.send_signal(signal.SIGKILL)  # the main process; its pool child follows
    workers[name].proc.wait()
    t0 = time.monotonic()
    while True:
        assert http.get("/healthz").json()["status"] == "ok"
        job = http.get(f"/jobs/{victim}").json()
        if job["status"] in FINAL or time.monotonic() - t0 > 240:  # a hang guard only
            break
        time.sleep(0.5)
    assert job["status"] == "failed", job
    msg = job["error"]["message"]
    assert msg.startswith(f"worker lost: {name}@") and "last heartbeat" in msg, msg
    done = wait_job(http, other, timeout=240)
    assert done["status"] == "succeeded", done
    assert done["worker"].split("@")[0] != name
    # the victim's pool process is gone too (PR_SET_PDEATHSIG), so nothing trains on
    assert not Path(f"/proc/{job['pid']}").exists() or \
        "Z" in Path(f"/proc/{job['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
    # the broker redelivers the killed worker's message (here: sent again by hand): the
    # surviving worker sees the job is final and does not run it again
    from splatforge.service.celery_exec import TASK_NAME, make_app
    from splatforge.service.settings import ServiceSettings

    url, queue = server.env["SPLATFORGE_BROKER_URL"], server.env["SPLATFORGE_CELERY_QUEUE"]
    app = make_app(ServiceSettings(broker_url=url), queue=queue)
    app.send_task(TASK_NAME, args=[victim], task_id=f"{victim}-again", queue=queue)
    survivor = workers[done["worker"].split("@")[0]]
    deadline = time.monotonic() + 30
    while f"job {victim} is already failed; not running it again" not in survivor.log():
        assert time.monotonic() < deadline, survivor.log()[-3000:]
        time.sleep(0.3)
    app.close()
    after = http.get(f"/jobs/{victim}").json()
    assert after["status"] == "failed" and after["started_at"] == job["started_at"]


def test_time_limit_fails_the_job(cluster, http):
    """A worker started with --time-limit 30: the runner stops the job at the soft limit
    (15 s) with a checkpoint and records the cause."""
    server, workers = cluster
    for w in workers.values():
        w.stop()  # warm shutdown: idle workers leave at once
    workers["w3"] = Worker("w3", server.env, server.data_dir, "--time-limit", "30")
    workers["w3"].wait_ready()
    job_id = start(http, LONG)
    job = wait_job(http, job_id, timeout=90)
    assert job["status"] == "failed", job
    assert job["error"]["message"] == "time limit of 15 s exceeded", job["error"]
    assert job["worker"].startswith("w3@")
    # the soft limit stopped it (the message above), not the hard kill at 30 s
    took = _ts(job["finished_at"]) - _ts(job["started_at"])
    assert took >= 15, took


def test_worker_options_and_broker_errors(monkeypatch, capsys):
    from splatforge.cli import main

    monkeypatch.delenv("SPLATFORGE_BROKER_URL", raising=False)
    assert main(["worker"]) == 2
    assert "SPLATFORGE_BROKER_URL is not set" in capsys.readouterr().err
    monkeypatch.setenv("SPLATFORGE_BROKER_URL", "kafka://127.0.0.1:9092")
    assert main(["worker"]) == 2
    assert "unsupported broker 'kafka'" in capsys.readouterr().err
    assert main(["worker", "--gpu", "-1"]) == 2
    assert "--gpu" in capsys.readouterr().err
    # --gpu N owns device N: set before anything could initialise CUDA
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.delenv("SPLATFORGE_BROKER_URL")
    assert main(["worker", "--gpu", "3"]) == 2
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_rabbitmq_broker(tmp_path):
    """The same executor over RabbitMQ (127.0.0.1:5672, guest/guest; a queue of its own) with
    SQLite as the shared database: a job runs on the worker and succeeds."""
    import kombu

    url = "amqp://guest:guest@127.0.0.1:5672//"
    queue = f"splatforge-test-{uuid.uuid4().hex[:8]}"
    with kombu.Connection(url, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=1)
    server = Server(tmp_path, extra_env={"SPLATFORGE_EXECUTOR": "celery",
                                         "SPLATFORGE_BROKER_URL": url,
                                         "SPLATFORGE_CELERY_QUEUE": queue}).start()
    worker = None
    try:
        worker = Worker("rmq", server.env, tmp_path)
        worker.wait_ready()
        with server.client() as http:
            job_id = start(http, {**SHORT, "train": {**SHORT["train"], "max_steps": 10}})
            job = wait_job(http, job_id, timeout=180)
        assert job["status"] == "succeeded", job
        assert job["worker"].startswith("rmq@")
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
        with kombu.Connection(url) as conn:
            conn.default_channel.queue_delete(queue)
            conn.default_channel.exchange_delete(queue)


def test_broker_down_fails_the_job_with_the_cause(tmp_path):
    """Submitting while the broker is unreachable: the job ends failed, naming the broker."""
    from service_helpers import free_port
    from splatforge.service import db
    from splatforge.service.celery_exec import CeleryExecutor
    from splatforge.service.settings import ServiceSettings

    port = free_port()
    st = ServiceSettings(data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{port}/0")
    db.init_db(st)
    ex = CeleryExecutor(st)
    try:
        with db.session_scope(st) as s:
            scene = db.Scene()
            s.add(scene)
            s.flush()
            job = db.Job(scene_id=scene.id)
            s.add(job)
            s.flush()
            job_id = job.id
        ex.submit(job_id)
        with db.session_scope(st) as s:
            job = s.get(db.Job, job_id)
            assert job.status == "failed" and job.error_stage == "queue"
            assert f"could not queue the job on the broker 127.0.0.1:{port}/0" in \
                job.error_message or f"redis://127.0.0.1:{port}/0" in job.error_message
    finally:
        ex.shutdown()
        db.dispose_engines()
