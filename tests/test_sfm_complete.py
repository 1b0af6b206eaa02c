"""SfM that poses every photo it can, the same way every run, and says why when it cannot.

On the shipped sample (84 photos at 375x250) with the preview preset's SfM options, the
earlier SfM registered between 13 and 80 photos over 12 identical runs. Here: three runs, each
must pose at least 82 of 84, and two runs must agree on the registered set and on every
rotation within 0.01 degrees.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from splatforge.config import SceneConfig, SfmConfig
from splatforge.errors import InputError, SfmError
from splatforge.presets import PRESETS
from splatforge.sfm import read_sfm_json, run_sfm

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "plush_dog" / "images"
DATASETS = ROOT.parent / "shared" / "datasets"
PREVIEW_SFM = PRESETS["preview"].sfm.model_dump(exclude_unset=True)

pytestmark = pytest.mark.slow


def _rotations(ws: Path) -> dict[str, np.ndarray]:
    import pycolmap

    rec = pycolmap.Reconstruction(str(ws / "sparse" / "0"))
    return {im.name: np.asarray(im.cam_from_world().rotation.matrix())
            for im in rec.images.values() if im.has_pose}


def _angle_deg(r1: np.ndarray, r2: np.ndarray) -> float:
    c = (np.trace(r1.T @ r2) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


@pytest.fixture(scope="module")
def sample_runs(tmp_path_factory, sample_recon):
    """The shipped sample through SfM three times with the preview preset's options: two
    direct ``run_sfm`` calls (the first two, which the tests compare), then the SfM stage of
    conftest's ``sample_recon`` (shared with test_pipeline): the same photos byte for byte
    (ingest copies JPEGs unchanged) and the same options, all with one extraction/matching
    thread (the count at which runs are identical; SfmConfig.num_threads)."""
    runs = []
    for i in range(2):  # one thread: the count at which every run is the same (config.py)
        ws = tmp_path_factory.mktemp(f"sample{i}")
        runs.append((ws, run_sfm(SfmConfig(**PREVIEW_SFM, num_threads=1), SAMPLE, ws)))
    _, _, out = sample_recon
    shared = out / "workspace"
    assert json.loads((out / "model" / "config.json").read_text())["sfm"] == \
        SfmConfig(**PREVIEW_SFM, num_threads=1).model_dump(mode="json")
    assert {p.name: p.read_bytes() for p in (shared / "input").iterdir()} == \
        {p.name: p.read_bytes() for p in SAMPLE.iterdir()}
    runs.append((shared, read_sfm_json(shared)))
    return runs


def test_sample_registers_at_least_82_of_84_in_every_run(sample_runs):
    for ws, res in sample_runs:
        assert res.num_images == 84
        assert res.num_registered >= 82, res.left_out
        assert res.mean_reprojection_error < 1.5
        # every image of the largest view-graph component is posed
        assert res.num_registered >= res.poseable


def test_same_options_give_the_same_poses(sample_runs):
    (ws1, r1), (ws2, r2) = sample_runs[0], sample_runs[1]
    assert set(r1.unregistered) == set(r2.unregistered)
    rot1, rot2 = _rotations(ws1), _rotations(ws2)
    assert rot1.keys() == rot2.keys()
    # poses are only defined up to a similarity: compare relative rotations to one image
    ref = sorted(rot1)[0]
    worst = max(_angle_deg(rot1[n] @ rot1[ref].T, rot2[n] @ rot2[ref].T) for n in rot1)
    assert worst < 0.01, worst


def test_no_point_is_kept_beyond_the_filter_reprojection_error(sample_runs):
    """SfmConfig.filter_max_reproj_error (2 px by default, COLMAP's mapper uses 4) reaches
    the mapper: no point's mean reprojection error exceeds it (measured on the sample with
    4 px: 81 of 2170 points above 2 px)."""
    import pycolmap

    limit = SfmConfig().filter_max_reproj_error
    assert limit == 2.0
    for ws, _ in sample_runs:
        rec = pycolmap.Reconstruction(str(ws / "sparse" / "0"))
        errors = [p.error for p in rec.points3D.values()]
        assert len(errors) > 1000
        assert max(errors) <= limit + 1e-6, max(errors)


def test_sfm_json_records_the_attempts_and_the_view_graph(sample_runs):
    ws, res = sample_runs[0]
    data = json.loads((ws / "sfm.json").read_text())
    assert data["poseable"] == res.poseable >= 82
    assert sum(data["view_graph"]["component_sizes"]) == 84
    kept = [a for a in data["attempts"] if a["kept"]]
    assert len(kept) == 1 and kept[0]["method"] == data["method"]
    assert kept[0]["registered"] == data["num_registered"]
    assert data["matching"] == "exhaustive"  # 84 photos: up to exhaustive_max_images
    # a dense (exhaustive) view graph: the first rung may start several models
    assert data["attempts"][0]["multiple_models"] is True
    assert data["peak_threshold"] < 0.005  # small photos get the lower SIFT threshold


@pytest.fixture(scope="module")
def odd_set(tmp_path_factory):
    """24 sample photos, an unrelated photo (a castle), a heavily blurred photo and a photo of
    another size (another camera)."""
    src = tmp_path_factory.mktemp("odd") / "photos"
    src.mkdir()
    photos = sorted(SAMPLE.iterdir())
    for p in photos[:24]:
        shutil.copy(p, src / p.name)
    castle = Image.open(DATASETS / "sceaux_castle" / "images" / "100_7100.JPG")
    castle.resize((375, 250)).save(src / "zz_castle.jpg", quality=92)  # the sample's size
    Image.open(photos[30]).filter(ImageFilter.GaussianBlur(12)).save(src / "zz_blurred.jpg")
    Image.open(photos[40]).resize((300, 200)).save(src / "zz_smaller.jpg")  # another camera
    return src


def test_every_photo_left_out_gets_a_reason(odd_set, tmp_path):
    res = run_sfm(SfmConfig(**PREVIEW_SFM), odd_set, tmp_path / "ws")
    reasons = {d["image"]: d for d in res.left_out}
    assert set(reasons) == set(res.unregistered)
    assert {"zz_castle.jpg", "zz_blurred.jpg", "zz_smaller.jpg"} <= set(reasons)
    assert reasons["zz_blurred.jpg"]["reason"] == "few_features"
    assert "blurred" in reasons["zz_blurred.jpg"]["message"]
    assert reasons["zz_castle.jpg"]["reason"] in ("no_overlap", "separate_group")
    assert reasons["zz_castle.jpg"]["verified_neighbors"] <= 1
    assert reasons["zz_smaller.jpg"]["reason"] == "not_read"
    assert "300x200" in reasons["zz_smaller.jpg"]["message"]
    assert res.num_registered >= 22
    data = json.loads((tmp_path / "ws" / "sfm.json").read_text())
    assert {d["image"] for d in data["left_out"]} == set(reasons)


def test_cli_summary_prints_the_reasons(odd_set, tmp_path):
    out = tmp_path / "ws"
    cmd = [sys.executable, "-m", "splatforge", "sfm", str(odd_set), "-o", str(out),
           "--max-image-size", "800", "--max-num-features", "4096"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "not posed: zz_blurred.jpg: only" in p.stdout
    assert "not posed: zz_castle.jpg:" in p.stdout


def _mostly_unrelated(dst: Path) -> Path:
    """5 sample photos and 8 photos of other subjects: most cannot be posed together."""
    dst.mkdir(parents=True)
    for p in sorted(SAMPLE.iterdir())[:5]:
        shutil.copy(p, dst / p.name)
    others = (sorted((DATASETS / "sceaux_castle" / "images").iterdir())[:2]
              + sorted((DATASETS / "fox" / "images").iterdir())[:2]
              + sorted((DATASETS / "statue_of_liberty" / "images").iterdir())[:2]
              + sorted((DATASETS / "beer_phone" / "images").iterdir())[:2])
    for i, p in enumerate(others):
        # the sample's size, so that they are read as the same camera and fail on overlap
        Image.open(p).convert("RGB").resize((375, 250)).save(dst / f"other_{i}.jpg")
    return dst


def test_sfm_refuses_a_set_most_of_which_cannot_be_posed(tmp_path):
    src = _mostly_unrelated(tmp_path / "photos")
    ws = tmp_path / "ws"
    # an earlier finished workspace is left as it was
    ws.mkdir()
    (ws / "sparse").mkdir()
    (ws / "sparse" / "keep.txt").write_text("earlier output")
    with pytest.raises(SfmError) as e:
        run_sfm(SfmConfig(**PREVIEW_SFM), src, ws)
    msg = str(e.value)
    assert "fewer than half" in msg and "of 13 photos could be posed" in msg
    assert "hints:" in msg and "allow_partial" in msg
    assert "other_0.jpg:" in msg  # the reasons, photo by photo
    assert (ws / "sparse" / "keep.txt").read_text() == "earlier output"
    assert read_sfm_json(ws) is None
    # allow_partial goes on with what could be posed
    res = run_sfm(SfmConfig(**PREVIEW_SFM, allow_partial=True), src, ws)
    assert 3 <= res.num_registered < 13 * 0.5
    assert len(res.left_out) == 13 - res.num_registered


def test_reconstruct_refuses_with_hints_and_no_traceback(tmp_path):
    src = _mostly_unrelated(tmp_path / "photos")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "splatforge", "reconstruct", str(src), "-o", str(out),
           "--preset", "preview"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode != 0
    err = p.stderr + p.stdout
    assert "fewer than half" in err and "hints:" in err and "--allow-partial" in err
    assert "Traceback" not in err
    assert not (out / "model").exists()


# --------------------------------------------------------------------------------------------
# LLFF datasets that ship only downscaled images
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llff_only_8(tmp_path_factory):
    root = tmp_path_factory.mktemp("llff8")
    src = DATASETS / "statue_of_liberty"
    shutil.copy(src / "poses_bounds.npy", root / "poses_bounds.npy")
    (root / "images_8").mkdir()
    for p in sorted((src / "images").iterdir()):
        im = Image.open(p)
        im.resize((im.width // 8, im.height // 8)).save(root / "images_8" / p.name)
    return root


def test_llff_with_only_images_8_loads_with_data_factor_8(llff_only_8, tmp_path):
    from splatforge.scene import load_scene
    from splatforge.scene.llff import load_poses_bounds

    sc = load_scene(llff_only_8, SceneConfig(data_factor=8, cache_dir=tmp_path / "c"))
    pb = load_poses_bounds(llff_only_8 / "poses_bounds.npy")
    assert len(sc.images) == len(pb)
    h, w, focal = pb[0, :15].reshape(3, 5)[:, 4]
    cam = sc.images[0]
    assert (cam.width, cam.height) == (100, 150)
    # intrinsics follow the file size: the full-size focal scaled by 100 / 800
    assert abs(float(cam.K[0, 0]) - focal * cam.width / w) < 1e-3 * focal


def test_llff_with_only_images_8_names_the_factor_to_use(llff_only_8, tmp_path):
    from splatforge.scene import load_scene

    with pytest.raises(InputError) as e:
        load_scene(llff_only_8, SceneConfig(cache_dir=tmp_path / "c"))
    assert "images_8/" in str(e.value) and "--data-factor 8" in str(e.value)
    p = subprocess.run([sys.executable, "-m", "splatforge", "info", str(llff_only_8),
                        "--data-factor", "8"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "images_8" in p.stdout


@pytest.mark.parametrize("integral", [True, False])
def test_vocabulary_kmeans_is_lloyds_algorithm(integral):
    """The vocabulary's k-means (sparse one-hot sums, in-place distances) gives what a plain
    Lloyd's iteration gives: every sample assigned to its nearest centre by the full distance,
    and each centre the mean of its samples; for integer descriptors (SIFT's 0-255, summed
    in float32) as for others (summed in float64)."""
    from splatforge.sfm.retrieval import _nearest, train_vocabulary

    rng = np.random.default_rng(3)
    # SIFT-like data: non-negative, 128-D, clustered
    base = rng.uniform(0, 120, size=(24, 128)).astype(np.float32)
    x = (base[rng.integers(0, 24, 3000)] + rng.normal(0, 8, (3000, 128))).clip(0, 255)
    x = (np.round(x) if integral else x).astype(np.float32)
    d2 = ((x[:, None, :] - base[None, :, :]) ** 2).sum(-1)
    assert np.array_equal(_nearest(x, base, chunk=700), d2.argmin(1))

    words, iters = 16, 3
    got = train_vocabulary(x, words, seed=5, iterations=iters)
    # the same initialisation, then plain Lloyd iterations with explicit loops
    init = np.random.default_rng(5).choice(len(x), size=words, replace=False)
    ref = x[np.sort(init)].astype(np.float64)
    for _ in range(iters):
        lab = ((x[:, None, :] - ref.astype(np.float32)[None]) ** 2).sum(-1).argmin(1)
        for w in range(words):
            if (lab == w).any():
                ref[w] = x[lab == w].astype(np.float64).mean(0)
    assert np.allclose(got, ref, atol=1e-3)


def test_retrieval_plan_is_repeatable_and_linear_in_n(sample_runs):
    import pycolmap

    from splatforge.sfm.retrieval import retrieval_pairs
    from splatforge.sfm.viewgraph import ViewGraph

    ws, _ = sample_runs[0]
    db = ws / "database.db"
    a, ranked = retrieval_pairs(pycolmap, db, 6, seed=0)
    b, _ = retrieval_pairs(pycolmap, db, 6, seed=0)
    assert a == b
    assert len(a) <= 84 * 6 < 84 * 83 // 2
    assert {n for p in a for n in p} == set(ranked) and len(ranked) == 84
    assert all(len(v) == 83 for v in ranked.values())
    # the pairs retrieval ranks first are the pairs that verify: most of each photo's top 3
    # neighbours share verified matches with it
    graph = ViewGraph.from_database(pycolmap, db)
    top = [(n, m) for n in ranked for m in ranked[n][:3]]
    hits = sum(1 for n, m in top if m in graph.neighbors[n])
    assert hits > 0.5 * len(top), hits


def test_query_expansion_pairs_photos_that_overlap_a_common_photo(sample_runs):
    """On the sample's verified view graph, cut down to each photo's three strongest pairs:
    expansion plans only unmatched neighbours of neighbours, most common neighbours first, at
    most ``per_image`` per photo, the same plan every time, and its pairs verify in the full
    graph far more often than the pairs retrieval would plan next."""
    import pycolmap

    from splatforge.sfm.retrieval import expansion_pairs, retrieval_pairs
    from splatforge.sfm.viewgraph import ViewGraph

    ws, _ = sample_runs[0]
    db = ws / "database.db"
    full = ViewGraph.from_database(pycolmap, db).neighbors  # exhaustive: the truth
    _, ranked = retrieval_pairs(pycolmap, db, 6, seed=0)
    part: dict[str, dict[str, int]] = {n: {} for n in full}
    for n, nb in full.items():
        for m, k in sorted(nb.items(), key=lambda x: -x[1])[:3]:
            part[n][m] = part[m][n] = k
    matched = {(min(a, b), max(a, b)) for a in part for b in part[a]}
    # every matched pair verified: retrieval found each photo's overlaps, nothing to expand
    assert expansion_pairs(part, ranked, matched, per_image=2) == []
    # with the retrieval pairs matched too, a photo expands only when under 3/4 verified
    tried = matched | {(min(a, b), max(a, b)) for a in ranked for b in ranked[a][:6]}
    count = {n: sum(1 for p in tried if n in p) for n in part}
    low = {n for n in part if len(part[n]) < 0.75 * count[n]}
    some = expansion_pairs(part, ranked, tried, per_image=2)
    assert some and all(a in low or c in low for a, c in some)
    plan = expansion_pairs(part, ranked, matched, per_image=2, verified_fraction=None)
    assert plan and plan == expansion_pairs(part, ranked, matched, per_image=2,
                                            verified_fraction=None)
    assert plan == sorted(set(plan)) and all(a < b for a, b in plan)
    assert not set(plan) & matched
    for a, c in plan:  # each pair shares a verified neighbour
        assert set(part[a]) & set(part[c])
    assert len(plan) <= 2 * len(part)  # at most two per photo
    for a in part:  # a photo's own two picks have the most common neighbours
        common = {c: len(set(part[a]) & set(part[c])) for c in part
                  if c != a and (min(a, c), max(a, c)) not in matched}
        own = [c for x, y in plan for c in ((y,) if x == a else (x,) if y == a else ())]
        if common and max(common.values()) > 0:
            assert max(common[c] for c in own) == max(common.values())
    hit = sum(1 for a, c in plan if c in full[a]) / len(plan)
    nxt = [(a, b) for a in ranked for b in ranked[a][:6] if (min(a, b), max(a, b))
           not in matched]
    base = sum(1 for a, b in nxt if b in full[a]) / len(nxt)
    assert hit > base, (hit, base)


def _match_again(ws: Path, db: Path, pairs: list[tuple[str, str]], verification,
                 events=None) -> dict[int, int]:
    """Match ``pairs`` of the sample again, on one thread, in ``db`` (a copy of ``ws``'s
    database with its matches cleared); returns ``{pair_id: inliers}`` of every verified
    pair."""
    import sqlite3

    import pycolmap

    from splatforge.sfm.matching import match_pairs

    shutil.copy(ws / "database.db", db)
    with pycolmap.Database.open(db) as d:
        d.clear_matches()
        d.clear_two_view_geometries()
    mopts = pycolmap.FeatureMatchingOptions()
    mopts.num_threads = 1
    match_pairs(pycolmap, db, pairs, mopts, db.parent, events, verification)
    con = sqlite3.connect(db)
    rows = dict(con.execute("SELECT pair_id, rows FROM two_view_geometries "
                            "WHERE config >= 2 AND rows >= 15").fetchall())
    con.close()
    return rows


def test_capped_verification_keeps_the_pairs_that_overlap(sample_runs, tmp_path):
    """Retrieval's RANSAC trial cap (2000 per model, not COLMAP's 10000): on 153 real pairs
    of the sample, matched once with each, the same pairs verify with nearly the same inlier
    counts, while a cap far too low (5 trials) loses some (3 of 18 when written), which shows
    the check can fail.
    A user's ``verification_max_trials`` wins over the default."""
    import pycolmap

    from splatforge.sfm.matching import verification_options

    cfg = SfmConfig(**PREVIEW_SFM, num_threads=1)
    assert verification_options(pycolmap, cfg, matching="retrieval").ransac.max_num_trials \
        == 2000
    assert verification_options(pycolmap, cfg, matching="exhaustive").ransac.max_num_trials \
        == pycolmap.TwoViewGeometryOptions().ransac.max_num_trials
    mine = SfmConfig(**PREVIEW_SFM, verification_max_trials=500)
    assert verification_options(pycolmap, mine, matching="retrieval").ransac.max_num_trials \
        == 500
    names = sorted(p.name for p in SAMPLE.iterdir())[:18]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    ws, _ = sample_runs[0]

    def verified(options) -> dict[int, int]:
        db = tmp_path / f"db{len(list(tmp_path.iterdir()))}.db"
        return _match_again(ws, db, pairs, options)

    full = verified(verification_options(pycolmap, cfg, matching="exhaustive"))
    capped = verified(verification_options(pycolmap, cfg, matching="retrieval"))
    low = verification_options(pycolmap, cfg, matching="retrieval")
    low.ransac.min_num_trials, low.ransac.max_num_trials = 1, 5
    starved = verified(low)
    assert len(full) >= 12  # neighbouring photos of one walk-around overlap
    assert len(set(full) ^ set(capped)) <= 1, (len(full), len(capped))
    both = set(full) & set(capped)
    assert sum(capped[p] for p in both) >= 0.98 * sum(full[p] for p in both)
    assert len(starved) < len(full), (starved, full)  # the weakest pairs go first


