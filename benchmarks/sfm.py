"""SfM benchmark: before and after, side by side, on the shared real datasets.

For every case it runs splatforge's SfM stage twice from an empty workspace, each in its own
process: once with the code of a baseline source tree (``--baseline-src``, a checkout of the
commit to compare with, e.g. ``git worktree add /tmp/base d4d2c42``; its own defaults) and once
with this checkout's defaults. Per run it prints: registered / total images, models, seconds per
step, mean reprojection error, and where reference poses exist (lego exactly; plush_dog's and
beer_phone's reference models; fox's ``transforms.json``) the median rotation error (degrees)
and the median camera-centre error (% of the reference cameras' radius) after a similarity
alignment (rotation fitted to the camera orientations, scale and translation to the centres;
also the rotation error after an Umeyama alignment of the centres alone: :func:`pose_errors`);
with ``--train-steps N`` also the held-out PSNR
after the same short CPU training on the resulting poses (the preview preset's recipe at about
200 px wide, N steps; ``--train-seeds K``: the median over seeds 0..K-1, each in
``psnr_seeds``; ``--train-first-seed S`` starts at seed S, to add seeds to a run).

Usage (repository root)::

    git worktree add --detach /tmp/base d4d2c42
    .venv/bin/python benchmarks/sfm.py --baseline-src /tmp/base/src \\
        --cases sample plush_dog lego beer_phone fox sceaux_castle --train-steps 300
    .venv/bin/python benchmarks/sfm.py --baseline-src /tmp/base/src \\
        --cases statue_of_liberty beer_260
    .venv/bin/python benchmarks/sfm.py --cases sample --tiny      # seconds: proves it runs
    .venv/bin/python benchmarks/sfm.py --cases sample --repeat 20  # registration over 20 runs

``--repeat N`` runs each case N times with this checkout and prints, per run, the photos
registered, and the largest rotation difference from the first run (degrees, relative
rotations to the first image, so independent of the similarity gauge).

``--cache DIR`` keeps every run's JSON there and reuses it on the next call (same case, same
source tree, same options), so a long comparison can be resumed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import splatforge  # noqa: F401  (import-order guard before pycolmap)

if TYPE_CHECKING:
    from splatforge.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("SPLATFORGE_DATASETS", ROOT.parent / "shared" / "datasets"))
PREVIEW_SFM = {"max_image_size": 800, "max_num_features": 4096}

#: case -> (image folder or builder, options for both runs, reference dataset or None)
CASES: dict[str, tuple[str, dict, str | None]] = {
    "sample": (str(ROOT / "samples" / "plush_dog" / "images"), PREVIEW_SFM,
               str(DATASETS / "plush_dog")),
    "plush_dog": (str(DATASETS / "plush_dog" / "images_4"), {}, str(DATASETS / "plush_dog")),
    "lego": (str(DATASETS / "lego" / "train"), {}, str(DATASETS / "lego")),
    "beer_phone": (str(DATASETS / "beer_phone" / "images"), {},
                   str(DATASETS / "beer_phone")),
    "fox": (str(DATASETS / "fox" / "images"), {}, str(DATASETS / "fox")),
    # reference: the dataset's own LLFF poses (sparse/0), approximate but independent of us
    "statue_of_liberty": (str(DATASETS / "statue_of_liberty" / "images"), {},
                          str(DATASETS / "statue_of_liberty")),
    # the same photos with exhaustive matching: what the baseline needs to register them all
    # (its default for more than exhaustive_max_images photos is sequential matching)
    "statue_exhaustive": (str(DATASETS / "statue_of_liberty" / "images"),
                          {"matching": "exhaustive"}, str(DATASETS / "statue_of_liberty")),
    "sceaux_castle": (str(DATASETS / "sceaux_castle" / "images"), {}, None),
    # 260 frames of beer_phone's video, as a folder of photos (a 250+ image set)
    "beer_260": ("build:beer_260", {}, None),
}
#: cases run with the baseline only, and the case whose "after" row they are compared with
BASELINE_ONLY = {"statue_exhaustive": "statue_of_liberty"}

_RUNNER = r"""
import json, sys, time
from pathlib import Path
import splatforge
from splatforge.config import SfmConfig
from splatforge.sfm import run_sfm
media, ws, opts = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
t0 = time.monotonic()
try:
    r = run_sfm(SfmConfig(**opts), Path(media), ws, force=True)
    out = {"registered": r.num_registered, "images": r.num_images, "models": r.num_models,
           "points": r.num_points, "reproj_px": r.mean_reprojection_error,
           "matching": r.matching, "seconds": r.seconds,
           "method": getattr(r, "method", "") or ("relaxed" if r.relaxed else r.mapping)}
