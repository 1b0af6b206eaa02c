"""A guarded remedy ladder on one matched database: pose accuracy after each rung (issue 22).

The fifteenth round's ladder grew the first model with relaxed thresholds (3 inliers
suffice), and on statue_of_liberty about 30 of the 135 photos it posed that way lay more than
10 degrees from the dataset's own poses. This script tried the other order on a database
matched by ``benchmarks/mapping_variants.py`` (its ``matched.db``); since the sixteenth round
``map_complete`` follows that order on retrieval sets (its guarded ladder), so this script is
the record of the experiment, with several first models where the pipeline keeps the first:

1. ``first``: COLMAP's incremental mapper with its default thresholds, several models; the
   largest is kept;
2. ``rematch``: every photo left out is matched (guided) with its ``--per-image`` most
   similar photos, those of the kept model first;
3. ``default_extension``: the mapper continues from the kept model with its *default*
   thresholds;
4. ``relaxed_extension``: then with the relaxed ones (:data:`RELAXED_MAPPER`).

Each rung's model is written to ``<work>/<rung>/sparse/0`` and compared with ``--ref`` (a
dataset with reference poses) by ``benchmarks/sfm.py``'s ``pose_errors``::

    python benchmarks/guarded_ladder.py /w/mv/matched.db \\
        --ref ../shared/datasets/statue_of_liberty --work /w/guarded
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

from splatforge.config import SfmConfig
from splatforge.sfm import _matching_options, _rematch_plan
from splatforge.sfm.mapping import registered_names, run_mapper
from splatforge.sfm.matching import rematch_pairs, verification_options
from splatforge.sfm.retrieval import retrieval_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sfm import pose_errors  # noqa: E402  (benchmarks/sfm.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("database", type=Path, help="a matched COLMAP database (copied, not changed)")
    ap.add_argument("--ref", type=Path, required=True, help="dataset with reference poses")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--per-image", type=int, default=45,
                    help="neighbours each left-over photo is re-matched with")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    pycolmap.logging.minloglevel = pycolmap.logging.ERROR
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    db = a.work / "database.db"
    shutil.copy2(a.database, db)
    config = SfmConfig()
    pycolmap.set_random_seed(config.seed)
    with pycolmap.Database.open(db) as d:
        num_images = d.num_images()
    rows = []

    def keep(recs: dict, rung: str, seconds: float, **extra) -> Path:
        rec = max(recs.values(), key=lambda r: r.num_reg_images())
        out = a.work / rung / "sparse" / "0"
        out.mkdir(parents=True, exist_ok=True)
        rec.write_binary(str(out))
        row = {"rung": rung, "registered": rec.num_reg_images(), "seconds": round(seconds, 1),
               "focal_px": [round(c.mean_focal_length(), 1) for c in rec.cameras.values()],
               **extra, **pose_errors(a.work / rung, a.ref)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return out

    t = time.monotonic()
    recs = run_mapper(pycolmap, config, db, a.work / "m_first", None, num_images, "incremental")
    first = keep(recs, "first", time.monotonic() - t)
    model = pycolmap.Reconstruction(str(first))

    t = time.monotonic()
    _, ranked = retrieval_pairs(pycolmap, db, config.retrieval_neighbors, config.seed)
    posed = registered_names(model)
    left = set(ranked) - posed
    n = rematch_pairs(pycolmap, db, _rematch_plan(left, ranked, a.per_image, prefer=posed),
                      _matching_options(pycolmap, config, True),
                      verification_options(pycolmap, config), a.work, None)
    rows.append({"rung": "rematch", "photos": len(left), "pairs": n,
                 "seconds": round(time.monotonic() - t, 1)})
    print(json.dumps(rows[-1]), flush=True)

    t = time.monotonic()
    recs = run_mapper(pycolmap, config, db, a.work / "m_default", None, num_images,
                      "incremental", input_path=first)
    ext = keep(recs, "default_extension", time.monotonic() - t)

    t = time.monotonic()
    recs = run_mapper(pycolmap, config, db, a.work / "m_relaxed", None, num_images, "relaxed",
                      input_path=ext)
    keep(recs, "relaxed_extension", time.monotonic() - t)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
