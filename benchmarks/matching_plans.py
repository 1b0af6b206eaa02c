"""Matching plans measured against exhaustive matching of the same set (issue 22).

Every pair of a set matched once, unguided (``--make-exhaustive``), gives the verified view
graph that any plan can at most find. Without matching again, this script then, for retrieval
(``retrieval_neighbors`` k) followed by 0, 1, 2 ... rounds of query expansion
(``sfm.retrieval.expansion_pairs``):

1. counts the pairs each plan matches and how many of the exhaustively verified pairs (15+
   inliers) it finds;
2. with ``--map``, keeps the plan's pairs of the exhaustive database, bridges separate groups
   and re-matches left-over photos as ``run_sfm`` does (their pairs taken from the exhaustive
   database, so unguided where the pipeline guides them), maps it with the pipeline's
   ``map_complete`` (guarded ladder) once per ``--seeds`` value, and compares the poses with
   ``--ref`` (``benchmarks/sfm.py``'s ``pose_errors``).

The database to start from is any ``run_sfm`` workspace's ``database.db`` (its features are
reused; its matches are not)::

    python benchmarks/matching_plans.py W/statue_of_liberty_after/database.db --work /w/plans \\
        --make-exhaustive
    python benchmarks/matching_plans.py W/statue_of_liberty_after/database.db --work /w/plans \\
        --rounds 0 1 2 --map --seeds 0 1 --ref ../shared/datasets/statue_of_liberty
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
from splatforge.sfm.mapping import map_complete
from splatforge.sfm.matching import match_pairs, plan_pairs, verification_options
from splatforge.sfm.retrieval import (EXPANSION_VERIFIED_FRACTION, expansion_pairs,
                                      retrieval_pairs)
from splatforge.sfm.viewgraph import ViewGraph

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sfm import pose_errors  # noqa: E402  (benchmarks/sfm.py)

Pair = tuple[str, str]


def make_exhaustive(src: Path, dst: Path, config: SfmConfig) -> dict:
    """Copy ``src`` to ``dst`` and match every pair there, unguided, seeded."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    with pycolmap.Database.open(dst) as db:
        db.clear_matches()
        db.clear_two_view_geometries()
    pairs = plan_pairs(pycolmap, "exhaustive", config, dst)
    t = time.monotonic()
    match_pairs(pycolmap, dst, pairs, _matching_options(pycolmap, config, False), dst.parent,
                None, verification_options(pycolmap, config))
    return {"pairs": len(pairs), "seconds": round(time.monotonic() - t, 1)}


def verified_pairs(db_path: Path, min_inliers: int = 15) -> dict[Pair, int]:
    """``(a, b)`` with ``a < b`` -> inliers, for pairs with at least ``min_inliers``."""
    graph = ViewGraph.from_database(pycolmap, db_path, min_inliers)
    return {(a, b): k for a, nb in graph.neighbors.items() for b, k in nb.items() if a < b}


def expanded_plans(retrieval: list[Pair], ranked: dict[str, list[str]],
                   truth: dict[Pair, int], rounds: int, per_image: int,
                   unbounded: bool) -> list[set[Pair]]:
    """The plan after 0 .. ``rounds`` expansion rounds, each verified as exhaustive did."""
    plan = set(retrieval)
    out = [set(plan)]
    names = sorted(ranked)
    for _ in range(rounds):
        nb: dict[str, dict[str, int]] = {n: {} for n in names}
        for a, b in plan:
            if (a, b) in truth:
                nb[a][b] = nb[b][a] = truth[(a, b)]
        plan |= set(expansion_pairs(nb, ranked, plan, per_image,
                                    None if unbounded else EXPANSION_VERIFIED_FRACTION))
        out.append(set(plan))
    return out


