"""GPU training benchmark: splatforge's trainer on a scene, 7k and 30k steps, one table.

For every row (a fresh run with a fixed seed) it prints the training-loop time (the
optimisation loop alone: no data loading before step 0, no saving, no evaluation), steps/s,
peak ``torch.cuda.max_memory_allocated`` of the loop in GiB (read at the last step, before the
final save and evaluation, as gsplat's simple_trainer reads its ``mem``; plus the memory held by
CUDA graph pools, see :func:`graph_pool_bytes`; the peak including the final evaluation is kept
in the JSON), final Gaussians and held-out PSNR/SSIM. With
``--eval-every N`` the held-out PSNR is also measured every N steps (outside the timed loop), so
a PSNR that falls as training goes on shows. With ``--profile`` it adds, per row, the share of
step time spent outside gsplat's kernels, from ``torch.profiler``:

* the timed run records, with a CUDA synchronise at each window edge, the wall time of a few
  windows of ``--window`` steps (a sync every few hundred steps costs nothing measurable);
* a second run with the same seed and config records those same windows with the profiler on,
  and sums the device time of gsplat's CUDA kernels (names in the ``gsplat::`` namespace, plus
  the CUB radix sort that gsplat launches to order tile intersections);
* outside share = 1 - gsplat kernel time / unprofiled wall time, over all windows; the
  profiled run also splits CPU and GPU time by the trainer's ``sf.*`` ranges (data, render,
  loss, backward, optimizer, densify).

``--set key=value`` overrides TrainConfig fields (several allowed; ``--variant`` runs a named
set of overrides as extra rows, e.g. ``--variant baseline:fused_adam=false,images_on_gpu=yes``).
``--diagnose`` reports, after each run, the Gaussians that no training camera sees but a
held-out camera does, and the held-out PSNR with them removed (the floater check of
benchmarks/NOTES.md).

Usage on a CUDA machine (from the repo root; ``SPLATFORGE_GSPLAT_SO`` may point to a prebuilt
``gsplat_cuda.so``, see NOTES.md)::

    python benchmarks/train_gpu.py --scene ../shared/datasets/plush_dog --steps 7000 30000 \\
        --profile --eval-every 2500 --json benchmarks/results/train_gpu_plush_dog.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import splatforge  # noqa: F401  (import-order guard)

GSPLAT_KERNEL_MARKERS = ("gsplat", "cub::", "DeviceRadixSort", "DeviceScan")


def git_commit() -> str:
    if os.environ.get("GIT_COMMIT"):  # set by callers that copy the tree without .git
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def parse_value(v: str):
    if v.startswith("["):  # a list, e.g. prune_significance_steps=[6000;12000]
        return [parse_value(x.strip()) for x in v.strip("[]").split(";") if x.strip()]
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        for kv in filter(None, item.split(",")):
            k, _, v = kv.partition("=")
            out[k.strip()] = parse_value(v.strip())
    return out


def windows_for(steps: int, window: int) -> list[tuple[int, int]]:
    """Profiling windows ``(first, last)`` spread over the run (densification on and off)."""
    starts = sorted({int(steps * f) for f in (0.1, 0.3, 0.6, 0.9)})
    return [(max(s, 2), min(s + window - 1, steps - 1)) for s in starts]


class WindowTimer:
    """step_hook: wall time of each window, synchronising the GPU at its edges."""

    def __init__(self, windows):
        import torch

        self.torch = torch
        self.windows = windows
        self.t0: dict[int, float] = {}
        self.ms: list[float] = []
        self.steps: list[int] = []
        self.gaussians: list[int] = []

    def __call__(self, trainer, step: int) -> None:
        for i, (a, b) in enumerate(self.windows):
            if step == a - 1:
                self.torch.cuda.synchronize()
                self.t0[i] = time.perf_counter()
            elif step == b:
                self.torch.cuda.synchronize()
                self.ms.append((time.perf_counter() - self.t0[i]) * 1e3)
                self.steps.append(b - a + 1)
                self.gaussians.append(len(trainer.params["means"]))


def read_log(model_dir: Path) -> list[dict]:
    """The records of ``<model_dir>/train_log.jsonl``."""
    lines = (model_dir / "train_log.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def eval_curve(log: list[dict]) -> list[tuple[int, float]]:
    """``(step, held-out PSNR)`` of every evaluation in a training log (the trainer logs the
    final one too)."""
    return [(r["step"], round(r["psnr"], 2)) for r in log if r.get("kind") == "eval"]


def graph_pool_bytes() -> int:
    """Bytes that CUDA graphs' private memory pools hold but do not count as allocated.

    Tensors a graph uses inside its replays (the graphed loss's intermediates) were allocated
    and freed during capture, so ``max_memory_allocated`` no longer sees them although every
    replay writes them; their pool's reserved-but-unallocated bytes are added to the peak so
    the figure stays comparable with an eager loop's."""
    import torch

    total = 0
    for seg in torch.cuda.memory_snapshot():
        if tuple(seg.get("segment_pool_id") or (0, 0)) != (0, 0):
            total += int(seg["total_size"]) - int(seg.get("allocated_size", 0))
    return total


class Hooks:
    """Several step hooks as one; also reads the peak memory of the training loop at its last
    step, before the final save and held-out evaluation (where gsplat's simple_trainer reads
    its ``mem`` statistic: ``torch.cuda.max_memory_allocated() / 1024**3`` at the last step)."""

    def __init__(self, last_step: int, *hooks):
        import torch

        self.torch = torch
        self.last_step = last_step
        self.hooks = [h for h in hooks if h is not None]
        self.loop_peak = 0
        self.graph_pool = 0

    def __call__(self, trainer, step: int) -> None:
        for h in self.hooks:
            h(trainer, step)
        if step == self.last_step and self.torch.cuda.is_available():
            self.graph_pool = graph_pool_bytes()
            self.loop_peak = self.torch.cuda.max_memory_allocated() + self.graph_pool


class WindowProfiler:
    """step_hook: torch.profiler over the same windows; sums kernel time by kind."""

    def __init__(self, windows):
        import torch

        self.torch = torch
        self.windows = windows
        self.prof = None
        self.gsplat_ms = 0.0
        self.other_ms = 0.0
        self.kernels: dict[str, float] = {}
        self.ranges: dict[str, dict[str, float]] = {}

    def __call__(self, trainer, step: int) -> None:
        prof = self.torch.profiler
        for a, b in self.windows:
            if step == a - 1:
                self.prof = prof.profile(activities=[prof.ProfilerActivity.CPU,
                                                     prof.ProfilerActivity.CUDA])
                self.prof.__enter__()
            elif step == b and self.prof is not None:
                self.torch.cuda.synchronize()
                self.prof.__exit__(None, None, None)
                self._collect(self.prof)
                self.prof = None

    def _collect(self, p) -> None:
        from torch.autograd import DeviceType

        for e in p.events():
            if e.name.startswith("sf.") and e.device_type == DeviceType.CPU:
                r = self.ranges.setdefault(e.name, {"cpu_ms": 0.0})
                r["cpu_ms"] += e.cpu_time_total / 1e3
            elif (e.device_type == DeviceType.CUDA and not e.name.startswith("sf.")
                  and not getattr(e, "is_user_annotation", False)
                  and not e.name.startswith("Optimizer.")):
                ms = _dev_us(e) / 1e3
                if any(m in e.name for m in GSPLAT_KERNEL_MARKERS):
                    self.gsplat_ms += ms
                else:
                    self.other_ms += ms
                key = e.name[:90]
                self.kernels[key] = self.kernels.get(key, 0.0) + ms


def _dev_us(e) -> float:
    """Device time of a profiler kernel event in microseconds (torch renamed cuda -> device)."""
    for attr in ("device_time", "cuda_time", "device_time_total", "cuda_time_total"):
        v = getattr(e, attr, None)
        if v:
            return float(v)
    return 0.0


def diagnose(res, scene, cfg, backend: str, renders: Path | None = None) -> dict:
    """Gaussians unseen by every training camera but seen by a held-out one, and the held-out
    PSNR without them."""
    import torch

    from splatforge.export import read_ply  # noqa: F401  (checks the export package loads)
    from splatforge.train.checkpoint import find_latest_checkpoint, load_checkpoint
    from splatforge.train.evaluate import evaluate_splats
    from splatforge.train.visibility import camera_stack, in_any_frustum

    where = "cuda" if torch.cuda.is_available() else "cpu"
    ckpt = load_checkpoint(find_latest_checkpoint(res.model_dir), map_location=where)
    params = {k: v.to(where) for k, v in ckpt["splats"].items()}
    dev = params["means"].device
    train_seen = in_any_frustum(params["means"], *camera_stack(scene, scene.train_indices, dev))
    test_seen = in_any_frustum(params["means"], *camera_stack(scene, scene.test_indices, dev))
    floaters = (~train_seen) & test_seen
    sh = min(res.step // cfg.sh_degree_interval, cfg.sh_degree)
    from splatforge.train.visibility import camera_centres, camera_clearance, near_cameras

    tv, tk, ts = camera_stack(scene, scene.test_indices, dev)
    pts = torch.as_tensor(scene.points, dtype=torch.float32, device=dev).reshape(-1, 3)
    near_test = near_cameras(params["means"], camera_centres(tv),
                             camera_clearance(pts, tv, tk, ts, 0.2))
    ev_near = evaluate_splats({k: v[~near_test] for k, v in params.items()}, scene,
                              scene.test_indices, sh, backend)
    keep = {k: v[~floaters] for k, v in params.items()}
    ev = evaluate_splats(keep, scene, scene.test_indices, sh, backend)
    if renders is not None:
        save_renders(params, scene, sh, backend, renders)
    opa = torch.sigmoid(params["opacities"][floaters])
    per = {scene.images[r["index"]].name: round(r["psnr"], 2) for r in ev["images"]}
    return {"near_test_cameras_0.2": int(near_test.sum()),
            "test_psnr_without_near_test": round(ev_near["psnr"], 3),
            "test_psnr_per_image": per, "unseen_by_train": int((~train_seen).sum()), "unseen_in_test_view": int(
        floaters.sum()), "their_mean_opacity": round(float(opa.mean()), 3) if len(opa) else 0,
        "test_psnr_without_them": round(ev["psnr"], 3)}


def save_renders(params, scene, sh, backend, folder: Path) -> None:
    """Held-out photo | render side by side, as JPEGs named by image and PSNR."""
    import numpy as np
    import torch
    from PIL import Image

    from splatforge.metrics import psnr
    from splatforge.scene import load_image
    from splatforge.train.evaluate import render_view

    folder.mkdir(parents=True, exist_ok=True)
    for i in scene.test_indices:
        with torch.no_grad():
            r, _, _ = render_view(params, scene, i, sh, backend)
        r = r[0].clamp(0, 1)
        gt = torch.from_numpy(load_image(scene.images[i], scene.background)).to(r.device)
        gt = gt.float() / 255.0
        p = float(psnr(r, gt))
        both = torch.cat([gt, r], dim=1).mul(255).round().byte().cpu().numpy()
        Image.fromarray(np.ascontiguousarray(both)).save(
            folder / f"{scene.images[i].name.rsplit('.', 1)[0]}_psnr{p:.1f}.jpg", quality=80)


def main() -> None:
    import torch

    from splatforge.config import SceneConfig, TrainConfig
    from splatforge.scene import load_scene
    from splatforge.train import run_train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[7000, 30000])
    ap.add_argument("--data-factor", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainConfig overrides for every row")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:K=V,K=V",
                    help="extra rows with these overrides (on top of --set)")
    ap.add_argument("--name", default="splatforge", help="name of the base row")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--curve-every", type=int, default=0,
                    help="with --profile: evaluate the profiled (second) run every N steps, "
                         "so the timed run stays free of evaluation (pick N so that no "
                         "profiling window holds a multiple of N)")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--diagnose", action="store_true")
    ap.add_argument("--renders", type=Path, help="with --diagnose: save held-out renders here")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--keep", type=Path, help="keep the model dirs under this folder")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        raise SystemExit("train_gpu.py needs a CUDA device (--cpu-smoke: a tiny CPU check of "
                         "this script)")
    import gsplat

    device = torch.cuda.get_device_name(0) if cuda else "cpu (smoke test)"
    scene_cfg = SceneConfig(data_factor=args.data_factor)
    t0 = time.monotonic()
    scene = load_scene(args.scene, scene_cfg)
    load_s = time.monotonic() - t0
    common = parse_sets(args.set)
    variants = [(args.name, {})]
    for v in args.variant:
        name, _, sets = v.partition(":")
        variants.append((name, parse_sets([sets])))
    base = args.keep or Path(tempfile.mkdtemp())
    rows = []
    for name, over in variants:
        for steps in args.steps:
            kw = dict(max_steps=steps, seed=args.seed, save_steps=[steps],
                      eval_every=args.eval_every, **common)
            kw.update(over)
            cfg = TrainConfig(**kw)
            model_dir = base / f"{name}_{steps}"
            wins = windows_for(steps, args.window)
            profile = args.profile and name == args.name
            timer = WindowTimer(wins) if profile else None
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.monotonic()
            hooks = Hooks(steps, timer)
            res = run_train(cfg, scene, model_dir, scene_config=scene_cfg, step_hook=hooks)
            wall = time.monotonic() - t0
            peak_all = torch.cuda.max_memory_allocated() if cuda else 0
            test = res.metrics.get("test", {})
            row = {"variant": name, "steps": steps, "overrides": over,
                   "train_s": round(res.train_seconds, 1), "wall_s": round(wall, 1),
                   "steps_per_s": round(steps / res.train_seconds, 1),
                   "peak_mem_GiB": round(hooks.loop_peak / 2**30, 3),
                   "peak_mem_with_eval_GiB": round((peak_all + hooks.graph_pool) / 2**30, 3),
                   "graph_pool_GiB": round(hooks.graph_pool / 2**30, 4),
                   "gaussians": res.num_gaussians,
                   "test_psnr": round(test.get("psnr") or float("nan"), 3),
                   "test_ssim": round(test.get("ssim") or float("nan"), 4),
                   "backend": res.backend}
            log = read_log(model_dir)
            if args.eval_every:
                row["test_psnr_curve"] = eval_curve(log)
            dens = [r.get("densification") for r in log if r.get("densification")]
            if dens:
                row["densification"] = dens[-1]
            if profile:
                prof = WindowProfiler(wins)
                pcfg = cfg.model_copy(update={"eval_every": args.curve_every}) \
                    if args.curve_every else cfg
                pdir = base / f"{name}_{steps}_profiled"
                run_train(pcfg, scene, pdir, scene_config=scene_cfg, step_hook=prof)
                if args.curve_every:
                    row["profiled_run_test_psnr_curve"] = eval_curve(read_log(pdir))
                wall_ms = sum(timer.ms)
                row["profile"] = {
                    "windows": wins, "window_wall_ms": [round(x, 1) for x in timer.ms],
                    "window_gaussians": timer.gaussians,
                    "step_ms": round(wall_ms / sum(timer.steps), 3),
                    "gsplat_kernel_ms_per_step": round(prof.gsplat_ms / sum(timer.steps), 3),
                    "other_kernel_ms_per_step": round(prof.other_ms / sum(timer.steps), 3),
                    "outside_gsplat_share": round(1 - prof.gsplat_ms / wall_ms, 3),
                    "ranges_ms_per_step": {k: {kk: round(vv / sum(timer.steps), 3)
                                               for kk, vv in v.items()}
                                           for k, v in sorted(prof.ranges.items())},
                    "top_kernels_ms": dict(sorted(prof.kernels.items(),
                                                  key=lambda kv: -kv[1])[:15]),
                }
                row["outside_gsplat"] = row["profile"]["outside_gsplat_share"]
            if args.diagnose:
                row["diagnosis"] = diagnose(res, scene, cfg, res.backend,
                                            args.renders / f"{name}_{steps}"
                                            if args.renders else None)
            rows.append(row)
            print(json.dumps(row), flush=True)

    info = {
        "device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
        "gsplat": gsplat.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "git_commit": git_commit(), "splatforge_path": str(Path(splatforge.__file__).parent),
        "scene": str(args.scene), "images": len(scene.images),
        "train_images": len(scene.train_indices), "test_images": len(scene.test_indices),
        "data_factor": args.data_factor, "seed": args.seed, "overrides": common,
        "scene_load_s": round(load_s, 2),
    }
    print(f"\nsplatforge train on {device} (torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"gsplat {gsplat.__version__}, commit {info['git_commit']})")
    print(f"scene {args.scene}: {info['train_images']} train / {info['test_images']} test images, "
          f"data_factor {args.data_factor}, seed {args.seed}, overrides {common}\n")
    cols = ["variant", "steps", "train_s", "steps_per_s", "peak_mem_GiB", "gaussians",
            "test_psnr", "test_ssim"] + (["outside_gsplat"] if args.profile else [])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c)) for c in cols) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
