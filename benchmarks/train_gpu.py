"""GPU training benchmark: splatforge's trainer on a scene at 7k and 30k steps.

Prints one Markdown table: training-loop time (the optimisation loop alone: no data loading
before step 0, no saving, no evaluation), steps/s, peak ``torch.cuda.max_memory_allocated``,
final Gaussians, held-out PSNR/SSIM. Every row is a fresh run with the same seed. Usage on a
CUDA machine (from the repo root)::

    python benchmarks/train_gpu.py --scene workspaces/plush_dog --steps 7000 30000 \\
        --json benchmarks/results/train_gpu_plush_dog.json

``SPLATFORGE_GSPLAT_SO`` may point to a prebuilt ``gsplat_cuda.so`` (see NOTES.md) to skip
gsplat's JIT compile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import splatforge  # noqa: F401  (import-order guard)


def git_commit() -> str:
    if os.environ.get("GIT_COMMIT"):  # set by callers that copy the tree without .git
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> None:
    import torch

    from splatforge.config import SceneConfig, TrainConfig
    from splatforge.scene import load_scene
    from splatforge.train import run_train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[7000, 30000])
    ap.add_argument("--data-factor", type=int, default=1)
    ap.add_argument("--strategy", default="default")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="keep the model dirs under this folder")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        raise SystemExit("train_gpu.py needs a CUDA device")
    import gsplat

    device = torch.cuda.get_device_name(0)
    scene_cfg = SceneConfig(data_factor=args.data_factor)
    t0 = time.monotonic()
    scene = load_scene(args.scene, scene_cfg)
    load_s = time.monotonic() - t0
    rows = []
    for steps in args.steps:
        cfg = TrainConfig(max_steps=steps, seed=args.seed, strategy=args.strategy,
                          backend=args.backend, save_steps=[steps])
        base = args.keep or Path(tempfile.mkdtemp())
        model_dir = base / f"steps_{steps}"
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.monotonic()
        res = run_train(cfg, scene, model_dir, scene_config=scene_cfg)
        wall = time.monotonic() - t0
        peak = torch.cuda.max_memory_allocated()
        m = res.metrics
        rows.append({
            "steps": steps, "train_s": round(res.train_seconds, 1), "wall_s": round(wall, 1),
            "steps_per_s": round(steps / res.train_seconds, 1),
            "peak_mem_GB": round(peak / 1e9, 3), "gaussians": res.num_gaussians,
            "test_psnr": round(m.get("test", {}).get("psnr", float("nan")), 3)
            if isinstance(m.get("test"), dict) else m.get("test_psnr"),
            "test_ssim": round(m.get("test", {}).get("ssim", float("nan")), 4)
            if isinstance(m.get("test"), dict) else m.get("test_ssim"),
            "backend": res.backend,
        })
        print(json.dumps(rows[-1]), flush=True)

    info = {
        "device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
        "gsplat": gsplat.__version__, "python": platform.python_version(),
        "git_commit": git_commit(), "scene": str(args.scene), "images": len(scene.images),
        "train_images": len(scene.train_indices), "test_images": len(scene.test_indices),
        "data_factor": args.data_factor, "strategy": args.strategy, "seed": args.seed,
        "scene_load_s": round(load_s, 2),
    }
    print(f"\nsplatforge train on {device} (torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"gsplat {gsplat.__version__}, commit {info['git_commit']})")
    print(f"scene {args.scene}: {info['train_images']} train / {info['test_images']} test images, "
          f"data_factor {args.data_factor}, strategy {args.strategy}, seed {args.seed}\n")
    cols = ["steps", "train_s", "steps_per_s", "peak_mem_GB", "gaussians", "test_psnr",
            "test_ssim", "backend"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