except Exception as e:  # a refused or failed run is a result too
    out = {"error": f"{type(e).__name__}: {str(e)[:300]}", "registered": 0}
out["total_s"] = round(time.monotonic() - t0, 1)
print("RESULT " + json.dumps(out))
"""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import pycolmap

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores (load average {load:.1f} at the end), "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"pycolmap {pycolmap.__version__} ({'CUDA' if pycolmap.has_cuda else 'CPU'})")


def build_media(spec: str, tmp: Path) -> Path:
    """The image folder of a case (``build:...`` cases are made here once)."""
    if not spec.startswith("build:"):
        return Path(spec)
    name = spec.split(":", 1)[1]
    dst = tmp / name
    if dst.is_dir() and any(dst.iterdir()):
        return dst
    if name == "beer_260":
        from splatforge.config import IngestConfig
        from splatforge.ingest import run_ingest

        ws = tmp / "beer_260_ingest"
        res = run_ingest(IngestConfig(max_num_images=260), DATASETS / "beer_phone" / "Beer.mp4",
                         ws, None)
        dst.mkdir(parents=True, exist_ok=True)
        for p in sorted(res.images_dir.iterdir()):
            shutil.copy(p, dst / p.name)
        return dst
    raise ValueError(spec)


def run_one(src: Path, media: Path, ws: Path, opts: dict, cache: Path | None,
            label: str) -> dict:
    """One SfM run in a fresh process with ``src`` first on the path."""
    key = hashlib.sha1(json.dumps([str(src), str(media), opts], sort_keys=True).encode()
                       ).hexdigest()[:12]
    cached = cache / f"{label}_{key}.json" if cache else None
    if cached is not None and cached.is_file():
        return json.loads(cached.read_text())
    extra = os.environ.get("PYTHONPATH")  # e.g. a folder of carried wheels, after src
    env = dict(os.environ, PYTHONPATH=str(src) + (os.pathsep + extra if extra else ""))
    p = subprocess.run([sys.executable, "-c", _RUNNER, str(media), str(ws), json.dumps(opts)],
                       capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{label}: no result\n{p.stderr[-3000:]}")
    out = json.loads(lines[-1][len("RESULT "):])
    out["workspace"] = str(ws)
    if cached is not None:
        cached.write_text(json.dumps(out, indent=1))
    return out


# --- pose accuracy -------------------------------------------------------------------------

def _reference_poses(ref: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (camera-to-world rotation [3, 3], camera centre [3]) of a reference dataset."""
    from splatforge.config import SceneConfig
    from splatforge.scene import load_scene

    if (ref / "sparse" / "0").is_dir() and (ref / "images_4").is_dir():
        sc = load_scene(ref, SceneConfig(images="images_4", normalize=False, test_every=0))
    elif (ref / "transforms_train.json").is_file():
        sc = load_scene(ref / "transforms_train.json", SceneConfig(normalize=False,
                                                                   test_every=0))
    else:
        sc = load_scene(ref, SceneConfig(normalize=False, test_every=0))
    out = {}
    for im in sc.images:
        c2w = np.linalg.inv(im.viewmat)
        out[Path(im.name).name] = (c2w[:3, :3], c2w[:3, 3])
    return out


