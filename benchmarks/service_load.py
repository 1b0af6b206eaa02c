"""Job-service load benchmark: status-polling latency while jobs train.

Starts ``splatforge serve`` (SQLite, local executor) on a free port in a temporary data
directory, starts ``--jobs`` training jobs on plush_dog (data_factor 8, CPU), waits until
they all train, then runs each client count for ``--seconds``: every client (a thread with
its own HTTP connection) GETs ``/jobs/{id}`` of the training jobs and ``/scenes/{id}`` in
turn as fast as answers come. Prints one Markdown table (requests, throughput, p50 / p99 /
max latency, errors) naming the machine. Usage (from the repo root)::

    .venv/bin/python benchmarks/service_load.py                    # 50 clients, 2 jobs
    .venv/bin/python benchmarks/service_load.py --clients 10 50 100 --seconds 15
    .venv/bin/python benchmarks/service_load.py --database-url postgresql://postgres@127.0.0.1/db
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from splatforge.client.loadtest import poll_load

DATASETS = Path(os.environ.get("SPLATFORGE_DATASETS")
                or Path(__file__).resolve().parents[2] / "shared" / "datasets")


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[50])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--jobs", type=int, default=2, help="jobs training during the load")
    ap.add_argument("--database-url", default=None, help="default: SQLite in the data dir")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    data = Path(tempfile.mkdtemp(prefix="splatforge-load-"))
    env = {**os.environ, "SPLATFORGE_DATA_DIR": str(data), "SPLATFORGE_MAX_JOBS":
           str(args.jobs), "SPLATFORGE_ALLOWED_ROOTS": str(DATASETS), "OMP_NUM_THREADS": "1"}
    if args.database_url:
        env["SPLATFORGE_DATABASE_URL"] = args.database_url
    server = subprocess.Popen([sys.executable, "-m", "splatforge", "serve", "--port", str(port),
                               "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL)
    rows = []
    load_at_start = [round(x, 2) for x in os.getloadavg()]  # other work on the machine
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        c = httpx.Client(base_url=url, timeout=60)
        sid = c.post("/scenes", json={"name": "load"}).json()["id"]
        c.post(f"/scenes/{sid}/media", data={"source_uri": str(DATASETS / "plush_dog")})
        job = {"scene": {"data_factor": 8}, "train": {"max_steps": 100000, "device": "cpu"}}
        jobs = [c.post(f"/scenes/{sid}/jobs", json=job).json()["job_id"]
                for _ in range(args.jobs)]
        while True:
            st = [c.get(f"/jobs/{j}").json() for j in jobs]
            if all(s["stage"] == "train" and (s["progress"]["step"] or 0) > 0 for s in st):
                break
            if any(s["status"] in ("failed", "cancelled", "succeeded") for s in st):
                raise SystemExit(f"a job ended early: {st}")
            time.sleep(0.5)
        paths = [f"/jobs/{j}" for j in jobs] + [f"/scenes/{sid}"]
        for n in args.clients:
            res = poll_load(url, paths, clients=n, seconds=args.seconds)
            rows.append({**res.summary(), "jobs_training": args.jobs})
        for j in jobs:
            c.post(f"/jobs/{j}/cancel")
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(data, ignore_errors=True)
    print(f"\njob service: status polling while {args.jobs} jobs train "
          f"({machine()}; {'PostgreSQL' if args.database_url else 'SQLite'}; load average "
          f"{load_at_start[0]} at the start)\n")
    print("| clients | seconds | requests | requests/s | p50 ms | p99 ms | max ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['seconds']} | {r['requests']} | {r['requests_per_s']} | "
              f"{r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['errors']} |")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "database": "postgresql" if args.database_url else "sqlite",
            "load_average_at_start": load_at_start, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
