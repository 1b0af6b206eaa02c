"""One scene on 1, 2, ... GPUs (``TrainConfig.gpus``, splatforge.train.distributed): a table.

For each rank count it trains the scene from scratch with the same seed and config (MCMC, a
Gaussian budget ``--cap-max``) and prints the training-loop time (optimisation steps only,
``train_seconds``: no loading, saving or evaluation), steps/s, views/s (each step trains one
view per rank), the peak ``torch.cuda.max_memory_allocated`` of every rank in GiB (rank 0's
includes the final held-out evaluation, which it runs alone), the final Gaussians and the
held-out PSNR, plus the speed-up over the first row. ``--views-matched`` divides the steps by
the rank count, so that every row trains the same number of views (the Grendel / gsplat
``--steps_scaler`` comparison); by default every row runs the same number of steps.

Usage on a machine with two GPUs (from the repository root; ``SPLATFORGE_GSPLAT_SO`` may point
to a prebuilt ``gsplat_cuda.so``; keep NVLink multicast off)::

    python benchmarks/train_multi_gpu.py --scene .gpu/data/plush_dog --gpus 1 2 \\
        --steps 7000 --cap-max 1000000 --json benchmarks/results/train_multi_gpu.json

``--cpu-smoke`` runs the same code on CPU ranks (gloo, PyTorch rasterizer) for a few steps at
data_factor 8, to check the script itself where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import splatforge  # noqa: F401  (import-order guard)


def run_row(scene: Path, data_factor: int, gpus: int, steps: int, cap_max: int, seed: int,
            device: str, cache: Path, out: Path) -> dict:
    import torch

    from splatforge.config import SceneConfig, TrainConfig
    from splatforge.train import run_train

    sc = SceneConfig(data_factor=data_factor, cache_dir=cache)
    cfg = TrainConfig(max_steps=steps, gpus=gpus, cap_max=cap_max, strategy="mcmc",
                      save_steps=[steps], seed=seed, device=device,
                      log_every=max(1, min(100, steps)))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    res = run_train(cfg, scene, out, scene_config=sc)
    m = res.metrics
    peaks = m.get("peak_memory_bytes_per_rank") or [
        int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0]
    return {"gpus": gpus, "steps": res.step, "views": res.step * gpus,
            "loop_s": res.train_seconds, "steps_per_s": res.step / res.train_seconds,
            "views_per_s": res.step * gpus / res.train_seconds,
            "peak_gib_per_gpu": [round(p / 1024**3, 3) for p in peaks],
            "num_gaussians": res.num_gaussians, "psnr": m["test"]["psnr"],
            "ssim": m["test"]["ssim"], "backend": res.backend, "device": res.device}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--data-factor", type=int, default=1)
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=7000)
    ap.add_argument("--cap-max", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--views-matched", action="store_true",
                    help="steps / gpus per row (same number of training views in every row)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="CPU ranks (gloo), data_factor 8, few steps: checks the script")
    args = ap.parse_args()
    device = "cpu" if args.cpu_smoke else "cuda"
    factor = 8 if args.cpu_smoke else args.data_factor
    rows = []
    with tempfile.TemporaryDirectory(prefix="sf-multigpu-") as tmp:
        for g in args.gpus:
            steps = max(1, args.steps // g) if args.views_matched else args.steps
            row = run_row(args.scene, factor, g, steps, args.cap_max, args.seed, device,
                          Path(tmp) / "cache", Path(tmp) / f"model_{g}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]
    print(f"\n{'gpus':>4} {'steps':>6} {'loop s':>8} {'steps/s':>8} {'views/s':>8} "
          f"{'speed-up':>8} {'peak GiB per GPU':>18} {'Gaussians':>10} {'PSNR':>7}")
    for r in rows:
        r["speedup_loop"] = (base["loop_s"] / base["steps"]) / (r["loop_s"] / r["steps"])
        print(f"{r['gpus']:>4} {r['steps']:>6} {r['loop_s']:>8.1f} {r['steps_per_s']:>8.2f} "
              f"{r['views_per_s']:>8.2f} {r['speedup_loop']:>7.2f}x "
              f"{','.join(f'{p:.2f}' for p in r['peak_gib_per_gpu']):>18} "
              f"{r['num_gaussians']:>10} {r['psnr']:>7.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"scene": str(args.scene), "rows": rows}, indent=2)
                             + "\n")


if __name__ == "__main__":
    main()