def _estimated_poses(ws: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import pycolmap

    rec = pycolmap.Reconstruction(str(ws / "sparse" / "0"))
    out = {}
    for im in rec.images.values():
        if im.has_pose:
            m = np.asarray(im.cam_from_world().matrix())
            r, t = m[:3, :3], m[:3, 3]
            out[Path(im.name).name] = (r.T, -r.T @ t)
    return out


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``dst ~ s R src + t`` by least squares (Umeyama, TPAMI 1991, Eqs. 40-42)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    s_fix = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s_fix[2, 2] = -1
    r = u @ s_fix @ vt
    var_s = (xs ** 2).sum() / len(src)
    s = float(np.trace(np.diag(d) @ s_fix) / var_s)
    return s, r, mu_d - s * r @ mu_s


def rotation_mean(rs: list[np.ndarray]) -> np.ndarray:
    """The rotation closest to all of ``rs`` in the chordal (Frobenius) sense: the projection
    of their arithmetic mean onto SO(3) by SVD (Hartley et al., "Rotation Averaging", IJCV
    2013, Sec. 5.3)."""
    u, _, vt = np.linalg.svd(np.sum(rs, axis=0))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return u @ d @ vt


def parse_options(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as a dict, each VALUE read as JSON (``0.002``, ``true``,
    ``null``), else taken as the string itself (``mapping=global``)."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def pose_errors(ws: Path, ref: Path) -> dict:
    """Median rotation error (degrees) and camera-centre error (% of the reference radius).

    Two similarity alignments of the estimated cameras to the reference:

    - ``rot_err_deg`` / ``centre_err_pct``: rotation fitted to the camera orientations
      (:func:`rotation_mean` of ``R_ref_i R_est_i^T``), then scale and translation to the
      centres by least squares. Valid for any camera layout.
    - ``rot_err_umeyama_deg``: rotation, scale and translation fitted to the centres alone
      (:func:`umeyama`), as in the earlier tables. Any centre that disagrees with the
      reference tilts its rotation: on beer_phone, where a stretch of both our trajectories
      sits 38 % of the radius away from the dataset's model, it reports 64-69 degrees while
      the orientations agree within 0.5.
    """
    est, gt = _estimated_poses(ws), _reference_poses(ref)
    names = sorted(set(est) & set(gt))
    if len(names) < 3:
        return {}
    ce = np.stack([est[n][1] for n in names])
    cg = np.stack([gt[n][1] for n in names])
    radius = float(np.linalg.norm(cg - cg.mean(0), axis=1).max())

    def rot_errs(r: np.ndarray) -> list[float]:
        out = []
        for n in names:
            rel = gt[n][0].T @ (r @ est[n][0])
            out.append(float(np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1)))))
        return out

    r = rotation_mean([gt[n][0] @ est[n][0].T for n in names])
    xe, xg = (r @ (ce - ce.mean(0)).T).T, cg - cg.mean(0)
    s = float((xe * xg).sum() / (xe ** 2).sum())
    cerr = np.linalg.norm(s * xe - xg, axis=1) / radius * 100.0
    _, ru, _ = umeyama(ce, cg)
    rerr = np.asarray(rot_errs(r))
    return {"rot_err_deg": round(float(np.median(rerr)), 3),
            "centre_err_pct": round(float(np.median(cerr)), 3),
            "rot_err_umeyama_deg": round(float(np.median(rot_errs(ru))), 3),
            # the tail: a tenth of the photos can be posed wrongly while the median stays
            # low (statue_of_liberty, README "SfM at scale", fifteenth round)
            "rot_err_p90_deg": round(float(np.percentile(rerr, 90)), 3),
            "centre_err_p90_pct": round(float(np.percentile(cerr, 90)), 3),
            "off_10deg": int((rerr > 10.0).sum()),
            "compared": len(names)}


