"""Compression benchmark: train a scene (or take a trained model folder), run
``splatforge compress`` on it, print one table row per scene.

Each row: Gaussians before -> after, encoded size per format (PLY, compressed PLY, SPZ v4,
SOG) before -> after, held-out PSNR / SSIM before and after (the views the trainer never saw),
the PSNR drop, and the compress wall time. The full ``compress.json`` records go to ``--json``.

Usage on a CUDA machine (from the repo root; data under ``.gpu/data``)::

    python benchmarks/compress.py --scene .gpu/data/plush_dog --steps 30000 --keep 0.5 \\
        --finetune-steps 3000 --json benchmarks/results/compress_plush_dog.json

CPU smoke run (tiny: plush_dog at data_factor 8, 100 training steps, 20 fine-tune steps)::

    python benchmarks/compress.py --scene ../shared/datasets/plush_dog --tiny
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import splatforge  # noqa: F401  (import-order guard)


def train_model(scene: Path, out: Path, steps: int, data_factor: int, device: str,
                tiny: bool) -> Path:
    from splatforge.config import SceneConfig, TrainConfig
    from splatforge.train import run_train

    kw = dict(max_steps=steps, save_steps=[steps], device=device, seed=0)
    if tiny:
        kw.update(strategy="default", sh_degree=1, sh_degree_interval=50, densify_from_iter=25,
                  densification_interval=25, densify_until_iter=75, log_every=25)
    cfg = TrainConfig(**kw)
    model_dir = out / f"{scene.name}_model"
    t = time.monotonic()
    sc = SceneConfig(data_factor=data_factor,
                     cache_dir=out / "image_cache" if data_factor > 1 else None)
    res = run_train(cfg, scene, model_dir, None, scene_config=sc)
    print(f"{scene.name}: trained {res.step} steps, {res.num_gaussians} Gaussians in "
          f"{time.monotonic() - t:.0f} s", flush=True)
    return model_dir


def fmt_mb(b: int) -> str:
    return f"{b / 1e6:.2f}"


def row(name: str, rec: dict, seconds: float) -> str:
    g, by, ho = rec["num_gaussians"], rec["bytes"], rec["heldout"]
    pb, pa = ho["before"]["psnr"], ho["after"]["psnr"]
    sizes = " | ".join(f"{fmt_mb(by['before'][f])} -> {fmt_mb(by['after'][f])}"
                       for f in ("ply", "compressed.ply", "spz", "sog"))
    drop = f"{pb - pa:+.2f}" if pb is not None and pa is not None else "n/a"
    return (f"| {name} | {g['before']} -> {g['after']} | {sizes} | "
            f"{pb:.2f} -> {pa:.2f} | {drop} | {ho['before']['ssim']:.4f} -> "
            f"{ho['after']['ssim']:.4f} | {seconds:.0f} |")


HEADER = ("| scene | Gaussians | PLY MB | compressed PLY MB | SPZ v4 MB | SOG MB | held-out PSNR "
          "dB | PSNR drop dB | SSIM | compress s |\n|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", type=Path, action="append", default=[],
                    help="dataset folder to train first (repeatable)")
    ap.add_argument("--model-dir", type=Path, action="append", default=[],
                    help="already trained model folder (repeatable)")
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--data-factor", type=int, default=1)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--finetune-steps", type=int, default=3000)
    ap.add_argument("--sh-degree", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=None, help="folder for trained models")
    ap.add_argument("--tiny", action="store_true",
                    help="CPU smoke run: data_factor 8, 100 steps, 20 fine-tune steps")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.tiny:
        a.steps, a.data_factor, a.finetune_steps = 100, 8, 20
    if not a.scene and not a.model_dir:
        ap.error("give --scene or --model-dir")
    from splatforge.compress import run_compress

    work = a.work or Path(tempfile.mkdtemp(prefix="sf_compress_"))
    models = [(m.name, m) for m in a.model_dir]
    for s in a.scene:
        models.append((s.name, train_model(s, work, a.steps, a.data_factor, a.device, a.tiny)))
    lines, records = [], {}
    for name, m in models:
        t = time.monotonic()
        rec = run_compress(m, keep=a.keep, finetune_steps=a.finetune_steps,
                           sh_degree=a.sh_degree, device=a.device)
        secs = time.monotonic() - t
        records[name] = dict(rec, seconds=secs, train_steps=a.steps, data_factor=a.data_factor)
        lines.append(row(name, rec, secs))
        print(lines[-1], flush=True)
    print(f"\nkeep {a.keep}, {a.finetune_steps} fine-tune steps, trained {a.steps} steps at "
          f"data_factor {a.data_factor}\n{HEADER}\n" + "\n".join(lines))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
