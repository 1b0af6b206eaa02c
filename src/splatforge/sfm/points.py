"""The sparse points written beside the poses, which training starts its Gaussians from.

Guided matching (``SfmConfig.guided_matching``) re-matches each verified pair along its
estimated epipolar geometry, which roughly doubles the inlier matches of a small set (beer_phone:
178k against 97k) and decides whether weak pairs link, so the poses gain from it (lego's median
rotation error 0.131-0.14 degrees with it, 0.157 without). The mapper then also triangulates
points from matches that only the epipolar search found: on beer_phone 2203 of its 6631 points
are seen in just two photos through such a match alone (plush_dog 848 of 6707, lego 1367 of
9917). Held-out PSNR after 7000 GPU steps from the same poses, three seeds each
(benchmarks/results/sfm_issue22_psnr10_h100.json): beer_phone 24.95 and 25.01 dB without them
against 23.30 with them (the baseline's SfM: 23.47); plush_dog 29.68 against 29.63; lego 35.35
against 35.52, four seeds, its photos' transparency kept (sfm_issue22_psnr11_h100.json; the
baseline's poses: 34.44). Dropping only the 850 of beer_phone's that lie beyond twice the
cameras' orbit radius gave 22.83 dB: the near ones are what lowers it.

:func:`drop_guided_two_view_points` removes exactly those points: seen in two photos, through a
correspondence that is not among the pair's descriptor matches (COLMAP's ``matches`` table,
written before verification). Points seen in three or more photos, and two-view points backed by
a descriptor match, stay; the poses do not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def drop_guided_two_view_points(pycolmap: Any, rec: Any, db_path: Path) -> int:
    """Delete from ``rec`` the 3D points seen in exactly two images whose one correspondence is
    not a descriptor match of that image pair (it came from guided matching alone).

    Args:
        pycolmap: the imported module.
        rec: a ``pycolmap.Reconstruction`` mapped from ``db_path`` (its image ids are the
            database's); changed in place.
        db_path: the COLMAP database holding the pairs' raw matches.

    Returns:
        the number of points deleted. With unguided matching every inlier is a descriptor match,
        so nothing is deleted.
    """
    pairs: dict[tuple[int, int], set[tuple[int, int]]] = {}
    doomed = []
    with pycolmap.Database.open(db_path) as db:
        for pid, pt in rec.points3D.items():
            if pt.track.length() != 2:
                continue
            a, b = pt.track.elements
            (i1, f1), (i2, f2) = sorted([(a.image_id, a.point2D_idx),
                                         (b.image_id, b.point2D_idx)])
            key = (i1, i2)
            if key not in pairs:
                m = db.read_matches(i1, i2) if db.exists_matches(i1, i2) else None
                pairs[key] = set() if m is None else {(int(x), int(y)) for x, y in m}
            if (f1, f2) not in pairs[key]:
                doomed.append(pid)
    for pid in doomed:
        rec.delete_point3D(pid)
    return len(doomed)