def short_train_config(steps: int, seed: int = 0, **extra) -> TrainConfig:
    """The issue's short CPU training: the preview preset's recipe for ``steps`` steps on the
    CPU with the pure-PyTorch rasterizer, densification stopping at 80 % of the steps;
    ``extra``: further ``TrainConfig`` fields (e.g. ``save_steps``), validated like the rest."""
    from splatforge.config import TrainConfig
    from splatforge.presets import PRESETS

    kw = PRESETS["preview"].train.model_dump(exclude_unset=True)
    kw.update(max_steps=steps, device="cpu", backend="torch", seed=seed, **extra)
    kw["densify_until_iter"] = min(kw["densify_until_iter"], int(steps * 0.8))
    return TrainConfig(**kw)


def train_psnr(ws: Path, steps: int, out: Path, seed: int = 0) -> float | None:
    """Held-out PSNR after :func:`short_train_config` on ``ws`` at about 200 px wide."""
    from splatforge.config import SceneConfig
    from splatforge.presets import preview_data_factor
    from splatforge.scene import load_scene
    from splatforge.train import run_train

    first = sorted((ws / "images").iterdir())[0]
    from PIL import Image

    with Image.open(first) as im:
        width = im.width
    sc = SceneConfig(data_factor=preview_data_factor(width), cache_dir=out / "cache")
    scene = load_scene(ws, sc)
    model = out / f"model_seed{seed}"
    shutil.rmtree(model, ignore_errors=True)  # a fresh training, also on a re-run
    res = run_train(short_train_config(steps, seed), scene, model, scene_config=sc)
    return (res.metrics.get("test") or {}).get("psnr")


def _relative_rotations(ws: Path) -> dict[str, np.ndarray]:
    poses = _estimated_poses(ws)
    if not poses:
        return {}
    ref = sorted(poses)[0]
    return {n: poses[ref][0].T @ r for n, (r, _) in poses.items()}


