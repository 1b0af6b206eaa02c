"""SIFT on Pillow-downscaled copies (splatforge.sfm.downscale) against COLMAP's own resize.

COLMAP's extractor downscales images larger than ``max_image_size`` itself and rescales the
keypoints to full-size pixels; the Pillow path must leave the same database behind: the same
camera, and keypoints at the same full-size positions, within what two resampling filters can
differ by.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from splatforge.sfm.downscale import downscale_images, restore_full_size, scaled_size

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

pytestmark = pytest.mark.slow


def test_scaled_size_truncates_as_colmap():
    assert scaled_size(720, 1280, 1024) == (576, 1024)
    assert scaled_size(2832, 2128, 1024) == (1024, 769)  # 2128 * 1024 / 2832 = 769.4
    assert scaled_size(375, 250, 1024) == (375, 250)


def _extract(pycolmap, db: Path, image_dir: Path, names: list[str], max_size: int) -> None:
    with pycolmap.Database.open(db):
        pass
    pycolmap.import_images(db, image_dir, camera_mode=pycolmap.CameraMode.SINGLE,
                           image_names=names)
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size = max_size
    ext.num_threads = 2
    ext.use_gpu = False
    pycolmap.extract_features(db, image_dir, image_names=names,
                              camera_mode=pycolmap.CameraMode.SINGLE, extraction_options=ext)


def test_downscaled_sift_gives_colmaps_database(tmp_path):
    import pycolmap

    src = DATASETS / "beer_phone" / "images"
    names = sorted(p.name for p in src.iterdir())[:40:10]  # 4 frames of 720x1280
    size = 640

    colmap_db = tmp_path / "colmap.db"
    _extract(pycolmap, colmap_db, src, names, size)  # COLMAP resizes the originals

    small = tmp_path / "small"
    full = downscale_images(src, names, size, small)
    assert full == {n: (720, 1280) for n in names}
    ours_db = tmp_path / "ours.db"
    _extract(pycolmap, ours_db, small, names, size)
    restore_full_size(pycolmap, ours_db, full)

    with pycolmap.Database.open(colmap_db) as a, pycolmap.Database.open(ours_db) as b:
        (ca,), (cb,) = a.read_all_cameras(), b.read_all_cameras()
        assert (cb.width, cb.height) == (ca.width, ca.height) == (720, 1280)
        assert cb.model == ca.model
        np.testing.assert_allclose(cb.params, ca.params, rtol=1e-9)
        for name in names:
            ka = a.read_keypoints(a.read_image_with_name(name).image_id).astype(np.float64)
            kb = b.read_keypoints(b.read_image_with_name(name).image_id).astype(np.float64)
            # about as many features, in full-size pixels (beyond the 640 px copy)
            assert 0.8 < len(kb) / len(ka) < 1.25, (name, len(ka), len(kb))
            assert kb[:, 1].max() > size
            # most keypoints at the same full-size position (within 1 px)
            d = np.linalg.norm(kb[:, None, :2] - ka[None, :, :2], axis=2).min(axis=1)
            same = d < 1.0
            assert same.mean() > 0.6, (name, same.mean())
            # and at the same scale: the affine shapes were rescaled too
            j = np.linalg.norm(kb[:, None, :2] - ka[None, :, :2], axis=2).argmin(axis=1)
            sa = np.hypot(ka[j[same], 2], ka[j[same], 4])
            sb = np.hypot(kb[same, 2], kb[same, 4])
            assert np.median(np.abs(np.log(sb / sa))) < 0.1
