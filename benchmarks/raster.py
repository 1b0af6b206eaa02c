"""Rasterizer benchmark: forward / forward+backward time and peak memory per configuration.

Renders one camera of a random scene whose Gaussians all lie in the view frustum (depth 3-5
scene units, ~53 degree horizontal field of view), with a trained-like size distribution
(log-normal scales, median ``2.5 / sqrt(N)`` scene units so that the image is covered about
the same number of times whatever N), trained-like opacities (piled near 0 and 1) and SH
degree 3 colours. The loss is a fixed random weighting of the image and alpha.

Usage (from the repo root)::

    .venv/bin/python benchmarks/raster.py                                   # CPU, full grid
    .venv/bin/python benchmarks/raster.py --gaussians 10000 100000 --sizes 200x150 --json out.json
    python benchmarks/raster.py --device cuda                               # torch and gsplat

Timing: median over ``--repeats`` runs after ``--warmup`` runs, wall clock (CUDA synchronised).
"fwd" is ``rasterize()`` alone, "fwd+bwd" is ``rasterize()`` plus ``backward()``.

Peak memory:

* CPU: every configuration runs in a fresh subprocess; we report the process's peak resident
  set size (``getrusage(RUSAGE_SELF).ru_maxrss``) at the end minus its resident set size just
  before the first render (scene tensors already built). That is the high-water mark of extra
  resident memory during the renders (PyTorch's CPU allocator returns large blocks to the OS,
  so this tracks the live tensors plus allocator slack, not only tensors).
* CUDA: ``torch.cuda.max_memory_allocated()`` during the timed runs minus the memory allocated
  before them (tensors only, not the caching allocator's reserve).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_scene(N: int, W: int, H: int, device: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    f = W / (2 * math.tan(math.radians(53.0) / 2))
    z = 3.0 + 2.0 * torch.rand(N, generator=g)
    x = (torch.rand(N, generator=g) - 0.5) * W / f * z
    y = (torch.rand(N, generator=g) - 0.5) * H / f * z
    means = torch.stack([x, y, z], -1)
    scales = torch.exp(torch.randn(N, 3, generator=g) * 0.7 + math.log(2.5 / math.sqrt(N)))
    quats = torch.randn(N, 4, generator=g)
    u = torch.rand(N, generator=g)
    opac = torch.where(u < 0.5, u ** 3 * 0.5, 1 - (1 - u) ** 3 * 0.5).clamp(0.005, 0.999)
    sh = torch.randn(N, 16, 3, generator=g) * 0.05
    sh[:, 0] = torch.randn(N, 3, generator=g) * 0.8
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])[None]
    t = [means, quats, scales, opac, sh, viewmats, Ks]
    return [x.to(device) for x in t]


def run_one(backend: str, device: str, N: int, W: int, H: int, warmup: int, repeats: int,
            chunk_budget: int | None) -> dict:
    """Benchmark one configuration in this process."""
    import torch

    from splatforge.raster import rasterize

    means, quats, scales, opac, sh, viewmats, Ks = make_scene(N, W, H, device)
    params = [p.clone().requires_grad_() for p in (means, quats, scales, opac, sh)]
    g = torch.Generator(device=device).manual_seed(1)
    w = torch.randn((1, H, W, 3), generator=g, device=device)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    kw = {"sh_degree": 3, "backend": backend}
    if backend == "torch" and chunk_budget:
        kw["chunk_budget"] = chunk_budget
    rss0 = _rss_now_kb()
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

    fwd, total = [], []
    info = {}
    for i in range(warmup + repeats):
        for p in params:
            p.grad = None
        sync()
        t0 = time.perf_counter()
        img, alpha, meta = rasterize(*params, viewmats, Ks, W, H, **kw)
        sync()
        t1 = time.perf_counter()
        ((img * w).sum() + alpha.sum()).backward()
        sync()
        t2 = time.perf_counter()
        if i >= warmup:
            fwd.append(t1 - t0)
            total.append(t2 - t0)
        info = {"visible": int((meta["radii"] > 0).all(-1).sum()),
                "isects": int(meta["isect_ids"].numel())}
        del img, alpha, meta
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        mem_what = "max_memory_allocated"
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        mem_what = "ru_maxrss delta"
    return {"backend": backend, "device": device, "N": N, "W": W, "H": H, **info,
            "fwd_ms": 1000 * statistics.median(fwd), "fwd_bwd_ms": 1000 * statistics.median(total),
            "peak_mem_mb": peak, "mem_measure": mem_what, "repeats": repeats,
            "threads": torch.get_num_threads()}


def _rss_now_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaussians", type=int, nargs="+", default=[10_000, 100_000, 500_000])
    ap.add_argument("--sizes", nargs="+", default=["200x150", "400x300", "800x600"])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--backends", nargs="+", default=None,
                    help="default: torch on cpu; torch and gsplat on cuda")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--chunk-budget", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker:  # one configuration in a fresh process, result as JSON on stdout
        backend, device, N, W, H = args.worker.split(",")
        res = run_one(backend, device, int(N), int(W), int(H), args.warmup, args.repeats,
                      args.chunk_budget)
        print("RESULT " + json.dumps(res))
        return

    backends = args.backends or (["torch"] if args.device == "cpu" else ["torch", "gsplat"])
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device available")
        dev_name = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    else:
        dev_name = (f"{cpu_name()}, {torch.get_num_threads()} torch threads "
                    f"({os.cpu_count()} cores), torch {torch.__version__}")
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    results = []
    configs = [(b, n, w, h) for b in backends for (w, h) in sizes for n in args.gaussians]
    for i, (b, n, w, h) in enumerate(configs, 1):
        print(f"[{i}/{len(configs)}] {b} {args.device} N={n} {w}x{h} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        if args.device == "cpu":
            cmd = [sys.executable, __file__, "--worker", f"{b},cpu,{n},{w},{h}",
                   "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.chunk_budget:
                cmd += ["--chunk-budget", str(args.chunk_budget)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                print(out.stderr[-2000:], file=sys.stderr)
                res = {"backend": b, "device": "cpu", "N": n, "W": w, "H": h, "error": out.returncode}
            else:
                res = json.loads(line[-1][7:])
        else:
            try:
                res = run_one(b, "cuda", n, w, h, args.warmup, args.repeats, args.chunk_budget)
            except Exception as e:  # noqa: BLE001  (e.g. out of memory: report, go on)
                res = {"backend": b, "device": "cuda", "N": n, "W": w, "H": h, "error": repr(e)[:200]}
            torch.cuda.empty_cache()
        print(f"    done in {time.time() - t0:.1f} s: {json.dumps(res)}", file=sys.stderr, flush=True)
        results.append(res)

    print(f"\n### splatforge.raster benchmark: {dev_name}\n")
    print("One camera, SH degree 3, fwd = rasterize(), fwd+bwd = rasterize() + backward(); "
          f"median of {args.repeats} after {args.warmup} warm-up. Peak memory: "
          + ("extra peak RSS of a fresh process (ru_maxrss delta)." if args.device == "cpu"
             else "torch.cuda.max_memory_allocated() above the baseline.") + "\n")
    print("| backend | Gaussians | image | visible | tile isects | fwd ms | fwd+bwd ms | peak MB |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['backend']} | {r['N']} | {r['W']}x{r['H']} | error: {r['error']} | | | | |")
            continue
        print(f"| {r['backend']} | {r['N']} | {r['W']}x{r['H']} | {r['visible']} | {r['isects']} | "
              f"{r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | {r['peak_mem_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"device": dev_name, "results": results}, indent=1))


if __name__ == "__main__":
    main()
