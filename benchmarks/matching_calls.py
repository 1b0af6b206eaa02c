"""Matching time against the number of ``match_image_pairs`` calls, on real pairs of one
database.

Each call re-opens the database and rebuilds every image's descriptor index. The pairs of one
matching step were once matched in calls of 128 (about 100 progress updates) and are now
matched in calls of about CHUNK_SECONDS each (``splatforge.sfm.matching.match_pairs``). This
script takes the first ``--pairs`` image pairs a finished SfM workspace's database matched
(for statue_of_liberty with the default retrieval matching: its retrieval pairs) and matches
them again in a scratch copy of the database, once per setting and ``--repeat`` times in
turn:

* ``calls of 128``: the earlier split (MIN_CHUNK = MAX_CHUNK = 128);
* ``default``: the pipeline's split (first call 128 pairs, then about CHUNK_SECONDS each).

It prints, per setting, the median seconds, the calls, the progress updates and the verified
pairs and inliers (which must agree between the settings). Retrieval's verification cap
(2000 RANSAC trials) is used, as the pipeline uses it for these pairs. One process, all cores.

Usage (repository root; WS a finished workspace, e.g. from ``benchmarks/sfm.py --work W``)::

    .venv/bin/python benchmarks/matching_calls.py WS/database.db --pairs 3000 --repeat 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import splatforge  # noqa: F401  (import-order guard before pycolmap)
from splatforge.config import SfmConfig
from splatforge.sfm import matching

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verification_trials import matched_pairs, unmatched_copy, verified  # noqa: E402


def run(db: Path, pairs: list[tuple[str, str]], setting: str, work: Path) -> dict:
    """Match ``pairs`` in a copy of ``db`` with one setting."""
    import pycolmap

    copy = unmatched_copy(db, work)
    saved = matching.MIN_CHUNK, matching.MAX_CHUNK
    calls = []
    real = pycolmap.match_image_pairs

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    events: list = []
    try:
        if setting == "calls of 128":
            matching.MIN_CHUNK = matching.MAX_CHUNK = 128
        pycolmap.match_image_pairs = counted
        verify = matching.verification_options(pycolmap, SfmConfig(), matching="retrieval")
        t0 = time.monotonic()
        matching.match_pairs(pycolmap, copy, pairs, pycolmap.FeatureMatchingOptions(), work,
                             events.append, verify)
        seconds = time.monotonic() - t0
    finally:
        matching.MIN_CHUNK, matching.MAX_CHUNK = saved
        pycolmap.match_image_pairs = real
    return {"seconds": seconds, "calls": len(calls),
            "updates": sum(1 for e in events if e.kind == "progress") - 1, **verified(copy)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", type=Path, help="a matched COLMAP database (not modified)")
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    import pycolmap

    pycolmap.logging.minloglevel = pycolmap.logging.ERROR
    pairs = matched_pairs(a.db, a.pairs)
    settings = ["calls of 128", "default"]
    out: dict[str, list[dict]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeat):
            for s in settings:
                out[s].append(run(a.db, pairs, s, Path(tmp)))
    base = statistics.median(r["seconds"] for r in out[settings[0]])
    print(f"{len(pairs)} pairs of {a.db}, {a.repeat} run(s) each, medians\n")
    print("| split | seconds | / calls of 128 | calls | progress updates | verified | inliers |")
    print("|---|---|---|---|---|---|---|")
    for s in settings:
        rs = out[s]
        sec = statistics.median(r["seconds"] for r in rs)
        print(f"| {s} | {sec:.1f} | {sec / base:.3f} | {rs[0]['calls']} | {rs[0]['updates']} "
              f"| {rs[0]['verified']} | {rs[0]['inliers']} |")


if __name__ == "__main__":
    main()
