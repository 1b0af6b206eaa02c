"""``splatforge client`` end to end against a real ``splatforge serve`` process (uvicorn on a
free port, local worker processes, real training of plush_dog at data_factor 8 on CPU):
submit, wait with progress output, status, download with Range resume, cancel, and the
errors a user sees (server down, wrong API key, unknown ids, bad media)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from conftest import PLUSH_DOG
from service_helpers import Server, free_port, training, wait_job

API_KEY = "client-test-key"
TRAIN_CPU = json.dumps({"train": {"device": "cpu", "log_every": 5}})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("client-svc"), max_jobs=1, api_key=API_KEY).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``splatforge <args>`` in this process: (exit status, stdout, stderr)."""
    from splatforge.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def client_args(server, *args: str) -> list[str]:
    cmd, rest = args[0], args[1:]
    return ["client", cmd, "--url", server.url, "--api-key", API_KEY, *rest]


def run_subprocess(*args: str) -> tuple[int, str, str]:
    """``python -m splatforge <args>`` in a child process: (exit status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "splatforge", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def finished(server):
    """One job submitted with `splatforge client submit` and followed with `client wait`
    (separate processes, as a user runs them)."""
    code, out, err = run_subprocess(*client_args(
        server, "submit", "--source-uri", str(PLUSH_DOG), "--data-factor", "8",
        "--max-steps", "30", "--config", TRAIN_CPU, "--json"))
    assert code == 0, err
    ids = json.loads(out.strip().splitlines()[-1])
    wait = run_subprocess(*client_args(server, "wait", ids["job_id"], "--poll", "0.5"))
    return {**ids, "wait": wait}


def test_submit_and_wait_show_progress(finished, http):
    code, out, err = finished["wait"]
    assert code == 0, (out, err)
    assert out.strip().splitlines()[-1].startswith(f"job {finished['job_id']} succeeded")
    # the progress display (plain lines when not on a terminal): stage and step k of n
    assert re.search(r"stage train\s+step \d+/30", err), err
    assert "succeeded" in err
    job = http.get(f"/jobs/{finished['job_id']}").json()
    assert job["status"] == "succeeded" and job["scene_id"] == finished["scene_id"]
    assert job["progress"]["max_steps"] == 30


def test_status_prints_the_job(server, finished, capsys):
    code, out, _ = run_cli(capsys, *client_args(server, "status", finished["job_id"]))
    assert code == 0
    rec = json.loads(out)
    assert rec["id"] == finished["job_id"] and rec["status"] == "succeeded"
    assert rec["metrics"]["step"] == 30


def test_download_all_and_resume_with_range(server, finished, http, tmp_path, capsys):
    sid = finished["scene_id"]
    listing = http.get(f"/scenes/{sid}/artifacts").json()["artifacts"]
    names = {a["name"] for a in listing}
    assert {"point_cloud.ply", "cameras.json", "scene.splat"} <= names
    out_dir = tmp_path / "all"
    code, out, err = run_cli(capsys, *client_args(server, "download", sid, "-o", str(out_dir)))
    assert code == 0, err
    for a in listing:
        path = out_dir / a["name"]
        assert path.stat().st_size == a["size"], a
    ply = http.get(f"/scenes/{sid}/artifacts/point_cloud.ply").content
    assert (out_dir / "point_cloud.ply").read_bytes() == ply
    assert not list(out_dir.rglob("*.part"))

    # an interrupted download: the first 40% is in point_cloud.ply.part
    part_dir = tmp_path / "resume"
    part_dir.mkdir()
    cut = int(len(ply) * 0.4)
    (part_dir / "point_cloud.ply.part").write_bytes(ply[:cut])
    code, out, err = run_cli(capsys, *client_args(server, "download", sid, "-o", str(part_dir),
                                                  "--name", "point_cloud.ply"))
    assert code == 0, err
    assert f"resumed at byte {cut}" in out and f"resuming at byte {cut}" in err
    assert (part_dir / "point_cloud.ply").read_bytes() == ply
    assert not (part_dir / "point_cloud.ply.part").exists()

    # a partial file longer than the artifact (another file's leftovers): start again
    (part_dir / "cameras.json.part").write_bytes(b"x" * (len(ply) + 10))
    code, out, err = run_cli(capsys, *client_args(server, "download", sid, "-o", str(part_dir),
                                                  "--name", "cameras.json"))
    assert code == 0, err
    cams = http.get(f"/scenes/{sid}/artifacts/cameras.json").content
    assert (part_dir / "cameras.json").read_bytes() == cams
    assert json.loads(cams)


def test_cancel_a_running_job(server, http, capsys):
    code, out, err = run_cli(capsys, *client_args(
        server, "submit", "--source-uri", str(PLUSH_DOG), "--data-factor", "8",
        "--max-steps", "20000", "--config", TRAIN_CPU, "--json"))
    assert code == 0, err
    job_id = json.loads(out)["job_id"]
    wait_job(http, job_id, until=("running",), cond=training, timeout=120)
    code, out, err = run_cli(capsys, *client_args(server, "wait", job_id, "--timeout", "1"))
    assert code == 2 and "still running after 1 s" in err
    code, out, err = run_cli(capsys, *client_args(server, "cancel", job_id))
    assert code == 0, err
    assert job_id in out
    code, out, err = run_cli(capsys, *client_args(server, "wait", job_id, "--timeout", "60"))
    assert code == 3, (out, err)
    assert out.strip().endswith("cancelled")
    assert http.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_submit_a_folder_uploads_it_as_one_zip(server, http, tmp_path, capsys):
    """A COLMAP dataset folder travels whole (sub-folders kept) and is recognised as a
    dataset; the job is cancelled at once (`wait` exits 3)."""
    ds = tmp_path / "plush"
    (ds / "sparse" / "0").mkdir(parents=True)
    (ds / "images_4").mkdir()
    for p in (PLUSH_DOG / "sparse" / "0").iterdir():
        (ds / "sparse" / "0" / p.name).symlink_to(p)
    for p in sorted((PLUSH_DOG / "images_4").iterdir())[:30]:
        (ds / "images_4" / p.name).symlink_to(p)
    code, out, err = run_cli(capsys, *client_args(server, "submit", str(ds), "--max-steps",
                                                  "20", "--data-factor", "8", "--config",
                                                  TRAIN_CPU))
    assert code == 0, err
    assert "uploading 1 file(s)" in err
    scene_id = re.search(r"scene (\w+)", out).group(1)
    job_id = re.search(r"job (\w+)", out).group(1)
    scene = http.get(f"/scenes/{scene_id}").json()
    assert scene["media_kind"] == "dataset"
    assert scene["media_files"] == 30 + len(list((PLUSH_DOG / "sparse" / "0").iterdir()))
    code, _, _ = run_cli(capsys, *client_args(server, "cancel", job_id))
    assert code == 0
    code, out, _ = run_cli(capsys, *client_args(server, "wait", job_id, "--no-events"))
    assert code == 3 and "cancelled" in out


def test_errors_are_one_clear_line(server, finished, tmp_path, capsys):
    down = f"http://127.0.0.1:{free_port()}"
    code, _, err = run_cli(capsys, "client", "status", "abc", "--url", down)
    assert code == 2
    assert f"cannot connect to the splatforge service at {down}" in err
    assert "Traceback" not in err

    code, _, err = run_cli(capsys, "client", "status", finished["job_id"], "--url", server.url,
                           "--api-key", "wrong")
    assert code == 2 and "401 unauthorized" in err and "--api-key" in err

    code, _, err = run_cli(capsys, *client_args(server, "status", "no-such-job"))
    assert code == 2 and "404 not found" in err and "no-such-job" in err

    code, _, err = run_cli(capsys, *client_args(server, "wait", "no-such-job"))
    assert code == 2 and "404" in err

    code, _, err = run_cli(capsys, *client_args(server, "download", "nosuchscene", "-o",
                                                str(tmp_path)))
    assert code == 2 and "404" in err

    missing = tmp_path / "nope.mp4"
    code, _, err = run_cli(capsys, *client_args(server, "submit", str(missing)))
    assert code == 2 and f"{missing}: does not exist" in err

    code, _, err = run_cli(capsys, *client_args(server, "submit", "--source-uri", "/etc"))
    assert code == 2 and "HTTP 400" in err and "allowed roots" in err

    code, _, err = run_cli(capsys, *client_args(server, "submit", "--source-uri",
                                                str(PLUSH_DOG), "--data-factor", "3"))
    assert code == 2 and "HTTP 422" in err and "data_factor" in err


def test_client_reads_url_and_key_from_the_environment(server, finished, monkeypatch,
                                                       capsys):
    monkeypatch.setenv("SPLATFORGE_URL", server.url)
    monkeypatch.setenv("SPLATFORGE_API_KEY", API_KEY)
    code, out, err = run_cli(capsys, "client", "status", finished["job_id"])
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"
    with pytest.raises(httpx.HTTPStatusError):
        httpx.get(server.url + f"/jobs/{finished['job_id']}").raise_for_status()


def test_console_scripts_splatforge_client_and_loadtest(server, finished, capsys):
    """The ``splatforge-client`` and ``splatforge-loadtest`` entry points (pyproject
    [project.scripts]): the same commands as ``splatforge client``, and a load run with its
    summary as JSON."""
    from splatforge.client.commands import main as client_main
    from splatforge.client.loadtest import main as loadtest_main

    capsys.readouterr()
    assert client_main(["status", finished["job_id"], "--url", server.url,
                        "--api-key", API_KEY]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"
    down = f"http://127.0.0.1:{free_port()}"
    assert client_main(["status", finished["job_id"], "--url", down]) == 2
    assert "splatforge serve" in capsys.readouterr().err
    assert loadtest_main([server.url, "/healthz", "--clients", "2", "--seconds", "0.5",
                          "--api-key", API_KEY]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clients"] == 2 and summary["errors"] == 0 and summary["requests"] >= 1