def map_plan(exhaustive: Path, plan: set[Pair], ranked: dict[str, list[str]], k: int,
             work: Path, seed: int, ref: Path | None) -> dict:
    """Map the plan's part of the exhaustive database as ``run_sfm`` would (see the module
    docstring); returns the rungs and the pose errors."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db = work / "database.db"
    shutil.copy2(exhaustive, db)
    plan = set(plan)
    with pycolmap.Database.open(db) as d:
        names = {im.image_id: im.name for im in d.read_all_images()}
        ids, _ = d.read_two_view_geometries()
        for pid in ids:
            x, y = pycolmap.pair_id_to_image_pair(pid)
            if tuple(sorted((names[x], names[y]))) not in plan:
                d.delete_two_view_geometry(x, y)
                d.delete_matches(x, y)

    def restore(pairs: list[Pair]) -> int:
        n = 0
        with pycolmap.Database.open(exhaustive) as src, pycolmap.Database.open(db) as dst:
            ids_ = {im.name: im.image_id for im in src.read_all_images()}
            for a, b in pairs:
                key = (min(a, b), max(a, b))
                if key in plan:
                    continue
                x, y = ids_[a], ids_[b]
                # a row still in the copy is the exhaustive one (pairs with no inliers are
                # not always deleted above, and are the same either way)
                if src.exists_matches(x, y) and not dst.exists_matches(x, y):
                    dst.write_matches(x, y, src.read_matches(x, y))
                if (src.exists_two_view_geometry(x, y)
                        and not dst.exists_two_view_geometry(x, y)):
                    dst.write_two_view_geometry(x, y, src.read_two_view_geometry(x, y))
                plan.add(key)
                n += 1
        return n

    g = ViewGraph.from_database(pycolmap, db)
    bridged = 0
    if len(g.components) > 1:  # as _bridge_groups
        main = set(g.largest)
        bridged = restore([p for p in _rematch_plan(set(g.names) - main, ranked, k, prefer=main)
                           if (p[0] in main) != (p[1] in main)])

    def rematch(left: set[str]) -> tuple[int, set[str]]:
        n = restore(_rematch_plan(left, ranked, 3 * k,
                                  prefer=set(ViewGraph.from_database(pycolmap, db).largest)))
        return n, set(ViewGraph.from_database(pycolmap, db).largest)

    config = SfmConfig(seed=seed)
    pycolmap.set_random_seed(seed)
    g = ViewGraph.from_database(pycolmap, db)
    t = time.monotonic()
    out = map_complete(pycolmap, config, db, work, None, len(g.names), set(g.largest),
                       all_names=set(g.names), rematch=rematch, first_model_only=True)
    row = {"seed": seed, "bridged_pairs": bridged, "registered": out.model.num_reg_images(),
           "map_s": round(time.monotonic() - t, 1),
           "focal_px": [round(c.mean_focal_length(), 1) for c in out.model.cameras.values()],
           "rungs": [(a["method"], a["thresholds"], a["registered"]) for a in out.attempts]}
    model = work / "sparse" / "0"
    model.mkdir(parents=True)
    out.model.write_binary(str(model))
    if ref is not None:
        row.update(pose_errors(work, ref))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("database", type=Path, help="a run_sfm workspace's database.db")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--make-exhaustive", action="store_true",
                    help="match every pair into <work>/exhaustive.db first")
    ap.add_argument("--rounds", type=int, nargs="*", default=[0, 1, 2],
                    help="expansion rounds to report (0 = retrieval alone)")
    ap.add_argument("--per-image", type=int, default=SfmConfig().retrieval_expansion_neighbors)
    ap.add_argument("--unbounded", action="store_true",
                    help="every photo expands (no verified_fraction rule)")
    ap.add_argument("--map", action="store_true", help="also map each plan")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--ref", type=Path, help="dataset with reference poses")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    pycolmap.logging.minloglevel = pycolmap.logging.ERROR
    config = SfmConfig()
    exhaustive = a.work / "exhaustive.db"
    rows: list[dict] = []
    if a.make_exhaustive:
        rows.append({"exhaustive": make_exhaustive(a.database, exhaustive, config)})
        print(json.dumps(rows[-1]), flush=True)
    truth = verified_pairs(exhaustive)
    k = config.retrieval_neighbors
    retrieval, ranked = retrieval_pairs(pycolmap, a.database, k, config.seed)
    plans = expanded_plans([tuple(p) for p in retrieval], ranked, truth, max(a.rounds),
                           a.per_image, a.unbounded)
    for r in a.rounds:
        plan = plans[r]
        found = sum(1 for p in plan if p in truth)
        row = {"rounds": r, "unbounded": a.unbounded, "planned": len(plan),
               "verified_found": found, "verified_exhaustive": len(truth),
               "recall": round(found / max(len(truth), 1), 3)}
        print(json.dumps(row), flush=True)
        if a.map:
            for seed in a.seeds:
                m = map_plan(exhaustive, plan, ranked, k, a.work / f"r{r}_s{seed}", seed, a.ref)
                print(json.dumps(m), flush=True)
                rows.append({**row, **m})
        else:
            rows.append(row)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
