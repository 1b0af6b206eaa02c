"""Extracting some photos' SIFT features again, finer, when the first extraction left them alone.

Large sets are extracted at SIFT's octave 0 (``sfm.sift_first_octave``; ``--sift-first-octave
0`` for any set): about a quarter of octave -1's pixels, and fewer features. A photo that then
shares no verified matches with any other (statue_of_liberty at octave 0: one of 135, 888
features) may still overlap the rest at octave -1, which doubles the image first and finds the
finer features (Lowe, IJCV 2004, section 3.3); extracted again, that photo joined the view graph
and all 135 were registered. :func:`replace_features` extracts such photos again with other
options and puts the new keypoints and descriptors in place of the old, deleting the photos'
matches, so that re-matching (``rematch_pairs``) matches them afresh.

The rows are copied with SQL into COLMAP's documented database tables (``keypoints``,
``descriptors``, ``matches``, ``two_view_geometries``; pair ids are
``min(id1, id2) * 2147483647 + max(id1, id2)``, COLMAP's ``ImagePairToPairId``), since
``pycolmap.Database`` can write descriptors only for an image that has none.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

#: COLMAP's ``kMaxNumImages``: the factor of the first image id in a pair id
PAIR_ID_FACTOR = 2147483647


def _columns(con: sqlite3.Connection, table: str) -> list[str]:
    """The columns of ``main.<table>`` (COLMAP's schema grows: descriptors gained ``type``)."""
    return [row[1] for row in con.execute(f"PRAGMA main.table_info({table})")]


def replace_features(pycolmap: Any, db_path: Path, image_dir: Path, names: list[str],
                     extraction: Any, reader: Any, work: Path) -> dict[str, int]:
    """Extract ``names`` again with ``extraction`` and replace their features in ``db_path``.

    The photos are extracted by COLMAP from ``image_dir`` (its own resize to
    ``extraction.max_image_size``, keypoints in full-size pixels, as the first extraction
    stores them) into a scratch database under ``work``; their keypoints and descriptors then
    replace those in ``db_path`` by image name, and every match and two-view geometry of a
    pair that involves one of them is deleted. Image ids, cameras and every other photo's
    rows stay as they are.

    Args:
        pycolmap: the imported module.
        db_path: the COLMAP database of the whole set.
        image_dir: the folder the names are relative to.
        names: the photos to extract again.
        extraction: ``pycolmap.FeatureExtractionOptions`` for them.
        reader: ``pycolmap.ImageReaderOptions`` (the camera model).
        work: a scratch folder.

    Returns:
        name -> number of keypoints now stored for it (names COLMAP could not read are
        left out and keep their old features).
    """
    if not names:
        return {}
    scratch = work / "extract_again"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    tmp_db = scratch / "database.db"
    pycolmap.extract_features(tmp_db, image_dir, image_names=list(names),
                              camera_mode=pycolmap.CameraMode.PER_IMAGE, reader_options=reader,
                              extraction_options=extraction)
    done: dict[str, int] = {}
    con = sqlite3.connect(db_path)
    try:
        con.execute("ATTACH DATABASE ? AS fresh", (str(tmp_db),))
        with con:
            for name in names:
                row = con.execute("SELECT image_id FROM main.images WHERE name = ?",
                                  (name,)).fetchone()
                new = con.execute("SELECT image_id FROM fresh.images WHERE name = ?",
                                  (name,)).fetchone()
                if row is None or new is None:
                    continue
                (iid,), (nid,) = row, new
                for table in ("keypoints", "descriptors"):
                    cols = [c for c in _columns(con, table) if c != "image_id"]
                    con.execute(f"DELETE FROM main.{table} WHERE image_id = ?", (iid,))
                    con.execute(f"INSERT INTO main.{table} (image_id, {', '.join(cols)}) "
                                f"SELECT ?, {', '.join(cols)} FROM fresh.{table} "
                                f"WHERE image_id = ?", (iid, nid))
                for table in ("matches", "two_view_geometries"):
                    con.execute(f"DELETE FROM main.{table} WHERE pair_id / ? = ? "
                                f"OR pair_id % ? = ?",
                                (PAIR_ID_FACTOR, iid, PAIR_ID_FACTOR, iid))
                done[name] = con.execute("SELECT rows FROM main.keypoints WHERE image_id = ?",
                                         (iid,)).fetchone()[0]
    finally:
        con.close()
    shutil.rmtree(scratch, ignore_errors=True)
    return done
