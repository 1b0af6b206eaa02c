"""Variant workspaces of one SfM run that differ only in its guided-only two-view points (issue 22).

From a workspace written by ``splatforge sfm --no-drop-guided-two-view-points`` (``images/``,
``sparse/0``, ``database.db``), writes ``<out>/<case>_drop`` (every guided-only two-view point
left out, today's default) and ``<out>/<case>_<R>`` for each ``--ratio R`` (only those whose depth
disagrees with their neighbours by more than R, :func:`splatforge.sfm.points.depth_disagreement`).
The poses are the same in every variant, so their held-out PSNR (``benchmarks/poses_psnr.py``)
tells what the points alone do::

    python benchmarks/guided_points_variants.py /w/fox_keep --case fox --ratio 1.1 --out /w
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import splatforge  # noqa: F401  (import-order guard before pycolmap)
import pycolmap

from splatforge.sfm.points import drop_guided_two_view_points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("keep", type=Path, help="workspace with the guided-only points kept")
    ap.add_argument("--case", required=True, help="name prefix of the variants")
    ap.add_argument("--ratio", type=float, nargs="*", default=[], help="depth ratios to try")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    db = a.keep / "database.db"
    print(f"{'variant':>14} {'points':>8} {'left out':>9}")
    for label, ratio in [("drop", None)] + [(f"{r:g}".replace(".", "p"), r) for r in a.ratio]:
        rec = pycolmap.Reconstruction(str(a.keep / "sparse" / "0"))
        n0 = rec.num_points3D()
        n = drop_guided_two_view_points(pycolmap, rec, db, ratio)
        dst = a.out / f"{a.case}_{label}"
        shutil.rmtree(dst, ignore_errors=True)
        (dst / "sparse" / "0").mkdir(parents=True)
        rec.write(str(dst / "sparse" / "0"))
        os.symlink((a.keep / "images").resolve(), dst / "images")
        print(f"{dst.name:>14} {n0 - n:>8} {n:>9}")


if __name__ == "__main__":
    main()