def repeat(case: str, n: int, threads: int, tmp: Path) -> list[dict]:
    """``n`` runs of one case with this checkout: registered counts and pose spread."""
    spec, opts, _ = CASES[case]
    media = build_media(spec, tmp)
    opts = dict(opts, num_threads=threads)
    rows, first = [], None
    for i in range(n):
        ws = tmp / f"{case}_repeat"
        shutil.rmtree(ws, ignore_errors=True)
        r = run_one(ROOT / "src", media, ws, opts, None, f"{case}_repeat{i}")
        rot = _relative_rotations(ws) if "error" not in r else {}
        if first is None:
            first = rot
        common = set(rot) & set(first)
        spread = max((np.degrees(np.arccos(np.clip((np.trace(first[k].T @ rot[k]) - 1) / 2,
                                                     -1, 1))) for k in common), default=None)
        row = {"case": case, "run": i + 1, "registered": r.get("registered"),
               "images": r.get("images"), "method": r.get("method"),
               "same_set_as_run_1": set(rot) == set(first),
               "max_rot_diff_deg": None if spread is None else round(float(spread), 5),
               "total_s": r.get("total_s")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--baseline-src", type=Path,
                    help="src/ of the commit to compare with (omit: this checkout only)")
    ap.add_argument("--threads", type=int, default=-1, help="SfM threads (-1 = all cores)")
    ap.add_argument("--train-steps", type=int, default=0,
                    help="also train this many CPU steps on each result (0 = no training)")
    ap.add_argument("--train-first-seed", type=int, default=0,
                    help="first training seed (seeds S .. S + train_seeds - 1)")
    ap.add_argument("--train-seeds", type=int, default=1,
                    help="train with seeds 0..N-1 and report the median held-out PSNR "
                         "(psnr_seeds lists each): one seed's PSNR varies by about 0.5 dB")
    ap.add_argument("--tiny", action="store_true", help="8 images per case: a quick check")
    ap.add_argument("--cache", type=Path, help="keep and reuse each run's JSON here")
    ap.add_argument("--work", type=Path, help="workspaces here (default: a temp folder)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--repeat", type=int, default=0,
                    help="run each case this many times with this checkout (repeatability)")
    ap.add_argument("--only", choices=("before", "after"),
                    help="run one side only (with --cache: fill it ahead of the comparison)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="SfmConfig options for the after runs (VALUE as JSON, else a "
                         "string), e.g. sift_first_octave=0: a lever measured before it is a "
                         "default")
    args = ap.parse_args()
    after_opts = parse_options(args.set)
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    if args.repeat:
        with tempfile.TemporaryDirectory() as t:
            rows = [r for c in args.cases for r in repeat(c, args.repeat, args.threads, Path(t))]
        regs = [r["registered"] for r in rows]
        print(f"\nSfM repeatability on {machine()}, threads {args.threads}: registered "
              f"min {min(regs)}, max {max(regs)} over {len(rows)} runs; largest rotation "
              f"difference {max((r['max_rot_diff_deg'] or 0) for r in rows):.5f} degrees; "
              f"same set every run: {all(r['same_set_as_run_1'] for r in rows)}")
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
        return

    sources = [("after", ROOT / "src")]
    if args.baseline_src:
        sources.insert(0, ("before", args.baseline_src.resolve()))
    if args.only:
        sources = [s for s in sources if s[0] == args.only]
    rows = []
    tmp_ctx = tempfile.TemporaryDirectory() if args.work is None else None
    tmp = Path(tmp_ctx.name) if tmp_ctx else args.work
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        for case in args.cases:
            spec, opts, ref = CASES[case]
            media = build_media(spec, tmp)
            if args.tiny:
                sub = tmp / f"{case}_tiny"
                sub.mkdir(exist_ok=True)
                for p in sorted(media.iterdir())[:8]:
                    shutil.copy(p, sub / p.name)
                media = sub
            opts = dict(opts, num_threads=args.threads)
            for label, src in sources:
                if label == "after" and case in BASELINE_ONLY:
                    continue
                ws = tmp / f"{case}_{label}"
                run_opts = dict(opts, **after_opts) if label == "after" else opts
                r = run_one(src, media, ws, run_opts, args.cache, f"{case}_{label}")
                row = {"case": case, "code": label, **(after_opts if label == "after" else {}),
                       **{k: v for k, v in r.items()
                                                        if k not in ("seconds", "workspace")},
                       **{f"{k}_s": v for k, v in (r.get("seconds") or {}).items()}}
                wsp = Path(r.get("workspace", ws))
                if ref and "error" not in r and (wsp / "sparse" / "0").is_dir():
                    row.update(pose_errors(wsp, Path(ref)))
                if args.train_steps and "error" not in r and (wsp / "images").is_dir():
                    ps = [train_psnr(wsp, args.train_steps, tmp / f"{case}_{label}_t", seed)
                          for seed in range(args.train_first_seed,
                                            args.train_first_seed + args.train_seeds)]
                    row["psnr_seeds"] = [None if p is None else round(p, 3) for p in ps]
                    ok = [p for p in ps if p is not None]
                    row["psnr"] = round(float(np.median(ok)), 3) if ok else None
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    args.json.write_text(json.dumps({"machine": machine(), "rows": rows},
                                                    indent=2))
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()

    print(f"\nSfM benchmark on {machine()}, threads {args.threads}\n")
    cols = ["case", "code", "registered", "images", "models", "method", "matching",
            "reproj_px", "rot_err_deg", "rot_err_p90_deg", "off_10deg", "rot_err_umeyama_deg",
            "centre_err_pct", "centre_err_p90_pct", "psnr",
            "extract_s", "match_s", "map_s", "undistort_s", "total_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    befores = [r for r in rows if r["code"] == "before"]
    for r in rows:
        for b in befores:
            if r["code"] != "after" or not (b.get("total_s") and r.get("total_s")):
                continue
            if b["case"] == r["case"] or BASELINE_ONLY.get(b["case"]) == r["case"]:
                print(f"{r['case']}: after / before ({b['case']}) total time = "
                      f"{r['total_s'] / b['total_s']:.2f} ({b['total_s']} s, "
                      f"{b.get('registered')} registered -> {r['total_s']} s, "
                      f"{r.get('registered')} registered)")


if __name__ == "__main__":
    main()
