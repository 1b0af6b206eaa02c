"""Mapping variants on one matched database: the time and the poses of each (issue 22).

Runs ``run_sfm`` once with the given options, keeping a copy of the database as it was when
mapping began (``<work>/matched.db``), then maps that same database again for each
``--variant``, which overrides options of COLMAP's ``IncrementalPipelineOptions`` (every
incremental rung: incremental, extend, rematch+extend, relaxed), or ``first_model_only``
(``map_complete``'s argument). Extraction and matching are
not repeated, so the mapping seconds compare directly, and since every variant starts from the
same matches, the differences in poses are the mapping's alone. With ``--ref`` (a COLMAP model
or a workspace, e.g. the exhaustive before side of ``benchmarks/sfm.py``) each row also gives
the median rotation and camera-centre errors against it after a similarity alignment::

    python benchmarks/mapping_variants.py ../shared/datasets/statue_of_liberty/images \
        --work /w/mv --ref /w/base/statue_exhaustive_before \
        --variant refine2:ba_global_max_refinements=2 ratio125:ba_global_frames_ratio=1.25

Prints one row per variant (``default`` is the first run's own mapping) and a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import splatforge  # noqa: F401  (import-order guard before pycolmap)
import pycolmap

import splatforge.sfm as sfm_pkg
from splatforge.config import SfmConfig
from splatforge.sfm import mapping as mapping_mod
from splatforge.sfm import run_sfm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sfm import parse_options, pose_errors  # noqa: E402  (benchmarks/sfm.py)

#: variant keys that are map_complete's arguments rather than COLMAP options
MAP_ARGS = {"first_model_only"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("media", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--set", nargs="*", default=[], help="SfmConfig KEY=VALUE (every run)")
    ap.add_argument("--variant", nargs="*", default=[],
                    help="NAME:opt=value,opt=value (IncrementalPipelineOptions; mapper.X for "
                         "its mapper options)")
    ap.add_argument("--ref", type=Path, help="reference model or workspace for pose errors")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--reuse", action="store_true",
                    help="keep an earlier run's <work>/default and matched.db (variants only)")
    a = ap.parse_args()
    config = SfmConfig(**parse_options(a.set))
    a.work.mkdir(parents=True, exist_ok=True)
    matched_db = a.work / "matched.db"
    overrides: dict = {}  # COLMAP IncrementalPipelineOptions of the current variant
    map_args: dict = {}  # map_complete arguments of the current variant

    orig_map_complete = mapping_mod.map_complete
    orig_options = mapping_mod._incremental_options

    def snapshot_then_map(pc, cfg, db_path, *args, **kw):
        kw.update(map_args)
        if not matched_db.exists():
            with pycolmap.Database.open(db_path):
                pass  # closes cleanly: the WAL is folded into the file
            shutil.copy2(db_path, matched_db)
        return orig_map_complete(pc, cfg, db_path, *args, **kw)

    def options_with_overrides(*args, **kw):
        opts = orig_options(*args, **kw)
        for k, v in overrides.items():
            obj = opts
            *path, last = k.split(".")
            for p in path:
                obj = getattr(obj, p)
            setattr(obj, last, v)
        return opts

    sfm_pkg.map_complete = snapshot_then_map
    mapping_mod._incremental_options = options_with_overrides

    rows = []
    variants = [("default", {})]
    for spec in a.variant:
        name, _, opts = spec.partition(":")
        variants.append((name, parse_options([o for o in opts.split(",") if o])))
    base = a.work / "default"
    for name, ov in variants:
        overrides.clear()
        overrides.update({k: v for k, v in ov.items() if k not in MAP_ARGS})
        map_args.clear()
        map_args.update({k: v for k, v in ov.items() if k in MAP_ARGS})
        ws = a.work / name
        if name == "default" and a.reuse and matched_db.exists():
            t0 = time.monotonic()
            r = run_sfm(config, a.media, ws)  # sfm.json is there: nothing runs again
        elif name == "default":
            matched_db.unlink(missing_ok=True)
            t0 = time.monotonic()
            r = run_sfm(config, a.media, ws, force=True)
        else:
            shutil.rmtree(ws, ignore_errors=True)
            ws.mkdir(parents=True)
            for item in ("input", "ingest.json"):
                src = base / item
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, ws / item)
            work = ws / ".sfm_work"
            work.mkdir()
            shutil.copy2(base / ".sfm_work" / "state.json", work / "state.json")
            shutil.copy2(matched_db, work / "database.db")
            t0 = time.monotonic()
            r = run_sfm(config, ws / "input", ws)
        row = {"variant": name, **ov, "registered": r.num_registered, "images": r.num_images,
               "points": r.num_points, "reproj_px": r.mean_reprojection_error,
               "method": r.method, "map_s": r.seconds.get("map"),
               "total_s": round(time.monotonic() - t0, 1),
               "attempts": [(x["method"], x["registered"], x["seconds"]) for x in r.attempts]}
        if a.ref:
            row.update(pose_errors(ws, a.ref))
        if name != "default":
            row["vs_default"] = pose_errors(ws, base)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1))
    print("\n| variant | registered | points | px | map s | rot err median / p90 deg | "
          "off > 10 deg | centre err % | rot vs default deg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['registered']}/{r['images']} | {r['points']} | "
              f"{r['reproj_px']} | {r['map_s']} | {r.get('rot_err_deg', '')} / "
              f"{r.get('rot_err_p90_deg', '')} | {r.get('off_10deg', '')} | "
              f"{r.get('centre_err_pct', '')} | "
              f"{r.get('vs_default', {}).get('rot_err_deg', '')} |")

if __name__ == "__main__":
    main()
