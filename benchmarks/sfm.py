"""SfM benchmark: images, registered, points, reprojection error and seconds per step.

Runs splatforge's SfM stage (pycolmap, CPU) on the shared real datasets and prints one
Markdown table with the machine named. Each case runs incremental mapping from an empty
workspace, then global mapping on the same features and matches (only ``map`` is re-measured;
its ``extract``/``match`` columns repeat the incremental row's), and, for plush_dog, the
known-pose path (``pose_prior`` = the dataset's ``sparse/0``; its own extraction, one camera
per image). Usage (from the repo root)::

    .venv/bin/python benchmarks/sfm.py                              # every case
    .venv/bin/python benchmarks/sfm.py --cases plush_dog beer_phone --threads 2
    .venv/bin/python benchmarks/sfm.py --cases sceaux_castle --tiny  # seconds, a CPU check

``--tiny`` keeps the first 8 images of each case at 640 px and 1024 features: the whole
script in well under a minute, to prove it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import splatforge  # noqa: F401  (import-order guard before pycolmap)
from splatforge.config import SfmConfig
from splatforge.sfm import run_sfm

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
#: case -> (image folder, matching, pose prior model or None)
CASES = {
    "sceaux_castle": (DATASETS / "sceaux_castle" / "images", "exhaustive", None),
    "plush_dog": (DATASETS / "plush_dog" / "images_4", "exhaustive",
                  DATASETS / "plush_dog" / "sparse" / "0"),
    "beer_phone": (DATASETS / "beer_phone" / "images", "sequential", None),
    "statue_of_liberty": (DATASETS / "statue_of_liberty" / "images", "exhaustive", None),
}


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
            f"pycolmap {pycolmap.__version__} (CPU)")


def _row(case: str, mapping: str, res, total: float) -> dict:
    return {"case": case, "mapping": mapping, "matching": res.matching,
            "images": res.num_images, "registered": res.num_registered,
            "points": res.num_points, "reproj_px": res.mean_reprojection_error,
            "track_len": res.mean_track_length, "relaxed": res.relaxed,
            **{f"{k}_s": v for k, v in res.seconds.items()}, "total_s": round(total, 1)}


def _subset(src: Path, n: int, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(q for q in src.iterdir() if q.is_file())[:n]:
        shutil.copy(p, dst / p.name)
    return dst


def run_case(case: str, cfg_kw: dict, tmp: Path, tiny: bool) -> list[dict]:
    images, matching, prior = CASES[case]
    if tiny:
        images = _subset(images, 8, tmp / f"{case}_subset")
    rows = []
    ws = tmp / case
    cfg = SfmConfig(matching=matching, **cfg_kw)
    t0 = time.monotonic()
    inc = run_sfm(cfg, images, ws, force=True)
    rows.append(_row(case, "incremental", inc, time.monotonic() - t0))
    # Global mapping on the same features and matches: sfm.json removed, work state kept.
    (ws / "sfm.json").unlink()
    t0 = time.monotonic()
    glo = run_sfm(cfg.model_copy(update={"mapping": "global"}), images, ws)
    r = _row(case, "global", glo, time.monotonic() - t0)
    for k in ("extract_s", "match_s"):
        r[k] = rows[0].get(k)
    rows.append(r)
    if prior is not None:
        t0 = time.monotonic()
        kp = run_sfm(cfg.model_copy(update={"pose_prior": prior}), images, tmp / f"{case}_kp",
                     force=True)
        rows.append(_row(case, "known poses", kp, time.monotonic() - t0))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--max-image-size", type=int, default=SfmConfig().max_image_size)
    ap.add_argument("--max-num-features", type=int, default=SfmConfig().max_num_features)
    ap.add_argument("--threads", type=int, default=-1, help="SfM threads (-1 = all cores)")
    ap.add_argument("--tiny", action="store_true", help="8 images, 640 px, 1024 features")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()

    cfg_kw = {"max_image_size": args.max_image_size, "max_num_features": args.max_num_features,
              "num_threads": args.threads}
    if args.tiny:
        cfg_kw.update(max_image_size=640, max_num_features=1024)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            rows += run_case(case, cfg_kw, Path(tmp), args.tiny)
            if args.json:  # after every case, so a long run leaves what it measured
                args.json.write_text(json.dumps({"machine": machine(), "config": cfg_kw,
                                                 "rows": rows}, indent=2))

    print(f"\nSfM benchmark on {machine()}")
    print(f"max_image_size {cfg_kw['max_image_size']}, max_num_features "
          f"{cfg_kw['max_num_features']}, threads {cfg_kw['num_threads']}\n")
    cols = ["case", "mapping", "matching", "images", "registered", "points", "reproj_px",
            "track_len", "extract_s", "match_s", "map_s", "undistort_s", "total_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


if __name__ == "__main__":
    main()
