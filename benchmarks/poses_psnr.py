"""Held-out PSNR of one training recipe on several pose sets of the same photos (issue 22).

``benchmarks/sfm.py --train-steps`` scores each SfM result after a short CPU training (300
steps at ~200 px), whose seed-to-seed spread (up to 1.3 dB on lego) is as large as the
differences between pose sets. This script trains longer, at a larger size, on a GPU: each
workspace (an undistorted COLMAP workspace, ``images/`` + ``sparse/0``, as ``splatforge sfm``
writes it) is trained with the library's default recipe for ``--steps`` steps and each of
``--seeds`` seeds, several trainings at a time on one GPU (``--jobs``), and the table gives
the median held-out PSNR (every 8th photo by name held out, the same photos for every pose set)
and the spread over seeds::

    python benchmarks/poses_psnr.py --ws lego_before=/w/lego_before lego_after=/w/lego_after \
        --steps 7000 --seeds 3 --jobs 4 --json /tmp/psnr.json

Workspaces are named ``<case>_<label>``; rows of the same case are compared with the row
labelled ``before``. ``--background R G B`` sets the colour RGBA photos are composited on and
the trainer renders on (``SceneConfig.background``, white by default); ``--save`` keeps each
training's final PLY so that ``splatforge eval`` can render its held-out views. Without CUDA
it trains on the CPU with the pure-PyTorch rasterizer (slow: for a check, use ``--steps 50``).

``--pack DIR`` instead writes a small copy of each workspace into ``DIR/<name>`` for a GPU
machine (which has neither ``../shared`` nor room for full-size frames): ``sparse/0`` and the
images downscaled by the case's ``--data-factor`` into ``images_<factor>/``, the folder the
scene loader reads at that factor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

_ONE = r"""
import json, sys, time
from pathlib import Path
import splatforge
from splatforge.config import SceneConfig, TrainConfig
from splatforge.scene import load_scene
from splatforge.train import run_train
ws, out, steps, seed, factor = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5])
bg = tuple(float(v) for v in sys.argv[6].split(","))
save = [steps] if sys.argv[7] == "1" else []
sc = SceneConfig(data_factor=factor, cache_dir=out / "cache", background=bg)
if sys.argv[8] == "short":  # benchmarks/sfm.py's short CPU training
    sys.path.insert(0, sys.argv[9])
    from sfm import short_train_config
    cfg = short_train_config(steps, seed, save_steps=save)
else:
    cfg = TrainConfig(max_steps=steps, seed=seed, save_steps=save)
t0 = time.monotonic()
res = run_train(cfg, load_scene(ws, sc), out / "model", scene_config=sc)
test = res.metrics.get("test") or {}
print("RESULT " + json.dumps({"psnr": test.get("psnr"), "ssim": test.get("ssim"),
                               "gaussians": res.num_gaussians,
                               "seconds": round(time.monotonic() - t0, 1)}))
"""


def train_one(ws: Path, out: Path, steps: int, seed: int, factor: int,
              background: tuple[float, float, float] = (1.0, 1.0, 1.0),
              save: bool = False, recipe: str = "default") -> dict:
    """One training in a fresh process; its result row (``error`` when it failed).
    ``recipe``: ``default`` (the library's) or ``short`` (``sfm.short_train_config``)."""
    out.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-c", _ONE, str(ws), str(out), str(steps), str(seed),
                        str(factor), ",".join(map(str, background)), "1" if save else "0",
                        recipe, str(Path(__file__).resolve().parent)],
                       capture_output=True, text=True)
    (out / "log.txt").write_text(p.stdout + p.stderr)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {"error": p.stderr[-1500:]}
    return json.loads(lines[-1][len("RESULT "):])


