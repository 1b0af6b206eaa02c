"""SfM benchmark: images, registered, points, reprojection error and seconds per step.

Runs splatforge's SfM stage (pycolmap, CPU) on the shared real datasets and prints one
Markdown table with the machine named. Usage (from the repo root)::

    .venv/bin/python benchmarks/sfm.py                  # sceaux_castle and plush_dog
    .venv/bin/python benchmarks/sfm.py --max-image-size 1600 --json out.json

Every run starts from an empty workspace (``--force``), so nothing is reused between rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import splatforge  # noqa: F401  (import-order guard before pycolmap)
from splatforge.config import SfmConfig
from splatforge.sfm import run_sfm

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SCENES = {
    "sceaux_castle": DATASETS / "sceaux_castle" / "images",
    "plush_dog": DATASETS / "plush_dog" / "images_4",
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

    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, pycolmap {pycolmap.__version__} (CPU)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    ap.add_argument("--max-image-size", type=int, default=SfmConfig().max_image_size)
    ap.add_argument("--max-num-features", type=int, default=SfmConfig().max_num_features)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()

    rows = []
    for name in args.scenes:
        cfg = SfmConfig(max_image_size=args.max_image_size,
                        max_num_features=args.max_num_features)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            res = run_sfm(cfg, SCENES[name], Path(tmp) / name, force=True)
            total = time.monotonic() - t0
        rows.append({"scene": name, "images": res.num_images, "registered": res.num_registered,
                     "points": res.num_points, "reproj_px": res.mean_reprojection_error,
                     "track_len": res.mean_track_length, "relaxed": res.relaxed,
                     **{f"{k}_s": v for k, v in res.seconds.items()}, "total_s": round(total, 1)})

    print(f"\nSfM benchmark on {machine()}")
    print(f"max_image_size {args.max_image_size}, max_num_features {args.max_num_features}, "
          "matching auto (exhaustive), mapping incremental\n")
    cols = ["scene", "images", "registered", "points", "reproj_px", "track_len", "relaxed",
            "ingest_s", "extract_s", "match_s", "map_s", "undistort_s", "total_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
