"""Geometric verification's cost against its RANSAC trial cap, on real pairs of one database.

Takes the first ``--pairs`` image pairs that a finished SfM workspace's database matched (for
statue_of_liberty with the default retrieval matching: retrieval pairs, most of which do not
overlap), and matches them again in a scratch copy of the database once per setting, in the
pipeline's calls (``splatforge.sfm.matching.match_pairs``): descriptor matching alone
(``skip``, no verification), then verification with each ``--trials`` cap
(``TwoViewGeometryOptions.ransac.max_num_trials``; COLMAP's default is 10000). Per setting it
prints the seconds, the pairs verified (at least 15 inliers, COLMAP's ``min_num_inliers``) and
their inliers in all, so the cap's saving and what it costs in pairs and inliers are read side
by side. One process, all cores, RANSAC seeded.

Usage (repository root; WS a finished workspace, e.g. from ``benchmarks/sfm.py --work W``)::

    .venv/bin/python benchmarks/verification_trials.py WS/database.db --pairs 400 \\
        --trials 10000 2000 1000 500
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import splatforge  # noqa: F401  (import-order guard before pycolmap)
from splatforge.config import SfmConfig
from splatforge.sfm.matching import match_pairs, verification_options

def matched_pairs(db: Path, limit: int) -> list[tuple[str, str]]:
    """The first ``limit`` pairs with a row in the database's ``matches`` table, by name."""
    import pycolmap

    con = sqlite3.connect(db)
    names = dict(con.execute("SELECT image_id, name FROM images").fetchall())
    rows = con.execute("SELECT pair_id FROM matches ORDER BY rowid LIMIT ?", (limit,)).fetchall()
    con.close()
    return [tuple(names[i] for i in pycolmap.pair_id_to_image_pair(pid)) for (pid,) in rows]


def unmatched_copy(db: Path, work: Path) -> Path:
    """``work/db.db``: a copy of ``db`` with its matches and two-view geometries cleared."""
    import pycolmap

    copy = work / "db.db"
    for p in (copy, Path(f"{copy}-wal"), Path(f"{copy}-shm")):
        p.unlink(missing_ok=True)
    shutil.copy(db, copy)
    with pycolmap.Database.open(copy) as d:
        d.clear_matches()
        d.clear_two_view_geometries()
    return copy


def run(db: Path, pairs: list[tuple[str, str]], setting: str, work: Path) -> dict:
    """Match ``pairs`` in a copy of ``db`` with one setting (``skip`` or a trial cap)."""
    import pycolmap

    copy = unmatched_copy(db, work)
    mopts = pycolmap.FeatureMatchingOptions()
    verify = verification_options(pycolmap, SfmConfig())  # seeded, COLMAP's 10000 trials
    if setting == "skip":
        mopts.skip_geometric_verification = True
    else:
        verify.ransac.max_num_trials = int(setting)
    t0 = time.monotonic()
    match_pairs(pycolmap, copy, pairs, mopts, work, None, verify)  # the pipeline's calls
    seconds = time.monotonic() - t0
    return {"setting": setting, "seconds": round(seconds, 2), **verified(copy)}


def verified(db: Path) -> dict[str, int]:
    """The pairs ``db`` verified (at least 15 inliers) and their inliers in all."""
    con = sqlite3.connect(db)
    rows = [r for (r,) in con.execute(
        "SELECT rows FROM two_view_geometries WHERE config >= 2").fetchall() if r >= 15]
    con.close()
    return {"verified": len(rows), "inliers": sum(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", type=Path, help="a matched COLMAP database (not modified)")
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--trials", type=int, nargs="+", default=[10000, 2000, 1000, 500])
    ap.add_argument("--no-skip", action="store_true", help="leave out the unverified row")
    a = ap.parse_args()
    import pycolmap

    pycolmap.logging.minloglevel = pycolmap.logging.ERROR
    pairs = matched_pairs(a.db, a.pairs)
    settings = ([] if a.no_skip else ["skip"]) + [str(t) for t in a.trials]
    print(f"{len(pairs)} pairs of {a.db}")
    print("| max RANSAC trials | seconds | pairs verified | inliers |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for s in settings:
            r = run(a.db, pairs, s, Path(tmp))
            label = "none (descriptor matching only)" if s == "skip" else s
            print(f"| {label} | {r['seconds']} | {r['verified'] if s != 'skip' else ''} | "
                  f"{r['inliers'] if s != 'skip' else ''} |", flush=True)


if __name__ == "__main__":
    main()