def pack(ws: Path, dst: Path, factor: int, min_track_length: int = 0,
         tracks: bool = True, points_from: Path | None = None) -> None:
    """``ws``'s ``sparse/0`` and its images at ``1/factor`` size in ``images_<factor>/``
    (JPEG quality 95; the originals when ``factor`` is 1). With ``min_track_length``, only
    the points seen in at least that many images are kept (an ablation of the points the
    training starts from; the poses are unchanged). Without ``tracks`` the model keeps its
    cameras, poses and points but no 2D observations, which the trainer does not read and
    which are most of the model's size (statue_of_liberty: about 20 MB). With ``points_from``
    (another workspace of the same photos) the points are that workspace's, moved into
    ``ws``'s frame by the similarity that best maps its camera centres onto ``ws``'s
    (Umeyama; :func:`sfm.umeyama`): ``ws``'s poses with the other side's points, which tells
    the poses' share of a PSNR difference from the points'. The fit weighs every centre
    alike, so it only holds where both sides agree on nearly all of them (fox: 0.002 units
    median residual; not statue_of_liberty, where 40 % of the centres differ by more than
    half the cameras' spread)."""
    import shutil

    from PIL import Image

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(ws / "sparse" / "0", dst / "sparse" / "0")
    if min_track_length:
        import splatforge  # noqa: F401  (import-order guard before pycolmap)
        import pycolmap

        rec = pycolmap.Reconstruction(str(dst / "sparse" / "0"))
        for pid in list(rec.point3D_ids()):
            if rec.points3D[pid].track.length() < min_track_length:
                rec.delete_point3D(pid)
        rec.write(str(dst / "sparse" / "0"))
    if not tracks or points_from is not None:
        from splatforge.scene.colmap import ColmapPoints3D, read_model, write_model

        model = read_model(dst / "sparse" / "0", read_points2D=False)
        p = model.points3D
        xyz = p.xyz
        if points_from is not None:
            from sfm import _estimated_poses, umeyama

            p = read_model(points_from / "sparse" / "0", read_points2D=False).points3D
            mine, theirs = _estimated_poses(ws), _estimated_poses(points_from)
            names = sorted(set(mine) & set(theirs))
            s, r, t = umeyama(np.array([theirs[n][1] for n in names]),
                              np.array([mine[n][1] for n in names]))
            xyz = s * p.xyz @ r.T + t
        model.points3D = ColmapPoints3D.from_arrays(xyz, p.rgb, p.ids, p.errors)
        for f in (dst / "sparse" / "0").iterdir():
            f.unlink()
        write_model(dst / "sparse" / "0", model)
    folder = dst / ("images" if factor == 1 else f"images_{factor}")
    folder.mkdir(parents=True)
    for p in sorted((ws / "images").iterdir()):
        if factor == 1:
            shutil.copy(p, folder / p.name)
            continue
        with Image.open(p) as im:
            small = im.resize((round(im.width / factor), round(im.height / factor)),
                              Image.Resampling.LANCZOS)
            small.save(folder / p.name, quality=95)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ws", nargs="+", required=True, help="name=workspace pairs")
    ap.add_argument("--steps", type=int, default=7000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds first_seed .. first_seed + seeds - 1 (to add seeds to a run)")
    ap.add_argument("--data-factor", nargs="*", default=[],
                    help="case=factor pairs (default 1), e.g. beer_phone=2")
    ap.add_argument("--jobs", type=int, default=1, help="trainings at a time")
    ap.add_argument("--recipe", choices=("default", "short"), default="default",
                    help="short: benchmarks/sfm.py's short CPU training (the preview preset's "
                         "recipe on the CPU; pack at the preview data factor, e.g. "
                         "sceaux_castle=8, and set OMP_NUM_THREADS for several jobs)")
    ap.add_argument("--background", type=float, nargs=3, default=(1.0, 1.0, 1.0),
                    help="SceneConfig.background: the colour RGBA photos are composited on "
                         "and the trainer renders on (default white)")
    ap.add_argument("--save", action="store_true",
                    help="keep each training's final PLY (for `splatforge eval` renders)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/poses_psnr"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--pack", type=Path, help="write small copies here instead of training")
    ap.add_argument("--min-track-length", type=int, default=0,
                    help="--pack: keep only points seen in at least this many images")
    ap.add_argument("--points-from", type=Path,
                    help="--pack: take the points of this workspace (aligned to each --ws)")
    ap.add_argument("--no-tracks", action="store_true",
                    help="--pack: drop the points' 2D observations (smaller packs)")
    args = ap.parse_args()
    factors = {k: int(v) for k, v in (a.split("=", 1) for a in args.data_factor)}
    named = [(n, Path(p)) for n, p in (a.split("=", 1) for a in args.ws)]
    if args.pack:
        for name, ws in named:
            pack(ws, args.pack / name, factors.get(name.rsplit("_", 1)[0], 1),
                 args.min_track_length, tracks=not args.no_tracks,
                 points_from=args.points_from)
        return
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    tasks = [(name, ws, seed) for seed in seeds for name, ws in named]

    def run(task):
        name, ws, seed = task
        case = name.rsplit("_", 1)[0]
        r = train_one(ws, args.out / f"{name}_seed{seed}", args.steps, seed,
                      factors.get(case, 1), tuple(args.background), args.save, args.recipe)
        r.update(name=name, case=case, seed=seed)
        print(json.dumps(r), flush=True)
        return r

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as ex:
        results = list(ex.map(run, tasks))
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    rows = []
    for name, ws in named:
        ps = [r.get("psnr") for r in results if r["name"] == name]
        ok = [p for p in ps if p is not None]
        rows.append({"name": name, "case": name.rsplit("_", 1)[0], "psnr_seeds": ps,
                     "psnr": round(float(np.median(ok)), 3) if ok else None,
                     "spread": round(max(ok) - min(ok), 3) if ok else None,
                     "seconds": [r.get("seconds") for r in results if r["name"] == name]})
    head = (f"{args.steps} steps, seeds {seeds[0]}..{seeds[-1]}, background "
            f"{tuple(args.background)}, {device}, "
            f"{round(time.monotonic() - t0)} s in all, commit "
            + os.popen("git rev-parse --short HEAD 2>/dev/null").read().strip())
    print(f"\nHeld-out PSNR (dB), {head}\n")
    print("| pose set | PSNR per seed | median | spread | vs before |")
    print("|---|---|---|---|---|")
    for r in rows:
        base = next((b for b in rows if b["case"] == r["case"]
                     and b["name"].endswith("_before")), None)
        d = ("" if base is None or base is r or None in (r["psnr"], base["psnr"])
             else f"{r['psnr'] - base['psnr']:+.2f}")
        seeds = ", ".join("-" if p is None else f"{p:.2f}" for p in r["psnr_seeds"])
        print(f"| {r['name']} | {seeds} | {r['psnr']} | {r['spread']} | {d} |")
    if args.json:
        args.json.write_text(json.dumps({"setup": head, "rows": rows, "runs": results},
                                        indent=1))


if __name__ == "__main__":
    main()
