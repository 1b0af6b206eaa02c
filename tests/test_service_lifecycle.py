"""The job service under stress, on one real server (SQLite, two jobs at once): 50 clients
polling while two jobs train, a worker killed with SIGKILL mid-job, a cancel, and a server
restart with jobs queued."""

from __future__ import annotations

import os
import signal
import time

from service_helpers import LONG_JOB, TINY_JOB, Server, scene_with_source, training, wait_job

from splatforge.client.loadtest import poll_load

#: A job that trains for a while but finishes (the load test runs while it trains).
MEDIUM_JOB = {**TINY_JOB, "train": {**TINY_JOB["train"], "max_steps": 80}}


def test_load_kill_cancel_restart(tmp_path):
    t_start = time.monotonic()

    def phase(name: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f} s] {name}")

    data = tmp_path / "life"
    srv = Server(data, max_jobs=2).start()
    try:
        with srv.client() as c:
            sid = scene_with_source(c)
            a = c.post(f"/scenes/{sid}/jobs", json=LONG_JOB).json()["job_id"]
            b = c.post(f"/scenes/{sid}/jobs", json=MEDIUM_JOB).json()["job_id"]
            wait_job(c, a, ("running",), cond=training, timeout=120)
            wait_job(c, b, ("running",), cond=training, timeout=120)

            phase("A and B training")
            # -- a third job waits for a slot; cancelling it ends it at once --------------
            q = c.post(f"/scenes/{sid}/jobs", json=TINY_JOB).json()["job_id"]
            assert c.get(f"/jobs/{q}").json()["status"] == "queued"
            r = c.post(f"/jobs/{q}/cancel")
            assert r.status_code == 202 and r.json()["status"] == "cancelled"
            assert r.json()["started_at"] is None

            # -- 50 clients polling status while both jobs train --------------------------
            load = poll_load(srv.url, [f"/jobs/{a}", f"/jobs/{b}", f"/scenes/{sid}"],
                             clients=50, seconds=8.0)
            s = load.summary()
            print(f"\nload: {s['clients']} clients, {s['requests']} requests in "
                  f"{s['seconds']} s ({s['requests_per_s']}/s) while 2 jobs train: "
                  f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, max {s['max_ms']} ms, "
                  f"errors {s['errors']}")
            assert load.errors == [], load.errors[:5]
            assert load.requests > 100
            both = [c.get(f"/jobs/{j}").json() for j in (a, b)]
            assert [j["status"] for j in both] == ["running", "running"], both

            phase("load test done")
            # -- a worker killed mid-job -------------------------------------------------
            ja = c.get(f"/jobs/{a}").json()
            assert ja["stage"] == "train" and ja["pid"]
            os.kill(ja["pid"], signal.SIGKILL)
            ja = wait_job(c, a, ("failed",), timeout=30)
            assert "signal 9 (SIGKILL)" in ja["error"]["message"], ja["error"]
            assert ja["error"]["stage"] == "train"
            assert c.get("/healthz").json()["status"] == "ok"
            jb = wait_job(c, b, timeout=180)
            assert jb["status"] == "succeeded", jb  # the other job carried on
            assert jb["metrics"]["step"] == 80

            phase("A killed, B done")
            # -- cancel mid-training: stops within seconds, outputs kept -----------------
            e = c.post(f"/scenes/{sid}/jobs", json=LONG_JOB).json()["job_id"]
            wait_job(c, e, ("running",), cond=lambda j: training(j)
                     and j["progress"]["step"] >= 6, timeout=120)
            t0 = time.monotonic()
            r = c.post(f"/jobs/{e}/cancel")
            assert r.status_code == 202 and r.json()["cancel_requested"]
            je = wait_job(c, e, ("cancelled",), timeout=30)
            took = time.monotonic() - t0
            print(f"cancel: job ended cancelled {took:.1f} s after the request")
            assert je["error"]["stage"] == "train"
            ckpts = sorted((data / "work" / e / "out" / "model" / "ckpts").glob("*.pt"))
            assert ckpts, "the interrupted training left no checkpoint"
            assert "interrupted after step" in c.get(f"/jobs/{e}/log").text
            # the scene's artifacts from job b are untouched by the cancelled job
            names = [x["name"] for x in c.get(f"/scenes/{sid}/artifacts").json()["artifacts"]]
            assert "point_cloud.ply" in names
            ply_before = c.get(f"/scenes/{sid}/artifacts/point_cloud.ply").content

            phase("E cancelled")
            # -- restart with work in flight ---------------------------------------------
            f = c.post(f"/scenes/{sid}/jobs", json=TINY_JOB).json()["job_id"]
            g = c.post(f"/scenes/{sid}/jobs", json=TINY_JOB).json()["job_id"]
        phase("F, G submitted")
        assert srv.stop(signal.SIGTERM) is not None
        with srv.start().client() as c:
            for j, status in ((a, "failed"), (b, "succeeded"), (e, "cancelled")):
                assert c.get(f"/jobs/{j}").json()["status"] == status
            assert "SIGKILL" in c.get(f"/jobs/{a}").json()["error"]["message"]
            assert c.get(f"/scenes/{sid}/artifacts/point_cloud.ply").content == ply_before
            for j in (f, g):
                jj = wait_job(c, j, timeout=180)
                assert jj["status"] == "succeeded", (jj, c.get(f"/jobs/{j}/log").text[-3000:])
            assert len(c.get("/jobs", params={"scene_id": sid}).json()) == 6
            assert c.get(f"/scenes/{sid}/artifacts").json()["job_id"] in (f, g)

            phase("F, G done after restart")
            # -- the server and one of two workers crash -------------------------------
            h = c.post(f"/scenes/{sid}/jobs", json=LONG_JOB).json()["job_id"]
            h2 = c.post(f"/scenes/{sid}/jobs", json=LONG_JOB).json()["job_id"]
            jh = wait_job(c, h, ("running",), cond=training, timeout=120)
            jh2 = wait_job(c, h2, ("running",), cond=training, timeout=120)
        phase("H, H2 training")
        srv.stop(signal.SIGKILL)
        os.kill(jh["pid"], signal.SIGKILL)
        with srv.start().client() as c:
            jh = c.get(f"/jobs/{h}").json()
            assert jh["status"] == "failed", jh
            assert "is gone (found at server start)" in jh["error"]["message"]
            assert c.get(f"/jobs/{g}").json()["status"] == "succeeded"
            phase("restarted after crash")
            # the surviving worker kept training and is watched by the new server
            step = c.get(f"/jobs/{h2}").json()["progress"]["step"]
            again = wait_job(c, h2, ("running",), timeout=60,
                             cond=lambda j: j["progress"]["step"] > step)
            assert again["pid"] == jh2["pid"]
            assert "watching worker" in c.get(f"/jobs/{h2}/log").text
            c.post(f"/jobs/{h2}/cancel")
            assert wait_job(c, h2, timeout=30)["status"] == "cancelled"
    finally:
        srv.stop()
