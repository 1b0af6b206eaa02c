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

:func:`drop_guided_two_view_points` removes those points: seen in two photos, through a
correspondence that is not among the pair's descriptor matches (COLMAP's ``matches`` table,
written before verification); all of them, or with a depth ratio (the pipeline's default, 2) only
those whose depth disagrees with their neighbours' (:func:`depth_disagreement`). Points seen in
three or more photos, and two-view points backed by a descriptor match, stay; the poses do not
change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: neighbours whose median depth a point's depth is compared with (:func:`depth_disagreement`)
NUM_DEPTH_NEIGHBORS = 8


def guided_two_view_point_ids(pycolmap: Any, rec: Any, db_path: Path) -> list[int]:
    """Ids of the 3D points of ``rec`` seen in exactly two images whose one correspondence is
    not a descriptor match of that image pair (it came from guided matching alone).

    Args:
        pycolmap: the imported module.
        rec: a ``pycolmap.Reconstruction`` mapped from ``db_path`` (its image ids are the
            database's).
        db_path: the COLMAP database holding the pairs' raw matches.

    Returns:
        the point ids, in ``rec.points3D`` order. With unguided matching every inlier is a
        descriptor match, so the list is empty.
    """
    pairs: dict[tuple[int, int], set[tuple[int, int]]] = {}
    ids = []
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
                ids.append(pid)
    return ids


def depth_disagreement(rec: Any, point_ids: list[int],
                       num_neighbors: int = NUM_DEPTH_NEIGHBORS) -> dict[int, float]:
    """How far each point's depth lies from the depth of the points seen around it.

    In every image that observes a point of ``point_ids``, the point's depth ``z`` (its
    z coordinate in that camera, world units) is compared with the median depth ``m`` of the
    ``num_neighbors`` points nearest to its keypoint in that image (pixels), taken from the
    image's other points (those not in ``point_ids``). The point's disagreement is the largest
    ``|ln(z / m)|`` over its images; a depth ratio ``r`` in both directions corresponds to
    ``ln(r)``. It is infinite where one of its images holds fewer than ``num_neighbors`` such
    points, or where a depth is not positive.

    A two-view point from a wrong correspondence along the epipolar line reprojects as well as
    a right one, so its reprojection error says nothing; its depth, which the wrong
    correspondence moves along the ray, does. Measured on beer_phone (71 photos): of the
    image observations of points seen in three or more photos, 94 % lie within 5 % of their
    8 neighbours' median depth; of its 2203 guided-only two-view points, 34 %.

    Args:
        rec: a ``pycolmap.Reconstruction``.
        point_ids: the points to score.
        num_neighbors: neighbours per observation.

    Returns:
        point id -> disagreement (natural log of a depth ratio, >= 0).
    """
    from scipy.spatial import cKDTree

    scored = set(point_ids)
    worst = dict.fromkeys(point_ids, -np.inf)  # -inf: not compared in any image yet
    for img in rec.images.values():
        if not img.has_pose:
            continue
        pose = img.cam_from_world()
        rot, trans = np.asarray(pose.rotation.matrix()), np.asarray(pose.translation)
        xy, depth, pids = [], [], []
        for p2 in img.points2D:
            if p2.has_point3D():
                pids.append(p2.point3D_id)
                xy.append(p2.xy)
                depth.append(float(rot[2] @ rec.points3D[p2.point3D_id].xyz + trans[2]))
        mine = np.fromiter((p in scored for p in pids), bool, len(pids))
        if not mine.any():
            continue
        others = ~mine
        xy_a, depth_a = np.asarray(xy), np.asarray(depth)
        z = depth_a[mine]
        if others.sum() < num_neighbors:
            dis = np.full(len(z), np.inf)
        else:
            _, idx = cKDTree(xy_a[others]).query(xy_a[mine], k=num_neighbors)
            med = np.median(depth_a[others][np.asarray(idx).reshape(-1, num_neighbors)], axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                dis = np.where((z > 0) & (med > 0), np.abs(np.log(z / med)), np.inf)
        for pid, d in zip(np.asarray(pids)[mine], dis):
            worst[int(pid)] = max(worst[int(pid)], float(d))
    return {pid: (v if v >= 0 else np.inf) for pid, v in worst.items()}


def drop_guided_two_view_points(pycolmap: Any, rec: Any, db_path: Path,
                                max_depth_ratio: float | None = None) -> int:
    """Delete from ``rec`` the guided-only two-view points (:func:`guided_two_view_point_ids`)
    whose depth disagrees with the points around them by more than ``max_depth_ratio``
    (:func:`depth_disagreement`), or all of them when ``max_depth_ratio`` is None.

    Args:
        pycolmap: the imported module.
        rec: a ``pycolmap.Reconstruction`` mapped from ``db_path``; changed in place.
        db_path: the COLMAP database holding the pairs' raw matches.
        max_depth_ratio: largest depth ratio (>= 1) to the neighbours' median depth kept.

    Returns:
        the number of points deleted.

    Raises:
        ValueError: ``max_depth_ratio`` below 1.
    """
    ids = guided_two_view_point_ids(pycolmap, rec, db_path)
    if max_depth_ratio is not None:
        if max_depth_ratio < 1.0:
            raise ValueError(f"max_depth_ratio must be at least 1, got {max_depth_ratio}")
        limit = float(np.log(max_depth_ratio))
        dis = depth_disagreement(rec, ids)
        ids = [pid for pid in ids if dis[pid] > limit]
    for pid in ids:
        rec.delete_point3D(pid)
    return len(ids)
