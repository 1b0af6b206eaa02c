"""SIFT extraction time and feature count at a downscaled size: COLMAP's own resize against
Pillow's copies (``splatforge.sfm.downscale``), and no downscale at all.

For a folder of same-size images, each mode builds a fresh database and extracts every image
with all cores (calls of ``--batch`` images, octave ``--first-octave``), then prints one row per
mode and repeat: the downscale seconds (Pillow only), the extraction seconds, the total and the
median number of features per image. The rows of the modes are interleaved (full, colmap,
pillow, full, ...) so that drift on the machine hits them alike::

    .venv/bin/python benchmarks/sift_extraction.py /path/to/frames --size 1024 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def extract(image_dir: Path, names: list[str], size: int, first_octave: int, batch: int,
            db: Path) -> list[int]:
    """Features per image after extracting ``names`` from ``image_dir`` into ``db``."""
    import pycolmap

    ext = pycolmap.FeatureExtractionOptions()
    ext.num_threads = -1
    ext.max_image_size = size
    ext.sift.first_octave = first_octave
    with pycolmap.Database.open(db):
        pass
    mode = pycolmap.CameraMode.SINGLE
    pycolmap.import_images(db, image_dir, camera_mode=mode, image_names=names)
    for i in range(0, len(names), batch):
        pycolmap.extract_features(db, image_dir, image_names=names[i:i + batch],
                                  camera_mode=mode, extraction_options=ext)
    with pycolmap.Database.open(db) as d:
        return [d.num_keypoints_for_image(im.image_id) for im in d.read_all_images()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", type=Path)
    ap.add_argument("--size", type=int, default=1024, help="extraction size (px)")
    ap.add_argument("--first-octave", type=int, default=0)
    ap.add_argument("--batch", type=int, default=26)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import pycolmap

    from splatforge.sfm.downscale import downscale_images

    pycolmap.logging.minloglevel = pycolmap.logging.ERROR
    names = sorted(p.name for p in args.images.iterdir() if p.is_file())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for rep in range(args.repeat):
            for mode in ("full", "colmap", "pillow"):
                db = tmp / f"{mode}{rep}.db"
                t0 = time.monotonic()
                src, size = args.images, args.size
                if mode == "full":
                    size = 100_000
                elif mode == "pillow":
                    src = tmp / "small"
                    shutil.rmtree(src, ignore_errors=True)
                    downscale_images(args.images, names, args.size, src)
                t1 = time.monotonic()
                feats = extract(src, names, size, args.first_octave, args.batch, db)
                t2 = time.monotonic()
                rows.append({"mode": mode, "repeat": rep, "downscale_s": round(t1 - t0, 2),
                             "extract_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
                             "median_features": int(np.median(feats))})
    print(f"\n{len(names)} images of {args.images.name}, size {args.size} px, "
          f"octave {args.first_octave}\n")
    print("| mode | repeat | downscale s | extract s | total s | median features |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['repeat']} | {r['downscale_s']} | {r['extract_s']} | "
              f"{r['total_s']} | {r['median_features']} |")
    for mode in ("full", "colmap", "pillow"):
        t = [r["total_s"] for r in rows if r["mode"] == mode]
        print(f"{mode}: median total {statistics.median(t):.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"images": len(names), "size": args.size,
                                         "first_octave": args.first_octave, "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
