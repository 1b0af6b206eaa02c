"""A small load generator for the job service: N clients polling status routes.

Used by ``tests/test_service_lifecycle.py`` (which asserts zero errors) and
``benchmarks/service_load.py`` (which prints the table).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadResult:
    """Latencies (seconds) of every request, and the failures (status >= 400 or an
    exception), over ``seconds`` of wall time with ``clients`` concurrent clients."""

    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100) by the nearest-rank method, seconds."""
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        k = max(0, min(len(xs) - 1, int(-(-q * len(xs) // 100)) - 1))
        return xs[k]

    @property
    def requests(self) -> int:
        return len(self.latencies) + len(self.errors)

    def summary(self) -> dict[str, Any]:
        return {"clients": self.clients, "seconds": round(self.seconds, 2),
                "requests": self.requests, "errors": len(self.errors),
                "requests_per_s": round(self.requests / self.seconds, 1) if self.seconds else 0,
                "p50_ms": round(self.percentile(50) * 1000, 1),
                "p99_ms": round(self.percentile(99) * 1000, 1),
                "max_ms": round(max(self.latencies, default=float("nan")) * 1000, 1)}


def poll_load(base_url: str, paths: list[str], clients: int = 50, seconds: float = 10.0,
              headers: dict[str, str] | None = None, timeout: float = 30.0) -> LoadResult:
    """``clients`` threads, each with its own HTTP connection, GET ``paths`` in turn as fast
    as answers come, for ``seconds``."""
    import httpx

    result = LoadResult(clients, seconds)
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        lat: list[float] = []
        errs: list[str] = []
        with httpx.Client(base_url=base_url, headers=headers or {}, timeout=timeout) as c:
            start.wait()
            i = k
            while time.monotonic() < stop_at[0]:
                path = paths[i % len(paths)]
                i += 1
                t0 = time.perf_counter()
                try:
                    r = c.get(path)
                    dt = time.perf_counter() - t0
                    if r.status_code >= 400:
                        errs.append(f"{path}: HTTP {r.status_code}")
                    else:
                        lat.append(dt)
                except httpx.HTTPError as e:
                    errs.append(f"{path}: {type(e).__name__}: {e}")
        with lock:
            result.latencies.extend(lat)
            result.errors.extend(errs)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    stop_at[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join()
    result.seconds = time.monotonic() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``splatforge-loadtest`` console script: ``splatforge-loadtest URL
    PATH... [--clients N] [--seconds S] [--api-key KEY]`` polls the paths and prints
    :meth:`LoadResult.summary` as JSON. Returns 0 when no request failed, else 1 (the first
    errors go to stderr)."""
    import argparse
    import json
    import os
    import sys

    ap = argparse.ArgumentParser(prog="splatforge-loadtest", description=main.__doc__)
    ap.add_argument("url", help="base URL of the service, e.g. http://127.0.0.1:8000")
    ap.add_argument("paths", nargs="+", help="routes to GET in turn, e.g. /jobs/<id>")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--api-key", default=os.environ.get("SPLATFORGE_API_KEY"),
                    help="bearer token ($SPLATFORGE_API_KEY)")
    args = ap.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    result = poll_load(args.url, args.paths, args.clients, args.seconds, headers)
    print(json.dumps(result.summary()))
    for err in result.errors[:5]:
        print(err, file=sys.stderr)
    return 1 if result.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
