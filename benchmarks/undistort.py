"""Undistortion benchmark: COLMAP's image undistorter against splatforge's, on a real model.

Both write the same thing (PINHOLE cameras, moved 2D points, resampled images; see
``splatforge/scene/undistort.py`` and ``tests/test_sfm.py::test_undistortion_equals_colmaps``).
Per side it runs the undistortion ``--repeat`` times on the same model and prints the median
seconds, then the ratio. torch is imported before timing (SfM loads it in the background while
it maps; see ``splatforge.scene.undistort.start_loading``).

Usage (repository root)::

    .venv/bin/python benchmarks/undistort.py                      # beer_phone's model, 71 frames
    .venv/bin/python benchmarks/undistort.py --model WS/.sfm_work/models/global/0 --images WS/input
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: F401  (import-order guard before pycolmap)

import splatforge  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("SPLATFORGE_DATASETS", ROOT.parent / "shared" / "datasets"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DATASETS / "beer_phone" / "sparse" / "0",
                    help="a COLMAP model with distorted cameras")
    ap.add_argument("--images", type=Path, default=DATASETS / "beer_phone" / "images")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=-1)
    args = ap.parse_args()

    import pycolmap
    import torch  # noqa: F401  (loaded before timing, as SfM loads it while mapping)

    from splatforge.scene.undistort import undistort_reconstruction

    probe = pycolmap.Reconstruction(str(args.model))
    cams = sorted({c.model_name for c in probe.cameras.values()})
    times: dict[str, list[float]] = {"pycolmap.undistort_images": [], "splatforge": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for side in times:
                out = Path(tmp) / side
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                if side == "splatforge":
                    undistort_reconstruction(pycolmap, pycolmap.Reconstruction(str(args.model)),
                                             args.images, out, args.threads)
                else:
                    pycolmap.undistort_images(out, args.model, args.images,
                                              output_type="COLMAP", num_threads=args.threads)
                times[side].append(time.perf_counter() - t0)
    print(f"\nUndistortion of {probe.num_reg_images()} images ({', '.join(cams)}) from "
          f"{args.model}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"pycolmap {pycolmap.__version__}, median of {args.repeat}\n")
    print("| undistorter | seconds (median) | runs |")
    print("|---|---|---|")
    for side, ts in times.items():
        print(f"| {side} | {statistics.median(ts):.2f} | {', '.join(f'{t:.2f}' for t in ts)} |")
    ratio = statistics.median(times["splatforge"]) / statistics.median(
        times["pycolmap.undistort_images"])
    print(f"\nsplatforge / pycolmap = {ratio:.2f}")


if __name__ == "__main__":
    main()
