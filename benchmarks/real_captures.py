"""Real-capture benchmark: appearance compensation on statue_of_liberty (issue 13).

``statue`` mode trains statue_of_liberty (135 in-the-wild photos, masks auto-detected from its
``masks/`` folder) once per ``--appearance`` model with the same seed and config, and prints per
row: training-loop time, steps/s, peak CUDA memory of the loop (GiB), final Gaussians, and the
held-out PSNR/SSIM four ways: plain and colour-corrected (``cc_*``, gsplat's protocol: a per-image
quadratic colour fit before scoring, :func:`splatforge.train.appearance.color_correct`), each over
the whole image and over the statue mask only. Held-out views are rendered with the mean
appearance, i.e. exactly what the exported PLY shows. It saves, per run, the render of one
held-out view, and a side-by-side PNG ``photo | none | embedding | bilateral`` of that view
(``--png``, default ``$OUT/appearance.png`` or ``docs/appearance.png``).

``combine`` mode builds the side-by-side PNG from the renders of earlier (separate) calls.

``pinhole`` mode writes a copy of a COLMAP dataset (``--data``) as the scene loader reads it at
``--data-factor``: undistorted, downsampled images and masks and a PINHOLE model (poses and
points, no tracks), for a GPU machine without pycolmap (the undistortion needs it). Used to
compare the appearance models on the dataset's LLFF poses and on our own SfM's poses
(``splatforge sfm`` of the photos; its distorted model is ``<workspace>/.sfm_work/kept``)::

    python benchmarks/real_captures.py pinhole --data ../shared/datasets/statue_of_liberty \
        --data-factor 2 --out /tmp/statue_llff_half
    python benchmarks/real_captures.py statue --data /tmp/statue_llff_half --data-factor 1 ...

Usage (repository root; on a CUDA machine ``SPLATFORGE_GSPLAT_SO`` may point to a prebuilt
gsplat)::

    python benchmarks/real_captures.py statue --data ../shared/datasets/statue_of_liberty \\
        --steps 30000 --data-factor 2 --out /tmp/rc
    python benchmarks/real_captures.py statue --tiny --out /tmp/rc     # CPU proof, ~minutes
    python benchmarks/real_captures.py combine --out /tmp/rc --png docs/appearance.png
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import splatforge  # noqa: F401  (import-order guard: numpy before pycolmap)

KINDS = ("none", "embedding", "bilateral")


def _u8(t):
    import numpy as np

    return (t.clamp(0, 1).detach().cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def run_statue(args) -> list[dict]:
    import numpy as np
    import torch
    from PIL import Image

    from splatforge.config import SceneConfig, TrainConfig
    from splatforge.scene import load_image, load_scene
    from splatforge.train import run_train
    from splatforge.train.evaluate import evaluate_halves, evaluate_splats, render_view
    from splatforge.train.schedule import sh_degree_at

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sc = SceneConfig(data_factor=args.data_factor, cache_dir=out / "cache")
    scene = load_scene(args.data, sc)
    if args.tiny:  # a CPU proof: a dozen images, a few steps
        keep = list(range(0, len(scene.images), max(1, len(scene.images) // 12)))[:12]
        scene.images = [scene.images[i] for i in keep]
        scene.test_indices = [i for i in range(len(keep)) if i % 4 == 0]
        scene.train_indices = [i for i in range(len(keep)) if i % 4 != 0]
    view = scene.test_indices[min(args.view, len(scene.test_indices) - 1)]
    rows = []
    for kind in args.appearance:
        overrides = dict(max_steps=args.steps, appearance=kind, log_every=100, seed=0)
        if args.tiny:
            overrides.update(sh_degree=1, log_every=5, device="cpu", backend="torch")
        if args.device == "cpu":
            overrides.update(device="cpu", backend="torch")
        if args.recipe == "preview":  # the preview preset's training (short CPU runs)
            from splatforge.presets import PRESETS

            pv = PRESETS["preview"].train.model_dump(exclude_unset=True)
            pv["densify_until_iter"] = min(pv["densify_until_iter"], int(args.steps * 0.8))
            overrides = {**pv, **overrides}
        cfg = TrainConfig(**overrides)
        grab = {}

        def hook(trainer, step, grab=grab, last=args.steps):
            if step == last:
                grab["trainer"] = trainer
                if torch.cuda.is_available():
                    grab["peak"] = torch.cuda.max_memory_allocated()

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        model_dir = out / f"statue_{kind}"
        t0 = time.perf_counter()
        res = run_train(cfg, scene, model_dir, scene_config=sc, step_hook=hook,
                        resume=True)
        wall = time.perf_counter() - t0
        tr = grab["trainer"]
        params = tr.extras.export_params(tr.params)
        sh = sh_degree_at(tr.step, cfg.sh_degree, cfg.sh_degree_interval)
        whole = evaluate_splats(params, scene, scene.test_indices, sh, tr.backend)
        masked = evaluate_splats(params, scene, scene.test_indices, sh, tr.backend,
                                 masks=tr.extras.mask_fn())
        # NeRF-W protocol: appearance fitted on each held-out photo's left half, right half
        # scored (on the raw parameters, so the embedding model sees its features)
        halves = evaluate_halves(tr.params, scene, scene.test_indices, sh, tr.backend,
                                 appearance=tr.extras.appearance, steps=args.fit_steps)
        halves_m = evaluate_halves(tr.params, scene, scene.test_indices, sh, tr.backend,
                                   appearance=tr.extras.appearance, steps=args.fit_steps,
                                   masks=tr.extras.mask_fn())
        with torch.no_grad():
            r, _, _ = render_view(params, scene, view, sh, tr.backend)
        (out / "renders").mkdir(exist_ok=True)
        Image.fromarray(_u8(r[0])).save(out / "renders" / f"{kind}.png")
        Image.fromarray(np.asarray(load_image(scene.images[view], scene.background))).save(
            out / "renders" / "photo.png")
        row = {"appearance": kind, "steps": res.step, "data_factor": args.data_factor,
               "loop_s": round(res.train_seconds, 1), "wall_s": round(wall, 1),
               "steps_per_s": round(res.steps_per_second, 1),
               "peak_gib": round(grab.get("peak", 0) / 2**30, 2),
               "gaussians": res.num_gaussians,
               "psnr": whole["psnr"], "ssim": whole["ssim"],
               "cc_psnr": whole["cc_psnr"], "cc_ssim": whole["cc_ssim"],
               "masked_psnr": masked["psnr"], "masked_ssim": masked["ssim"],
               "masked_cc_psnr": masked["cc_psnr"], "masked_cc_ssim": masked["cc_ssim"],
               "nerfw_psnr": halves["psnr"], "nerfw_ssim": halves["ssim"],
               "masked_nerfw_psnr": halves_m["psnr"], "masked_nerfw_ssim": halves_m["ssim"],
               "view": scene.images[view].name, "test_views": whole["num_images"]}
        rows.append(row)
        (out / f"statue_{kind}.json").write_text(json.dumps(row, indent=2) + "\n")
        print(json.dumps(row), flush=True)
    print_table(rows)
    return rows


def write_pinhole(data: Path, factor: int, out: Path) -> Path:
    """The dataset at ``data`` as loaded at ``factor``, written to ``out`` as a PINHOLE COLMAP
    dataset (``images/``, ``masks/``, ``sparse/0/``); returns ``out``."""
    import shutil

    import numpy as np

    from splatforge.config import SceneConfig
    from splatforge.scene import load_scene
    from splatforge.scene.colmap import (ColmapCamera, ColmapImage, ColmapModel,
                                         ColmapPoints3D, rotmat_to_qvec, write_model)

    scene = load_scene(data, SceneConfig(data_factor=factor, cache_dir=out / "_cache",
                                         normalize=False))
    cams, imgs = {}, {}
    for k, im in enumerate(scene.images, 1):
        for src, sub in ((im.path, "images"), (im.mask_path, "masks")):
            if src is not None:
                (out / sub / im.name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, out / sub / im.name)
        K = im.K
        cams[k] = ColmapCamera(id=k, model="PINHOLE", width=im.width, height=im.height,
                               params=np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]]))
        imgs[k] = ColmapImage(id=k, qvec=rotmat_to_qvec(im.viewmat[:3, :3]),
                              tvec=im.viewmat[:3, 3].copy(), camera_id=k, name=im.name)
    pts = ColmapPoints3D.from_arrays(scene.points, scene.points_rgb)
    (out / "sparse" / "0").mkdir(parents=True, exist_ok=True)
    write_model(out / "sparse" / "0", ColmapModel(cams, imgs, pts))
    shutil.rmtree(out / "_cache", ignore_errors=True)
    print(f"wrote {out}: {len(imgs)} images, {len(pts)} points, data factor {factor}")
    return out


def print_table(rows: list[dict]) -> None:
    cols = ["appearance", "steps", "loop_s", "steps_per_s", "peak_gib", "gaussians", "psnr",
            "cc_psnr", "ssim", "cc_ssim", "masked_psnr", "masked_cc_psnr", "nerfw_psnr",
            "masked_nerfw_psnr"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols))


def combine(out: Path, png: Path) -> Path:
    """``photo | none | embedding | bilateral`` side by side from ``out/renders``."""
    import numpy as np
    from PIL import Image, ImageDraw

    names = ["photo"] + [k for k in KINDS if (out / "renders" / f"{k}.png").is_file()]
    ims = [np.asarray(Image.open(out / "renders" / f"{n}.png").convert("RGB")) for n in names]
    h = min(i.shape[0] for i in ims)
    strip = np.concatenate([i[:h] for i in ims], axis=1)
    img = Image.fromarray(strip)
    d = ImageDraw.Draw(img)
    x = 0
    labels = {"photo": "held-out photo", "none": "no appearance model",
              "embedding": "--appearance embedding", "bilateral": "--appearance bilateral"}
    for n, i in zip(names, ims):
        d.rectangle([x, 0, x + 8 * len(labels[n]) + 8, 16], fill=(0, 0, 0))
        d.text((x + 4, 2), labels[n], fill=(255, 255, 255))
        x += i.shape[1]
    png.parent.mkdir(parents=True, exist_ok=True)
    img.save(png)
    print(f"wrote {png} ({' | '.join(names)})")
    return png


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["statue", "combine", "pinhole"])
    ap.add_argument("--data", default=os.environ.get("STATUE", "../shared/datasets/"
                                                                 "statue_of_liberty"))
    ap.add_argument("--appearance", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--data-factor", type=int, default=2, choices=[1, 2, 4, 8])
    ap.add_argument("--view", type=int, default=2, help="which held-out view to picture")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/real_captures"))
    ap.add_argument("--png", default=None)
    ap.add_argument("--tiny", action="store_true", help="CPU proof: 12 images, few steps")
    ap.add_argument("--fit-steps", type=int, default=100,
                    help="NeRF-W protocol: Adam steps fitting each held-out photo's "
                         "appearance on its left half")
    ap.add_argument("--device", default=None, help="train on this device (e.g. cpu)")
    ap.add_argument("--recipe", choices=("default", "preview"), default="default",
                    help="preview: the preview preset's training recipe (short CPU runs)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.data_factor = 8
        args.steps = min(args.steps, 10)
    out = Path(args.out)
    png = Path(args.png) if args.png else out / "appearance.png"
    if args.mode == "pinhole":
        write_pinhole(Path(args.data), args.data_factor, out)
        return 0
    if args.mode == "statue":
        run_statue(args)
    combine(out, png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