def test_matching_in_several_calls_verifies_the_same_pairs(sample_runs, tmp_path,
                                                          monkeypatch):
    """The pairs are matched in calls sized by time (few and long, since each call reloads
    descriptors); 153 real sample pairs matched in one call and in calls of 16 give the same
    verified pairs with the same inlier counts, and progress counts up to every pair."""
    import pycolmap

    from splatforge.sfm import matching

    assert matching.next_chunk_size(128, 128 / 10.0) == int(10.0 * matching.CHUNK_SECONDS)
    assert matching.next_chunk_size(128, 1e6) == matching.MIN_CHUNK  # a slow machine
    assert matching.next_chunk_size(128, 0.0) == matching.MAX_CHUNK

    cfg = SfmConfig(**PREVIEW_SFM, num_threads=1)
    names = sorted(p.name for p in SAMPLE.iterdir())[:18]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    ws, _ = sample_runs[0]

    def verified(tag: str) -> tuple[dict[int, int], list]:
        events: list = []
        rows = _match_again(ws, tmp_path / f"{tag}.db", pairs,
                            matching.verification_options(pycolmap, cfg, matching="retrieval"),
                            events.append)
        return rows, [e.step for e in events if e.kind == "progress"]

    monkeypatch.setattr(matching, "MIN_CHUNK", len(pairs))
    one, one_steps = verified("one")
    monkeypatch.setattr(matching, "MIN_CHUNK", 16)
    monkeypatch.setattr(matching, "MAX_CHUNK", 16)
    split, split_steps = verified("split")
    assert len(one) >= 12
    assert split == one
    for steps in (one_steps, split_steps):
        assert steps[0] == 0 and steps[-1] == len(pairs)
        assert steps == sorted(steps)
    assert one_steps == [0, len(pairs)]  # 153 pairs: one call, one update at its end
    assert split_steps == [16 * k for k in range(len(pairs) // 16 + 1)] + [len(pairs)]


def test_retrieval_matching_end_to_end(tmp_path):
    """Retrieval (k = 8) on 40 sample photos: far fewer pairs than exhaustive, all posed."""
    src = tmp_path / "photos"
    src.mkdir()
    for p in sorted(SAMPLE.iterdir())[:40]:
        shutil.copy(p, src / p.name)
    events = []
    res = run_sfm(SfmConfig(**PREVIEW_SFM, matching="retrieval", retrieval_neighbors=8), src,
                  tmp_path / "ws", events.append)
    planned = [e.data["planned_pairs"] for e in events if "planned_pairs" in (e.data or {})]
    assert planned and planned[0] <= 40 * 8 < 40 * 39 // 2
    assert res.matching == "retrieval"
    assert res.num_registered >= 38, res.left_out
    steps = {e.message for e in events if e.kind == "progress"}
    assert any("rank similar images" in m for m in steps)
    assert any("match neighbours of neighbours (1/2)" in m for m in steps)
    assert any(e.data.get("expansion_pairs", 0) > 0 for e in events if e.data)
    # a sparse (retrieval) view graph: the first rung stops at its first model; the photos it
    # leaves out are re-matched and added with the default thresholds before relaxed ones
    attempts = json.loads((tmp_path / "ws" / "sfm.json").read_text())["attempts"]
    assert attempts[0]["method"] == "incremental"
    assert attempts[0]["multiple_models"] is False and attempts[0]["models"] == 1
    assert attempts[0]["thresholds"] == "default"
    if attempts[0]["registered"] < 40:
        assert attempts[1]["method"] == "rematch+extend"
        assert attempts[1]["thresholds"] == "default"
        if attempts[1]["registered"] < 40:
            assert attempts[2]["method"] == "extend"
            assert attempts[2]["thresholds"] == "relaxed"
