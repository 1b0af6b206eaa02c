"""Structure from motion: a folder of frames in, a PINHOLE COLMAP workspace out.

``run_sfm`` drives pycolmap (COLMAP 4.x, with GLOMAP merged as ``global_mapping``) through four
steps -- SIFT extraction, matching, mapping, undistortion -- and writes the workspace layout
that INRIA's ``convert.py`` produces and every 3DGS trainer reads::

    <workspace>/
      input/          frames from the ingest stage (distorted originals)
      images/         undistorted frames (PINHOLE)
      sparse/0/       cameras.bin, images.bin, points3D.bin of the largest model, undistorted
      database.db     COLMAP features and matches
      sfm.json        statistics: registered/total images, points, mean reprojection error,
                      mean track length, seconds per step, unregistered image names

Work happens in ``<workspace>/.sfm_work/``; the final folders are moved into place only after
every step succeeded, and ``sfm.json`` is written last, so a failed or interrupted run never
leaves half a model where a finished one is expected. Steps that finished (features, matches)
are recorded there and skipped on the next run with the same inputs and options.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np  # noqa: F401  (import-order guard: numpy before pycolmap, see NOTES.md)

from ..config import IngestConfig, SfmConfig
from ..errors import InputError, SfmError
from ..events import EventCallback, StageReporter
from ..util import atomic_write_text

STEPS = ("extract", "match", "map", "undistort")
_WORK = ".sfm_work"
_MIN_REGISTERED = 3

# Relaxed incremental-mapper thresholds that register all 84 plush_dog photos where the
# defaults register 47 (measured, ../shared/NOTES.md).
RELAXED_MAPPER = {
    "init_min_tri_angle": 2.0,
    "init_min_num_inliers": 4,
    "abs_pose_min_num_inliers": 3,
    "abs_pose_max_error": 8.0,
}


@dataclass
class SfmResult:
    """What ``run_sfm`` produced (also the content of ``sfm.json``).

    Attributes:
        workspace: the workspace folder.
        num_images: images given to SfM.
        num_registered: images with a pose in the kept model.
        num_points: 3D points in the kept model.
        mean_reprojection_error: pixels, over all observations of the kept model.
        mean_track_length: mean number of images observing a 3D point.
        unregistered: names of the images without a pose.
        matching: the matching method used (``auto`` resolved).
        mapping: ``incremental`` or ``global``.
        num_models: models the mapper produced (the largest is kept).
        relaxed: whether the relaxed-threshold retry produced the kept model.
        seconds: wall-clock seconds per step (``ingest``, ``extract``, ``match``, ``map``,
            ``undistort``); a step skipped on resume has no entry.
        skipped_steps: steps reused from an earlier run of the same workspace.
    """

    workspace: str
    num_images: int
    num_registered: int
    num_points: int
    mean_reprojection_error: float
    mean_track_length: float
    unregistered: list[str]
    matching: str
    mapping: str
    num_models: int
    relaxed: bool
    seconds: dict[str, float] = field(default_factory=dict)
    skipped_steps: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    status: str = "complete"


def _fingerprint(images_dir: Path, config: SfmConfig) -> str:
    """Hash of the frames (names and contents) plus the options that shape the database.

    Contents rather than mtimes: a re-run of ingest rewrites identical frames.
    """
    h = hashlib.sha256()
    for p in sorted(images_dir.iterdir()):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            h.update(hashlib.file_digest(f, "sha1").digest())
    keys = ("camera_model", "single_camera", "max_image_size", "max_num_features")
    h.update(json.dumps({k: getattr(config, k) for k in keys}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _resolve_matching(config: SfmConfig, num_images: int, is_video: bool,
                      rep: StageReporter) -> str:
    if config.matching != "auto":
        return config.matching
    if is_video:
        return "sequential"
    if num_images <= config.exhaustive_max_images:
        return "exhaustive"
    rep.warning(
        f"{num_images} images is above exhaustive_max_images ({config.exhaustive_max_images}): "
        "using sequential matching, which assumes the photos are in capture order. For an "
        "unordered set use matching=exhaustive (slow) or vocab_tree with a local "
        "vocab_tree_path.")
    return "sequential"


def load_state(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (``ingest.json``, ``sfm.json``), or ``{}`` when it is
    missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def ingest_is_current(manifest: dict[str, Any], media: Path, ingest: IngestConfig,
                      workspace: Path) -> bool:
    """True when ``<workspace>/input`` came from ``media`` with ``ingest`` and the media has
    not changed since (the media and, for a folder, its files are older than the manifest)."""
    if not manifest or not (workspace / "input").is_dir() or not media.exists():
        return False
    if manifest.get("source") != str(media.resolve()):
        return False
    if manifest.get("config") != ingest.model_dump(mode="json"):
        return False
    stamp = (workspace / "ingest.json").stat().st_mtime
    paths = [media] + (list(media.iterdir()) if media.is_dir() else [])
    return all(p.stat().st_mtime < stamp for p in paths)


def read_sfm_json(workspace: Path) -> SfmResult | None:
    """The finished result recorded in ``<workspace>/sfm.json``, or None when absent/partial."""
    p = Path(workspace) / "sfm.json"
    data = load_state(p)
    if data.get("status") != "complete":
        return None
    names = {f for f in SfmResult.__dataclass_fields__}
    return SfmResult(**{k: v for k, v in data.items() if k in names})


def run_sfm(config: SfmConfig, media: Path, workspace: Path,
            events: EventCallback | None = None, *, ingest: IngestConfig | None = None,
            force: bool = False) -> SfmResult:
    """Run ingest (when needed) and SfM over ``media`` into ``workspace``.

    Args:
        config: SfM options (see :class:`splatforge.config.SfmConfig`).
        media: a folder of images, a zip of them, a video, or ``<workspace>/input`` itself.
        workspace: output folder (created when missing).
        events: progress callback (stage ``sfm``; ingest reports as stage ``ingest``).
        ingest: options for the ingest stage (defaults when None).
        force: redo everything even when ``sfm.json`` says the workspace is finished.

    Returns:
        The :class:`SfmResult` also written to ``<workspace>/sfm.json``.

    Raises:
        InputError: unusable media (see :func:`splatforge.ingest.run_ingest`), or a missing
            ``vocab_tree_path``.
        SfmError: fewer than 3 images registered, or no GPS priors for spatial matching.
    """
    from ..ingest import run_ingest

    workspace = Path(workspace)
    media = Path(media)
    rep = StageReporter("sfm", events)
    if not force:
        done = read_sfm_json(workspace)
        if done is not None:
            rep.info(f"{workspace}/sfm.json: already finished "
                     f"({done.num_registered}/{done.num_images} images registered); "
                     "nothing to do (use --force to run again)")
            return done
    workspace.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    # Ingest: frames into <workspace>/input (skipped when media already is that folder).
    input_dir = workspace / "input"
    t0 = time.monotonic()
    ingest = ingest or IngestConfig()
    manifest = load_state(workspace / "ingest.json")
    if media.resolve() == input_dir.resolve():
        if not input_dir.is_dir():
            raise InputError(media, "no such folder")
        is_video = manifest.get("kind") == "video"
    elif not force and ingest_is_current(manifest, media, ingest, workspace):
        rep.info(f"{workspace}/input is up to date with {media}: ingest skipped")
        is_video = manifest.get("kind") == "video"
    else:
        res = run_ingest(ingest, media, workspace, events)
        input_dir = res.images_dir
        is_video = res.kind == "video"
    seconds["ingest"] = round(time.monotonic() - t0, 3)
    image_names = sorted(p.name for p in input_dir.iterdir() if p.is_file())
    num_images = len(image_names)

    if config.matching == "vocab_tree":
        vt = config.vocab_tree_path
        if vt is None or not Path(vt).is_file():
            raise InputError(vt, "vocabulary-tree file not found",
                             hint="vocab_tree matching needs a local vocab_tree_path; "
                                  "splatforge never downloads one")

    import pycolmap  # lazily, after numpy (see NOTES.md)

    if os.environ.get("SPLATFORGE_COLMAP_LOG", "").lower() != "info":
        # COLMAP logs every step at INFO on stderr; progress comes through events instead.
        pycolmap.logging.minloglevel = pycolmap.logging.WARNING

    work = workspace / _WORK
    if force and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    fp = _fingerprint(input_dir, config)
    state = load_state(state_path)
    if state.get("fingerprint") != fp:
        for p in (work / "database.db", work / "database.db-wal", work / "database.db-shm"):
            p.unlink(missing_ok=True)
        state = {"fingerprint": fp, "done": []}
    db_path = work / "database.db"
    matching = _resolve_matching(config, num_images, is_video, rep)
    skipped: list[str] = []

    def save_state() -> None:
        atomic_write_text(state_path, json.dumps(state, indent=1))

    rep.started(f"{num_images} images, matching {matching}, mapping {config.mapping}",
                images=num_images)
    rep.start_steps("sfm steps", len(STEPS))

    # 1. SIFT extraction, in batches so that progress shows image k of n.
    if "extract" in state["done"]:
        skipped.append("extract")
    else:
        t0 = time.monotonic()
        for p in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
            p.unlink(missing_ok=True)
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = config.camera_model
        ext = pycolmap.FeatureExtractionOptions()
        ext.max_image_size = config.max_image_size
        ext.num_threads = config.num_threads
        ext.sift.max_num_features = config.max_num_features
        mode = pycolmap.CameraMode.SINGLE if config.single_camera else pycolmap.CameraMode.AUTO
        sub = StageReporter("sfm", events)
        sub.start_steps("extract features (images)", num_images)
        # Batches give progress; with one shared camera, later batches must reuse the camera
        # the first batch created (each extract_features call would otherwise add its own).
        # AUTO mode groups images by EXIF across the whole set, so it runs as one batch.
        batch = max(1, min(16, num_images // 10 or 1)) if config.single_camera else num_images
        for i in range(0, num_images, batch):
            names = image_names[i:i + batch]
            pycolmap.extract_features(db_path, input_dir, image_names=names, camera_mode=mode,
                                      reader_options=reader, extraction_options=ext)
            if config.single_camera and reader.existing_camera_id < 0:
                with pycolmap.Database.open(db_path) as db:
                    cams = db.read_all_cameras()
                if cams:
                    reader.existing_camera_id = cams[0].camera_id
            sub.step(min(i + batch, num_images))
        with pycolmap.Database.open(db_path) as db:
            n_db = db.num_images()
        if n_db < num_images:
            rep.warning(f"COLMAP could read only {n_db} of {num_images} images in {input_dir}")
        seconds["extract"] = round(time.monotonic() - t0, 3)
        state["done"].append("extract")
        save_state()
    rep.step(1)

    # 2. Matching.
    match_key = f"match:{matching}:{config.guided_matching}:{config.sequential_overlap}:" \
                f"{config.quadratic_overlap}"
    if match_key in state["done"]:
        skipped.append("match")
    else:
        t0 = time.monotonic()
        with pycolmap.Database.open(db_path) as db:
            db.clear_matches()
            db.clear_two_view_geometries()
            n_priors = sum(1 for pp in db.read_all_pose_priors() if pp.has_position())
        mopts = pycolmap.FeatureMatchingOptions()
        mopts.guided_matching = config.guided_matching
        mopts.num_threads = config.num_threads
        rep.info(f"matching: {matching}")
        if matching == "exhaustive":
            pycolmap.match_exhaustive(db_path, matching_options=mopts)
        elif matching == "sequential":
            popts = pycolmap.SequentialPairingOptions()
            popts.overlap = config.sequential_overlap
            popts.quadratic_overlap = config.quadratic_overlap
            pycolmap.match_sequential(db_path, matching_options=mopts, pairing_options=popts)
        elif matching == "spatial":
            if n_priors == 0:
                raise SfmError(
                    f"{input_dir}: spatial matching needs GPS positions in the images' EXIF, "
                    "and none of these images has one; use matching=exhaustive or sequential")
            pycolmap.match_spatial(db_path, matching_options=mopts)
        else:  # vocab_tree
            popts = pycolmap.VocabTreePairingOptions()
            popts.vocab_tree_path = str(config.vocab_tree_path)
            pycolmap.match_vocabtree(db_path, matching_options=mopts, pairing_options=popts)
        with pycolmap.Database.open(db_path) as db:
            n_pairs = db.num_verified_image_pairs()
        rep.info(f"{n_pairs} verified image pairs", verified_pairs=n_pairs)
        seconds["match"] = round(time.monotonic() - t0, 3)
        state["done"] = [d for d in state["done"] if not d.startswith("match:")] + [match_key]
        save_state()
    rep.step(2)

    # 3. Mapping; keep the largest model.
    t0 = time.monotonic()
    models_dir = work / "models"
    shutil.rmtree(models_dir, ignore_errors=True)
    recs = _map(pycolmap, config, db_path, input_dir, models_dir / "default", events,
                num_images, relaxed=False)
    best, relaxed_used, n_models = _largest(recs), False, len(recs)
    if (config.relaxed_retry and config.mapping == "incremental"
            and (best is None or best.num_reg_images() < num_images)):
        got = 0 if best is None else best.num_reg_images()
        rep.info(f"{got}/{num_images} images registered: mapping again with relaxed "
                 f"thresholds {RELAXED_MAPPER}")
        recs2 = _map(pycolmap, config, db_path, input_dir, models_dir / "relaxed", events,
                     num_images, relaxed=True)
        best2 = _largest(recs2)
        if best2 is not None and (best is None or _size(best2) > _size(best)):
            best, relaxed_used, n_models = best2, True, len(recs2)
    seconds["map"] = round(time.monotonic() - t0, 3)
    n_reg = 0 if best is None else best.num_reg_images()
    if best is None or n_reg < _MIN_REGISTERED:
        raise SfmError(
            f"{input_dir}: only {n_reg} of {num_images} images could be registered "
            f"(at least {_MIN_REGISTERED} are needed).\n  hints: take photos with more overlap "
            "(each part of the scene in 3+ photos, ~60-80% overlap between neighbours), add "
            "more images, avoid plain untextured backgrounds and motion blur; try "
            "matching=exhaustive, or mapping=global")
    rep.step(3)

    # 4. Undistort to PINHOLE.
    t0 = time.monotonic()
    kept = work / "kept"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    best.write_binary(str(kept))
    und = work / "undistorted"
    shutil.rmtree(und, ignore_errors=True)
    pycolmap.undistort_images(und, kept, input_dir, output_type="COLMAP",
                              num_threads=config.num_threads)
    und_sparse0 = und / "sparse" / "0"
    und_sparse0.mkdir(parents=True, exist_ok=True)
    for p in list((und / "sparse").iterdir()):
        if p.is_file():
            p.rename(und_sparse0 / p.name)
    seconds["undistort"] = round(time.monotonic() - t0, 3)
    rep.step(4)

    reg_names = {img.name for img in best.images.values() if img.has_pose}
    result = SfmResult(
        workspace=str(workspace),
        num_images=num_images,
        num_registered=n_reg,
        num_points=best.num_points3D(),
        mean_reprojection_error=round(float(best.compute_mean_reprojection_error()), 4),
        mean_track_length=round(float(best.compute_mean_track_length()), 3),
        unregistered=[n for n in image_names if n not in reg_names],
        matching=matching,
        mapping=config.mapping,
        num_models=n_models,
        relaxed=relaxed_used,
        seconds=seconds,
        skipped_steps=skipped,
        config=json.loads(config.model_dump_json()),
    )
    _publish(workspace, und, work)
    atomic_write_text(workspace / "sfm.json", json.dumps(asdict(result), indent=2))
    if result.unregistered:
        rep.warning(f"{len(result.unregistered)} images not registered: "
                    + ", ".join(result.unregistered[:20])
                    + (" ..." if len(result.unregistered) > 20 else ""))
    rep.finished(f"{n_reg}/{num_images} images registered, {result.num_points} points, "
                 f"{result.mean_reprojection_error:.3f} px", **{
                     k: v for k, v in asdict(result).items()
                     if k in ("num_registered", "num_images", "num_points",
                              "mean_reprojection_error")})
    return result


def _size(rec: Any) -> tuple[int, int]:
    return (rec.num_reg_images(), rec.num_points3D())


def _largest(recs: dict[int, Any]) -> Any | None:
    return max(recs.values(), key=_size) if recs else None


def _map(pycolmap: Any, config: SfmConfig, db_path: Path, input_dir: Path, out: Path,
         events: EventCallback | None, num_images: int, relaxed: bool) -> dict[int, Any]:
    """Run the mapper; report 'register images' k of n through the events callback."""
    out.mkdir(parents=True, exist_ok=True)
    sub = StageReporter("sfm", events)
    if config.mapping == "global":
        opts = pycolmap.GlobalPipelineOptions()
        opts.num_threads = config.num_threads
        opts.random_seed = config.seed
        sub.start_steps("global mapping", None)
        return pycolmap.global_mapping(db_path, input_dir, out, opts)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = config.num_threads
    opts.random_seed = config.seed
    if relaxed:
        for k, v in RELAXED_MAPPER.items():
            setattr(opts.mapper, k, v)
    counter = {"n": 0}
    sub.start_steps("register images" + (" (relaxed)" if relaxed else ""), num_images)

    def next_image() -> None:
        counter["n"] += 1
        sub.step(min(counter["n"], num_images))

    return pycolmap.incremental_mapping(db_path, input_dir, out, opts,
                                        next_image_callback=next_image)


def _publish(workspace: Path, und: Path, work: Path) -> None:
    """Move the undistorted images, sparse/0 and database.db into place.

    Each target is swapped by renaming the old one aside first, so a crash in between leaves
    either the old or the new folder, never a mixture.
    """
    (workspace / "sfm.json").unlink(missing_ok=True)  # not finished until rewritten
    for src, dst in ((und / "images", workspace / "images"),
                     (und / "sparse", workspace / "sparse"),
                     (work / "database.db", workspace / "database.db")):
        old = dst.with_name(dst.name + ".old")
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        if dst.exists():
            dst.rename(old)
        if src.name == "database.db":
            shutil.copy2(src, dst)  # keep the work copy so matches can be reused
        else:
            src.rename(dst)
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
