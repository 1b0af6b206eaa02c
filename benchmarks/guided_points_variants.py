"""Variant workspaces of one SfM run that differ only in its guided-only two-view points (issue 22).

From a workspace written by ``splatforge sfm --no-drop-guided-two-view-points`` (``images/``,
``sparse/0``, ``database.db``), writes ``<out>/<case>_drop`` (every guided-only two-view point
left out, the default until the nineteenth round; the default is now ratio 2) and
``<out>/<case>_<R>`` for each ``--ratio R`` (only those whose depth disagrees with their
neighbours by more than R, :func:`splatforge.sfm.points.depth_disagreement`).
The poses are the same in every variant, so their held-out PSNR tells what the points alone do:
``--train-steps N --seeds S`` trains the kept workspace and each variant with the issue's short
CPU recipe (``benchmarks/sfm.py``'s ``train_psnr``: the preview preset at about 200 px, seeds
0..S-1) and prints the median; for a GPU, pack the variants with ``benchmarks/poses_psnr.py``::

    python benchmarks/guided_points_variants.py /w/fox_keep --case fox --ratio 1.1 2 --out /w \
        --train-steps 300 --seeds 3 --json /w/fox_variants.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import splatforge  # noqa: F401  (import-order guard before pycolmap)
import pycolmap

from splatforge.sfm.points import drop_guided_two_view_points

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sfm import machine, train_psnr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("keep", type=Path, help="workspace with the guided-only points kept")
    ap.add_argument("--case", required=True, help="name prefix of the variants")
    ap.add_argument("--ratio", type=float, nargs="*", default=[], help="depth ratios to try")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train-steps", type=int, default=0,
                    help="also train each variant this many CPU steps (0: write them only)")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds 0..S-1")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    a = ap.parse_args()
    db = a.keep / "database.db"
    rows = [{"variant": f"{a.case}_keep", "ws": a.keep,
             "points": pycolmap.Reconstruction(str(a.keep / "sparse" / "0")).num_points3D(),
             "left_out": 0}]
    for label, ratio in [("drop", None)] + [(f"{r:g}".replace(".", "p"), r) for r in a.ratio]:
        rec = pycolmap.Reconstruction(str(a.keep / "sparse" / "0"))  # drop changes it in place
        n = drop_guided_two_view_points(pycolmap, rec, db, ratio)
        dst = a.out / f"{a.case}_{label}"
        shutil.rmtree(dst, ignore_errors=True)
        (dst / "sparse" / "0").mkdir(parents=True)
        rec.write(str(dst / "sparse" / "0"))
        os.symlink((a.keep / "images").resolve(), dst / "images")
        rows.append({"variant": dst.name, "ws": dst, "points": rows[0]["points"] - n,
                     "left_out": n})
    for r in rows:
        ws = r.pop("ws")
        if a.train_steps:
            ps = [train_psnr(ws, a.train_steps, a.out / f"{r['variant']}_train", s)
                  for s in range(a.seeds)]
            r["psnr_seeds"] = [round(p, 3) for p in ps]
            r["psnr"] = round(statistics.median(ps), 3)
        seeds = " ".join(f"{p:.2f}" for p in r.get("psnr_seeds", []))
        print(f"{r['variant']:>16} {r['points']:>8} {r['left_out']:>9} {seeds:>20} "
              f"{r.get('psnr', float('nan')):>7.2f}", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"machine": machine(), "steps": a.train_steps,
                                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
