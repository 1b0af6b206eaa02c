"""Feature matching with a step count: pairs are planned first, then matched in calls.

pycolmap's ``match_exhaustive`` / ``match_sequential`` / ``match_spatial`` run for minutes on a
large set without a word. Here the same pair generators (``ExhaustivePairGenerator``,
``SequentialPairGenerator``, ``SpatialPairGenerator``; COLMAP
``src/colmap/feature/pairing.cc``) plan every pair up front, and the pairs are matched and
geometrically verified by ``pycolmap.match_image_pairs`` (COLMAP's imported-pairs matcher, the
same matcher and verification) a part at a time, so progress reads "pairs matched k of n" with
an ETA after each call.

Each call re-opens the database and rebuilds the descriptor index of every image it touches,
so calls are few and long: the first takes :data:`MIN_CHUNK` pairs, each later one about
:data:`CHUNK_SECONDS` at the rate measured so far (``benchmarks/matching_calls.py``; on
statue_of_liberty's 2628 retrieval pairs, 2 cores, one call took 153.7 s and calls of 128
pairs 222.4 s, with the same verified pairs and inliers). Progress is not read from the
database during a call: COLMAP's matcher does not tolerate another connection to its
database (measured: a reader polling every 5 ms aborted the matcher in
``FeatureMatcherCache::GetDescriptors``, and one polling every second lost a pair).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ..config import SfmConfig
from ..events import EventCallback, StageReporter

#: Pairs in the first match_image_pairs call (it measures the rate that sizes the next ones).
MIN_CHUNK = 128
#: Most pairs per call.
MAX_CHUNK = 2000
#: Seconds each call after the first is sized to last: the time between two progress updates,
#: and the longest wait for a cancel or an interrupt, which take effect between calls.
CHUNK_SECONDS = 30.0


def plan_pairs(pycolmap: Any, matching: str, config: SfmConfig, db_path: Path
               ) -> list[tuple[str, str]]:
    """The image pairs ``matching`` would match, by image name, in the generator's order.

    Args:
        pycolmap: the imported module (imported lazily by the caller, after numpy).
        matching: ``exhaustive`` | ``sequential`` | ``spatial`` (vocab_tree is not planned;
            retrieval is planned by :mod:`splatforge.sfm.retrieval`).
        config: overlap options for sequential matching.
        db_path: the COLMAP database with the images (and, for spatial, pose priors).

    Returns:
        ``[(name1, name2), ...]``, each unordered pair once.
    """
    with pycolmap.Database.open(db_path) as db:
        if matching == "exhaustive":
            gen = pycolmap.ExhaustivePairGenerator(pycolmap.ExhaustivePairingOptions(), db)
        elif matching == "sequential":
            opts = pycolmap.SequentialPairingOptions()
            opts.overlap = config.sequential_overlap
            opts.quadratic_overlap = config.quadratic_overlap
            gen = pycolmap.SequentialPairGenerator(opts, db)
        elif matching == "spatial":
            gen = pycolmap.SpatialPairGenerator(pycolmap.SpatialPairingOptions(), db)
        else:
            raise ValueError(f"no pair plan for matching {matching!r}")
        pairs = gen.all_pairs()
        names = {im.image_id: im.name for im in db.read_all_images()}
    seen: set[tuple[int, int]] = set()
    out = []
    for a, b in pairs:
        key = (min(a, b), max(a, b))
        if a != b and key not in seen:
            seen.add(key)
            out.append((names[a], names[b]))
    return out


def next_chunk_size(done: int, seconds: float) -> int:
    """Pairs for the next call after ``done`` pairs took ``seconds``: about
    :data:`CHUNK_SECONDS` at that rate, within [MIN_CHUNK, MAX_CHUNK]."""
    rate = done / max(seconds, 1e-3)
    return max(MIN_CHUNK, min(MAX_CHUNK, math.floor(rate * CHUNK_SECONDS)))


#: RANSAC trials per pair and model in verification after retrieval matching (COLMAP: 10000).
RETRIEVAL_MAX_TRIALS = 2000


def verification_max_trials(config: SfmConfig, matching: str) -> int | None:
    """``config.verification_max_trials``, or its default for ``matching``:
    :data:`RETRIEVAL_MAX_TRIALS` for retrieval, None (COLMAP's 10000) otherwise.

    Why a cap pays: RANSAC stops once its confidence (0.999) is reached, after about
    ``log(0.001) / log(1 - w^s)`` trials for an inlier ratio ``w`` and ``s`` points per
    sample (Fischler and Bolles, CACM 1981; COLMAP multiplies it by 3), so a pair that
    overlaps stops early and one that does not runs to the cap, three times over (essential,
    fundamental and homography matrix). Verification was 70 % of the matching time on
    statue_of_liberty's retrieval pairs (400 pairs: 21.3 s, 5.8 s without it).
    """
    if config.verification_max_trials is not None:
        return config.verification_max_trials
    return RETRIEVAL_MAX_TRIALS if matching == "retrieval" else None


def verification_options(pycolmap: Any, config: SfmConfig, min_inliers: int | None = None,
                         matching: str = "") -> Any:
    """COLMAP's two-view geometry options with RANSAC seeded by ``config.seed``, and at most
    :func:`verification_max_trials` trials for ``matching``.

    Unseeded (COLMAP's default ``random_seed=-1``), verification keeps a different set of
    pairs in every run, and the mapper then starts from a different pair: on the shipped
    sample this alone gave 13 to 80 of 84 images registered over 12 identical runs.
    """
    v = pycolmap.TwoViewGeometryOptions()
    v.ransac.random_seed = config.seed
    trials = verification_max_trials(config, matching)
    if trials is not None:
        v.ransac.max_num_trials = trials
    if min_inliers is not None:
        v.min_num_inliers = min_inliers
    return v


def rematch_pairs(pycolmap: Any, db_path: Path, pairs: list[tuple[str, str]], options: Any,
                  verification: Any, work: Path, events: EventCallback | None) -> int:
    """Match those of ``pairs`` that were never matched (pairs already in the database are
    kept as they are: deleting and re-matching them was not repeatable from run to run).

    Returns:
        the number of pairs matched.
    """
    with pycolmap.Database.open(db_path) as db:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        new = [(a, b) for a, b in pairs if not db.exists_matches(ids[a], ids[b])]
    if new:
        match_pairs(pycolmap, db_path, new, options, work, events, verification,
                    label="match left-over images")
    return len(new)


def match_pairs(pycolmap: Any, db_path: Path, pairs: list[tuple[str, str]],
                options: Any, work: Path, events: EventCallback | None,
                verification: Any | None = None, label: str = "match image pairs") -> None:
    """Match and verify ``pairs``, reporting ``label`` k of n after each call.

    Pairs are matched in the planned order in calls of :data:`MIN_CHUNK`, then about
    :data:`CHUNK_SECONDS`, pairs (:func:`next_chunk_size`). The split was not seen to change
    which pairs verify (statue_of_liberty: the same 882 pairs and inliers in one call, in 6
    and in 21; tests/test_sfm_complete.py checks it on sample pairs).

    Args:
        pycolmap: the imported module.
        db_path: the COLMAP database (features extracted).
        pairs: ``(name1, name2)`` pairs (from :func:`plan_pairs`).
        options: ``pycolmap.FeatureMatchingOptions``.
        work: a folder for the call's pair list (``pairs.txt``).
        events: progress callback (stage ``sfm``).
        verification: ``pycolmap.TwoViewGeometryOptions`` (seeded: see
            :func:`verification_options`); COLMAP's defaults when None.
        label: the progress label.
    """
    rep = StageReporter("sfm", events)
    n = len(pairs)
    rep.start_steps(label, n)
    kw = {} if verification is None else {"verification_options": verification}
    lst = work / "pairs.txt"
    done, size, t0 = 0, MIN_CHUNK, time.monotonic()
    while done < n:
        chunk = pairs[done:done + size]
        lst.write_text("".join(f"{a} {b}\n" for a, b in chunk), encoding="utf-8")
        popts = pycolmap.ImportedPairingOptions()
        popts.match_list_path = lst
        popts.block_size = len(chunk)  # the loop runs only while pairs remain
        pycolmap.match_image_pairs(db_path, matching_options=options, pairing_options=popts,
                                   **kw)
        done += len(chunk)
        rep.step(done)
        size = next_chunk_size(done, time.monotonic() - t0)
    lst.unlink(missing_ok=True)
