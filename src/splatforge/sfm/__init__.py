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
from ..scene.imageio import image_size
from ..scene.undistort import start_loading, undistort_reconstruction
from ..util import atomic_write_text
from .downscale import downscale_images, restore_full_size
from .features import replace_features
from .mapping import RELAXED_MAPPER, map_complete, registered_names, resolve_mapping
from .matching import (match_pairs, plan_pairs, rematch_pairs, verification_max_trials,
                       verification_options)
from .points import drop_guided_two_view_points
from .priors import PosePrior, read_pose_priors, triangulate_with_priors
from .retrieval import expansion_pairs, retrieval_pairs
from .rig import apply_view_rig, camera_params
from .viewgraph import ViewGraph

STEPS = ("extract", "match", "map", "undistort")
_WORK = ".sfm_work"
_MIN_REGISTERED = 3
#: images per extraction call: all threads work within a call; progress is shown between calls
#: (at least this many; large sets use calls of a tenth of the set, up to _EXTRACT_BATCH_MAX:
#: each call re-opens the database and starts its threads, 0.7 s over 260 frames in calls of 16)
_EXTRACT_BATCH = 16
_EXTRACT_BATCH_MAX = 64
#: Below this fraction of the images registered, SfM stops (unless ``allow_partial``).
MIN_REGISTERED_FRACTION = 0.5
#: Below this fraction, SfM warns loudly.
WARN_REGISTERED_FRACTION = 0.9
#: COLMAP's default SIFT peak threshold, and the one used for small extraction sizes.
PEAK_THRESHOLD_DEFAULT = 0.02 / 3
PEAK_THRESHOLD_SMALL = 0.002
#: Extraction sizes (longer side, px) below this use :data:`PEAK_THRESHOLD_SMALL`.
SMALL_EXTRACTION_SIZE = 1000

__all__ = ["RELAXED_MAPPER", "SfmResult", "run_sfm", "read_sfm_json", "extraction_size",
           "sift_first_octave", "sift_peak_threshold"]


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
        relaxed: whether a remedy (not the first mapper run) produced the kept model.
        method: the mapping rung that produced the kept model (see
            :mod:`splatforge.sfm.mapping`).
        attempts: every mapping rung tried, with images registered, models, reprojection
            error (px), seconds and whether it was kept.
        poseable: images in the largest component of the verified view graph (the most
            that can be posed together).
        view_graph: verified pairs and component sizes.
        left_out: for every unregistered image: the reason (``few_features``,
            ``no_overlap``, ``separate_group``, ``not_posed``, ``not_read``), a message in
            plain words and the numbers behind it (features, verified neighbours, component).
        peak_threshold: the SIFT peak threshold used.
        first_octave: the first octave of SIFT's scale space (-1: the image doubled first).
        dropped_points: two-view points left out because only guided matching backed them
            and, with ``SfmConfig.guided_two_view_max_depth_ratio`` (2 by default), their
            depth disagreed with their neighbours' (``SfmConfig.drop_guided_two_view_points``;
            not counted in ``num_points``).
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
    method: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    poseable: int = 0
    view_graph: dict[str, Any] = field(default_factory=dict)
    left_out: list[dict[str, Any]] = field(default_factory=list)
    peak_threshold: float = 0.0
    first_octave: int = -1
    dropped_points: int = 0


def _fingerprint(images_dir: Path, config: SfmConfig, first_octave: int) -> str:
    """Hash of the frames (names and contents) plus the options that shape the database,
    with ``first_octave`` as resolved by :func:`sift_first_octave` (it also depends on the
    image count and size, which the frames already give).

    Contents rather than mtimes: a re-run of ingest rewrites identical frames.
    """
    h = hashlib.sha256()
    for p in sorted(images_dir.iterdir()):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            h.update(hashlib.file_digest(f, "sha1").digest())
    keys = ("camera_model", "single_camera", "max_image_size", "max_num_features",
            "sift_peak_threshold", "equirect_detect", "equirect_layout", "equirect_num_views",
            "equirect_fov", "equirect_size")
    opts = {k: getattr(config, k) for k in keys}
    opts["first_octave"] = first_octave
    opts["pose_prior"] = config.pose_prior is not None  # one camera per image with priors
    h.update(json.dumps(opts, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _resolve_matching(config: SfmConfig, num_images: int, is_video: bool,
                      rep: StageReporter, priors: bool = False) -> str:
    if config.matching != "auto":
        return config.matching
    if is_video:
        return "sequential"
    if num_images <= config.exhaustive_max_images:
        return "exhaustive"
    return "retrieval"


def _guided(config: SfmConfig, matching: str, priors: bool) -> bool:
    """Whether every pair is matched guided (see ``SfmConfig.guided_matching``)."""
    if config.guided_matching is not None:
        return config.guided_matching
    return matching == "exhaustive" or priors


def extraction_size(config: SfmConfig, image_dir: Path, names: list[str]) -> int:
    """The longer side (px) SIFT sees: the largest of these images' longer sides (from a
    sample of up to 16 of them), capped at ``config.max_image_size``; the cap itself when
    none can be read."""
    from PIL import Image

    longest = 0
    for n in names[:: max(1, len(names) // 16)]:  # a sample: sets share a size in practice
        try:
            with Image.open(image_dir / n) as im:
                longest = max(longest, *im.size)
        except OSError:
            continue
    return min(longest, config.max_image_size) if longest else config.max_image_size


def sift_peak_threshold(config: SfmConfig, size: int) -> float:
    """The SIFT peak threshold: ``config.sift_peak_threshold`` when set, else chosen from the
    extraction size ``size`` (px, :func:`extraction_size`).

    Below :data:`SMALL_EXTRACTION_SIZE` px, COLMAP's default threshold (0.0067) leaves too few
    features: the shipped sample (375x250) gave a median of 192 per photo and 4 photos with
    no verified neighbour; at 0.002 the median is 378 and all 84 photos form one group
    (measured, benchmarks/NOTES.md).
    """
    if config.sift_peak_threshold is not None:
        return config.sift_peak_threshold
    return PEAK_THRESHOLD_SMALL if size < SMALL_EXTRACTION_SIZE else PEAK_THRESHOLD_DEFAULT


def sift_first_octave(config: SfmConfig, size: int, num_images: int, rig: bool = False) -> int:
    """The first octave of SIFT's scale space: ``config.sift_first_octave`` when set, else 0
    for a set of ``config.global_min_images`` images or more extracted at
    :data:`SMALL_EXTRACTION_SIZE` px or more (not a 360 rig), and COLMAP's -1 otherwise.
    Photos that octave 0 leaves with no verified neighbour are extracted again at -1 before
    they are re-matched (:mod:`splatforge.sfm.features`).

    Octave -1 doubles the image before the difference-of-Gaussians pyramid (Lowe, IJCV 2004,
    section 3.3: it quadruples the stable keypoints found), at about 4x the pixels. On 260
    video frames of 720x1280 (2 cores), octave 0 extracts in 23 s instead of 72 s with a median
    of 610 instead of 1586 features per frame; SfM still registers all 260, and the held-out
    PSNR after the same training is 0.18 dB higher (median of three seeds; README "SfM at
    scale", ``benchmarks/results/sfm_issue22_speed6_cpu.json``).
    """
    if config.sift_first_octave is not None:
        return config.sift_first_octave
    large = num_images >= config.global_min_images and size >= SMALL_EXTRACTION_SIZE
    return 0 if large and not rig else -1


def _reader_options(pycolmap: Any, config: SfmConfig, rig: bool = False) -> Any:
    """COLMAP's image reader options: the camera model (PINHOLE for the views of a rig)."""
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = config.camera_model if not rig else "PINHOLE"
    return reader


def _extraction_options(pycolmap: Any, config: SfmConfig, peak: float,
                        first_octave: int) -> Any:
    """COLMAP's SIFT extraction options for ``config`` at the resolved peak threshold and
    first octave; on the GPU when the installed pycolmap has CUDA."""
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size = config.max_image_size
    ext.num_threads = config.num_threads
    ext.use_gpu = bool(pycolmap.has_cuda)  # GPU SIFT with the CUDA build of pycolmap
    ext.sift.max_num_features = config.max_num_features
    ext.sift.peak_threshold = peak
    ext.sift.first_octave = first_octave
    return ext


def _downscale_for_sift(image_dir: Path, names: list[str], size: int, dst: Path,
                        rep: StageReporter) -> dict[str, tuple[int, int]] | None:
    """Downscaled copies of the images in ``dst`` for SIFT at ``size`` px
    (:func:`splatforge.sfm.downscale.downscale_images`), or None where COLMAP should read the
    originals: the images already fit, do not all share one size, or Pillow cannot read one
    (COLMAP then reports it)."""
    shutil.rmtree(dst, ignore_errors=True)
    try:
        sizes = {image_size(image_dir / n) for n in names}
    except InputError:
        return None
    if len(sizes) != 1 or max(next(iter(sizes))) <= size:
        return None
    try:
        return downscale_images(image_dir, names, size, dst)
    except OSError as e:
        rep.info(f"SIFT reads the full-size images ({type(e).__name__} while downscaling)")
        shutil.rmtree(dst, ignore_errors=True)
        return None


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
        SfmError: fewer than 3 images registered; fewer than half of them registered
            without ``allow_partial`` (the message gives the reason for every image left
            out, and nothing is published); or no GPS priors for spatial matching.
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
    frame_names = sorted(p.name for p in input_dir.iterdir() if p.is_file())
    priors = _load_priors(config, manifest, media, rep)
    views = _equirect_views(config, input_dir, frame_names, rep)
    if views is None:
        image_dir, image_names = input_dir, frame_names
    else:
        # <view>/<frame stem>.jpg under .sfm_work/views, written in the extract step
        image_dir = workspace / _WORK / "views"
        image_names = sorted(f"{v.name}/{Path(n).stem}.jpg" for v in views for n in frame_names)
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
        # ERROR, not WARNING: the mapper warns once per discarded seed model (hundreds).
        pycolmap.logging.minloglevel = pycolmap.logging.ERROR
    pycolmap.set_random_seed(config.seed)

    work = workspace / _WORK
    if force and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    size = extraction_size(config, input_dir, frame_names)  # 360: the frames' size
    peak = sift_peak_threshold(config, size)
    first_octave = sift_first_octave(config, size, num_images, rig=views is not None)
    fp = _fingerprint(input_dir, config, first_octave)
    state = load_state(state_path)
    if state.get("fingerprint") != fp:
        for p in (work / "database.db", work / "database.db-wal", work / "database.db-shm"):
            p.unlink(missing_ok=True)
        state = {"fingerprint": fp, "done": []}
    db_path = work / "database.db"
    matching = _resolve_matching(config, num_images, is_video, rep, priors is not None)
    guided = _guided(config, matching, priors is not None)
    mapping = resolve_mapping(config, num_images, rig=views is not None)
    skipped: list[str] = []
    ranked: dict[str, list[str]] | None = None

    def save_state() -> None:
        atomic_write_text(state_path, json.dumps(state, indent=1))

    rep.started(f"{num_images} images, matching {matching}, mapping {mapping}",
                images=num_images)
    rep.start_steps("sfm steps", len(STEPS))

    # 1. SIFT extraction, in batches so that progress shows image k of n.
    if "extract" in state["done"]:
        skipped.append("extract")
    else:
        t0 = time.monotonic()
        for p in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
            p.unlink(missing_ok=True)
        if views is not None:
            _split_360(frame_names, input_dir, views, image_dir, events)
        reader = _reader_options(pycolmap, config, rig=views is not None)
        ext = _extraction_options(pycolmap, config, peak, first_octave)
        sub = StageReporter("sfm", events)
        sub.start_steps("extract features (images)", num_images)
        if views is not None:
            # One camera per view (its exact PINHOLE intrinsics), then one rig over them.
            done_n = 0
            for v in views:
                reader.camera_params = camera_params(v)
                reader.existing_camera_id = -1
                names = [n for n in image_names if n.startswith(v.name + "/")]
                for i in range(0, len(names), _EXTRACT_BATCH):
                    pycolmap.extract_features(
                        db_path, image_dir, image_names=names[i:i + _EXTRACT_BATCH],
                        camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                        extraction_options=ext)
                    if reader.existing_camera_id < 0:
                        with pycolmap.Database.open(db_path) as db:
                            reader.existing_camera_id = max(
                                c.camera_id for c in db.read_all_cameras())
                    done_n += len(names[i:i + _EXTRACT_BATCH])
                    sub.step(done_n)
            n_frames = apply_view_rig(pycolmap, db_path, views)
            rep.info(f"{len(views)} views x {len(frame_names)} frames in one rig "
                     f"({n_frames} frames)", views=[v.name for v in views])
        else:
            if priors is not None:
                mode = pycolmap.CameraMode.PER_IMAGE  # each image gets its prior's intrinsics
            elif config.single_camera:
                mode = pycolmap.CameraMode.SINGLE
            else:
                mode = pycolmap.CameraMode.AUTO
            # Image ids decide the mapper's order and tie-breaks, so they must not depend on
            # thread timing: within one extraction call COLMAP writes new images to the
            # database in the order its threads finish (poses up to 25 degrees apart between
            # two identical runs of the sample). So the images are first imported in name
            # order by one reader (ids in name order, cameras made the same way every run),
            # then extracted by all threads in batches of 16, which keep the imported ids.
            with pycolmap.Database.open(db_path):
                pass  # import_images needs the database to exist
            sift_dir = work / "sift_images"
            full = None
            if mode == pycolmap.CameraMode.SINGLE and priors is None:
                full = _downscale_for_sift(image_dir, image_names, size, sift_dir, rep)
            read_dir = sift_dir if full else image_dir  # SIFT's input: copies or originals
            pycolmap.import_images(db_path, read_dir, camera_mode=mode,
                                   image_names=image_names, options=reader)
            batch = min(_EXTRACT_BATCH_MAX, max(_EXTRACT_BATCH, -(-num_images // 10)))
            for i in range(0, num_images, batch):
                names = image_names[i:i + batch]
                pycolmap.extract_features(db_path, read_dir, image_names=names,
                                          camera_mode=mode, reader_options=reader,
                                          extraction_options=ext)
                sub.step(min(i + batch, num_images))
            if full:
                restore_full_size(pycolmap, db_path, full)
            shutil.rmtree(sift_dir, ignore_errors=True)
        with pycolmap.Database.open(db_path) as db:
            n_db = db.num_images()
        if n_db < num_images:
            rep.warning(f"COLMAP could read only {n_db} of {num_images} images in {image_dir}")
        seconds["extract"] = round(time.monotonic() - t0, 3)
        state["done"].append("extract")
        save_state()
    rep.step(1)

    # 2. Matching.
    match_key = f"match:{matching}:{guided}:{config.sequential_overlap}:" \
                f"{config.quadratic_overlap}:{config.retrieval_neighbors}:{config.seed}:" \
                f"{config.retrieval_expansion_rounds}:{config.retrieval_expansion_neighbors}:" \
                f"{verification_max_trials(config, matching)}"
    if match_key in state["done"]:
        skipped.append("match")
    else:
        t0 = time.monotonic()
        with pycolmap.Database.open(db_path) as db:
            db.clear_matches()
            db.clear_two_view_geometries()
            n_priors = sum(1 for pp in db.read_all_pose_priors() if pp.has_position())
        mopts = _matching_options(pycolmap, config, guided)
        verify = verification_options(pycolmap, config, matching=matching)
        rep.info(f"matching: {matching}")
        if matching == "spatial" and n_priors == 0:
            raise SfmError(
                f"{input_dir}: spatial matching needs GPS positions in the images' EXIF, "
                "and none of these images has one; use matching=exhaustive or sequential")
        if matching == "vocab_tree" or any(" " in n for n in image_names):
            # No pair plan (vocab tree), or names a pair list cannot hold: one call, no count.
            StageReporter("sfm", events).start_steps("match image pairs", None)
            _match_in_one_call(pycolmap, matching, config, db_path, mopts, verify)
        else:
            if matching == "retrieval":
                pairs, ranked = _retrieve(pycolmap, config, db_path, events)
            else:
                pairs = plan_pairs(pycolmap, matching, config, db_path)
            rep.info(f"{len(pairs)} image pairs planned ({matching}; exhaustive would be "
                     f"{num_images * (num_images - 1) // 2})", planned_pairs=len(pairs))
            match_pairs(pycolmap, db_path, pairs, mopts, work, events, verify)
            if ranked is not None:
                matched = _expand(pycolmap, config, db_path, ranked, {tuple(p) for p in pairs},
                                  mopts, verify, work, events, rep)
                _bridge_groups(pycolmap, config, db_path, ranked, matched,
                               mopts, verify, work, events, rep)
        with pycolmap.Database.open(db_path) as db:
            n_pairs = db.num_verified_image_pairs()
        rep.info(f"{n_pairs} verified image pairs", verified_pairs=n_pairs)
        seconds["match"] = round(time.monotonic() - t0, 3)
        state["done"] = [d for d in state["done"] if not d.startswith("match:")] + [match_key]
        save_state()
    rep.step(2)

    # 3. Mapping, with remedies while images that can be posed are left out.
    t0 = time.monotonic()
    start_loading()  # the undistortion's resampler loads while the mapper leaves cores idle
    graph = ViewGraph.from_database(pycolmap, db_path)
    target = set(graph.largest)
    if len(graph.components) > 1:
        rep.info(f"verified view graph: {len(graph.components)} groups of overlapping photos "
                 f"(sizes {[len(c) for c in graph.components][:10]}); the largest, "
                 f"{len(target)} photos, is what can be posed together",
                 **graph.summary())
    if priors is not None:
        rec = triangulate_with_priors(pycolmap, priors, db_path, image_dir,
                                      work / "models" / "priors",
                                      refine=config.pose_prior_refine,
                                      num_threads=config.num_threads, rep=rep)
        best, method, n_models, attempts = rec, "known poses", 1, []
    else:
        def rematch(left: set[str]) -> tuple[int, set[str]]:
            nonlocal ranked, graph
            if ranked is None:
                _, ranked = _retrieve(pycolmap, config, db_path, events)
            lonely = sorted(n for n in left if not graph.neighbors.get(n))
            if first_octave == 0 and lonely and views is None:
                # extracted at octave 0, a photo may lack the finer features that link it
                got = replace_features(pycolmap, db_path, image_dir, lonely,
                                       _extraction_options(pycolmap, config, peak, -1),
                                       _reader_options(pycolmap, config), work)
                rep.info(f"{len(got)} photos with no verified neighbour extracted again at "
                         f"SIFT octave -1 (finer features): "
                         + ", ".join(f"{n} {k}" for n, k in got.items()),
                         extracted_again=got)
            more = _rematch_plan(left, ranked, 3 * config.retrieval_neighbors,
                                 prefer=set(graph.largest))
            n = rematch_pairs(pycolmap, db_path, more, _matching_options(pycolmap, config, True),
                              verification_options(pycolmap, config, matching=matching),
                              work, events)
            graph = ViewGraph.from_database(pycolmap, db_path)
            return n, set(graph.largest)

        out = map_complete(pycolmap, config, db_path, work, events, num_images,
                           target, mapping=mapping, rig=views is not None,
                           rematch=None if views is not None else rematch,
                           all_names=set(graph.names),
                           first_model_only=matching == "retrieval")
        best, method, n_models, attempts = (out.model, out.method, out.num_models,
                                            out.attempts)
        target = set(graph.largest)
    seconds["map"] = round(time.monotonic() - t0, 3)
    n_reg = 0 if best is None else best.num_reg_images()
    reg_names = registered_names(best)
    left_out = [graph.explain(n, reg_names) if n in graph.num_features
                else _not_read(n, image_dir, config) for n in image_names if n not in reg_names]
    if best is None or n_reg < _MIN_REGISTERED:
        raise SfmError(
            f"{image_dir}: only {n_reg} of {num_images} images could be registered "
            f"(at least {_MIN_REGISTERED} are needed).\n" + _reasons_text(left_out)
            + "\n  " + _HINTS)
    if n_reg < MIN_REGISTERED_FRACTION * num_images and not config.allow_partial:
        _write_report(work, graph, left_out, attempts)
        raise SfmError(
            f"{image_dir}: only {n_reg} of {num_images} photos could be posed, fewer than "
            f"half; the scene would be missing most of what was photographed.\n"
            + _reasons_text(left_out) + "\n  " + _HINTS
            + "\n  To go on with the partial scene anyway, set allow_partial "
              "(--allow-partial).")
    dropped = 0
    if config.drop_guided_two_view_points:
        dropped = drop_guided_two_view_points(pycolmap, best, db_path,
                                              config.guided_two_view_max_depth_ratio)
        if dropped:
            why = ("" if config.guided_two_view_max_depth_ratio is None
                   else ", at a depth unlike the points around them,")
            rep.info(f"{dropped} points seen in only two photos through a guided match "
                     f"alone{why} left out of the sparse points", dropped_points=dropped)
    rep.step(3)

    # 4. Undistort to PINHOLE (COLMAP's cameras and warp; scene/undistort.py).
    t0 = time.monotonic()
    und = work / "undistorted"
    shutil.rmtree(und, ignore_errors=True)
    sub = StageReporter("sfm", events)
    sub.start_steps("undistort images", n_reg)
    undistort_reconstruction(pycolmap, best, image_dir, und, config.num_threads,
                             lambda k, n: sub.step(k))
    und_sparse0 = und / "sparse" / "0"
    und_sparse0.mkdir(parents=True, exist_ok=True)
    for p in list((und / "sparse").iterdir()):
        if p.is_file():
            p.rename(und_sparse0 / p.name)
    seconds["undistort"] = round(time.monotonic() - t0, 3)
    rep.step(4)

    result = SfmResult(
        workspace=str(workspace),
        num_images=num_images,
        num_registered=n_reg,
        num_points=best.num_points3D(),
        mean_reprojection_error=round(float(best.compute_mean_reprojection_error()), 4),
        mean_track_length=round(float(best.compute_mean_track_length()), 3),
        unregistered=[n for n in image_names if n not in reg_names],
        matching=matching,
        mapping="known poses" if priors is not None else mapping,
        num_models=n_models,
        relaxed=method not in ("incremental", "global", "known poses"),
        seconds=seconds,
        skipped_steps=skipped,
        config=json.loads(config.model_dump_json()),
        method=method,
        attempts=attempts,
        poseable=len(target),
        view_graph=graph.summary(),
        left_out=left_out,
        peak_threshold=peak,
        first_octave=first_octave,
        dropped_points=dropped,
    )
    _publish(workspace, und, work)
    atomic_write_text(workspace / "sfm.json", json.dumps(asdict(result), indent=2))
    if n_reg < WARN_REGISTERED_FRACTION * num_images:
        rep.warning(
            f"ONLY {n_reg} OF {num_images} PHOTOS COULD BE POSED ({100 * n_reg / num_images:.0f} "
            "%): the scene will miss what only the others show.\n" + _reasons_text(left_out),
            left_out=left_out)
    elif left_out:
        rep.warning(f"{len(left_out)} of {num_images} photos could not be posed:\n"
                    + _reasons_text(left_out), left_out=left_out)
    rep.finished(f"{n_reg}/{num_images} images registered, {result.num_points} points, "
                 f"{result.mean_reprojection_error:.3f} px", **{
                     k: v for k, v in asdict(result).items()
                     if k in ("num_registered", "num_images", "num_points",
                              "mean_reprojection_error")})
    return result


def resolve_pose_prior(pose_prior: Path, media: Path) -> Path:
    """``pose_prior`` as an absolute path: a relative one is taken inside the media folder (or
    the folder of a media file), so a job's pose file travels with its photos.

    Raises:
        InputError: a relative path that leads out of the media folder.
    """
    path = Path(pose_prior)
    if path.is_absolute():
        return path
    from ..paths import resolve_inside

    media = Path(media)
    base = media if media.is_dir() else media.parent
    return resolve_inside(base, str(pose_prior), "sfm.pose_prior")


def _load_priors(config: SfmConfig, manifest: dict[str, Any], media: Path,
                 rep: StageReporter) -> list[PosePrior] | None:
    """The pose priors of ``config.pose_prior`` (None when not set).

    A relative path is resolved inside the media folder the frames came from (the ingest
    manifest's ``source``, else ``media``), so a job's pose file travels with its photos.
    """
    if config.pose_prior is None:
        return None
    path = resolve_pose_prior(config.pose_prior, Path(manifest.get("source") or media))
    priors = read_pose_priors(path, world_to_cam=config.pose_prior_world_to_cam)
    rep.info(f"{len(priors)} pose priors from {path}: points are triangulated with these "
             "poses (no incremental mapping)", pose_priors=len(priors))
    return priors


def _equirect_views(config: SfmConfig, input_dir: Path, names: list[str],
                    rep: StageReporter) -> list[Any] | None:
    """The pinhole views to split 360 frames into, or None for ordinary photos.

    360 when ``camera_model`` is ``equirectangular``, or when ``equirect_detect`` is on and
    every frame is 2:1 (the message says so and how to turn it off).

    Raises:
        InputError: camera_model equirectangular with a frame that is not 2:1.
    """
    from PIL import Image

    from ..ingest.equirect import is_equirect_size, make_views

    if not names:
        return None
    explicit = config.camera_model == "equirectangular"
    if not explicit and not config.equirect_detect:
        return None
    sizes = {}
    for n in names:
        with Image.open(input_dir / n) as im:
            sizes[n] = im.size
    bad = [n for n, (w, h) in sizes.items() if not is_equirect_size(w, h)]
    if bad:
        if explicit:
            w, h = sizes[bad[0]]
            raise InputError(input_dir / bad[0], f"{w}x{h} is not an equirectangular (2:1) "
                                                 "image, but camera_model is equirectangular",
                             hint="give 2:1 360 frames, or choose a pinhole camera model")
        return None
    w, h = sizes[names[0]]
    size = config.equirect_size or max(32, w // 4)
    views = make_views(config.equirect_layout, size=size,
                       fov_deg=None if config.equirect_layout == "cube" else config.equirect_fov,
                       num_views=config.equirect_num_views)
    how = ("camera_model equirectangular" if explicit else
           f"every frame is 2:1 ({w}x{h}), so they are taken as equirectangular 360 frames "
           "(set equirect_detect false to treat them as ordinary photos)")
    rep.info(f"{how}: each of the {len(names)} frames becomes {len(views)} pinhole views "
             f"({config.equirect_layout}, {size}x{size} px) sharing one pose",
             equirect=True, views=len(views), view_size=size)
    return views


def _split_360(frames: list[str], input_dir: Path, views: list[Any], out_dir: Path,
               events: EventCallback | None) -> None:
    """Resample every 360 frame into its pinhole views under ``out_dir`` (k of n)."""
    from ..ingest.equirect import split_frame

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    sub = StageReporter("sfm", events)
    sub.start_steps("split 360 frames", len(frames))
    for k, n in enumerate(frames, 1):
        split_frame(input_dir / n, views, out_dir)
        sub.step(k)


def _match_in_one_call(pycolmap: Any, matching: str, config: SfmConfig, db_path: Path,
                       mopts: Any, verify: Any) -> None:
    """pycolmap's own matcher for ``matching`` (used when no pair list can be planned)."""
    if matching in ("exhaustive", "retrieval"):
        pycolmap.match_exhaustive(db_path, matching_options=mopts, verification_options=verify)
    elif matching == "sequential":
        popts = pycolmap.SequentialPairingOptions()
        popts.overlap = config.sequential_overlap
        popts.quadratic_overlap = config.quadratic_overlap
        pycolmap.match_sequential(db_path, matching_options=mopts, pairing_options=popts,
                                  verification_options=verify)
    elif matching == "spatial":
        pycolmap.match_spatial(db_path, matching_options=mopts, verification_options=verify)
    else:  # vocab_tree
        popts = pycolmap.VocabTreePairingOptions()
        popts.vocab_tree_path = str(config.vocab_tree_path)
        pycolmap.match_vocabtree(db_path, matching_options=mopts, pairing_options=popts,
                                 verification_options=verify)


_HINTS = ("hints: take photos with more overlap (each part of the scene in 3+ photos, "
          "~60-80% overlap between neighbours), keep the subject sharp and well lit, avoid "
          "plain untextured backgrounds and motion blur, and leave out photos of other "
          "subjects")


def _not_read(name: str, image_dir: Path, config: SfmConfig) -> dict[str, Any]:
    """The reason for a photo COLMAP left out of its database (not read at all)."""
    from PIL import Image

    info: dict[str, Any] = {"image": name, "features": 0, "verified_neighbors": 0,
                            "component": None, "component_size": 0, "reason": "not_read"}
    try:
        with Image.open(image_dir / name) as im:
            w, h = im.size
    except OSError as e:
        info["message"] = f"the file could not be read as an image ({e})"
        return info
    if config.single_camera:
        info["message"] = (f"its size ({w}x{h}) differs from the other photos', and the photos "
                           "are taken as one camera (single_camera): photos of another camera "
                           "or crop need single_camera false")
    else:
        info["message"] = f"COLMAP could not read it ({w}x{h})"
    return info


def _reasons_text(left_out: list[dict[str, Any]], limit: int = 30) -> str:
    """One line per photo left out: ``  name: message``."""
    lines = [f"  {d['image']}: {d['message']}" for d in left_out[:limit]]
    if len(left_out) > limit:
        lines.append(f"  ... and {len(left_out) - limit} more (see sfm.json)")
    return "\n".join(lines)


def _write_report(work: Path, graph: ViewGraph, left_out: list[dict[str, Any]],
                  attempts: list[dict[str, Any]]) -> None:
    """The reasons of a refused run, in ``.sfm_work/refused.json`` (sfm.json is untouched)."""
    atomic_write_text(work / "refused.json", json.dumps(
        {"view_graph": graph.summary(), "left_out": left_out, "attempts": attempts}, indent=2))


def _matching_options(pycolmap: Any, config: SfmConfig, guided: bool) -> Any:
    mopts = pycolmap.FeatureMatchingOptions()
    mopts.guided_matching = guided
    mopts.num_threads = config.num_threads
    mopts.use_gpu = bool(pycolmap.has_cuda)  # GPU SIFT matching with the CUDA build
    return mopts


def _retrieve(pycolmap: Any, config: SfmConfig, db_path: Path, events: EventCallback | None
              ) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """Retrieval pairs (with a "rank similar images" progress count)."""
    sub = StageReporter("sfm", events)
    started = {"n": None}

    def progress(k: int, n: int) -> None:
        if started["n"] != n:
            sub.start_steps("rank similar images", n)
            started["n"] = n
        sub.step(k)

    return retrieval_pairs(pycolmap, db_path, config.retrieval_neighbors, config.seed,
                           progress)


def _rematch_plan(left: set[str], ranked: dict[str, list[str]], per_image: int,
                  prefer: set[str] | None = None) -> list[tuple[str, str]]:
    """Pairs of every left-over image with its ``per_image`` most similar images, taken
    from ``prefer`` (the main group) first when given."""
    pairs: set[tuple[str, str]] = set()
    for a in sorted(left):
        cands = ranked.get(a, [])
        if prefer:
            cands = [b for b in cands if b in prefer] + [b for b in cands if b not in prefer]
        for b in cands[:per_image]:
            pairs.add((min(a, b), max(a, b)))
    return sorted(pairs)


def _expand(pycolmap: Any, config: SfmConfig, db_path: Path, ranked: dict[str, list[str]],
            matched: set[tuple[str, str]], mopts: Any, verify: Any, work: Path,
            events: EventCallback | None, rep: StageReporter) -> set[tuple[str, str]]:
    """``config.retrieval_expansion_rounds`` rounds of query expansion over the verified view
    graph (:func:`~.retrieval.expansion_pairs`); returns every pair matched so far."""
    matched = set(matched)
    rounds = config.retrieval_expansion_rounds
    for r in range(rounds):
        graph = ViewGraph.from_database(pycolmap, db_path)
        plan = expansion_pairs(graph.neighbors, ranked, matched,
                               config.retrieval_expansion_neighbors)
        if not plan:
            break
        rep.info(f"query expansion, round {r + 1} of {rounds}: matching {len(plan)} pairs of "
                 "photos that overlap a common photo", expansion_pairs=len(plan))
        match_pairs(pycolmap, db_path, plan, mopts, work, events, verify,
                    label=f"match neighbours of neighbours ({r + 1}/{rounds})")
        matched.update(plan)
    return matched


def _bridge_groups(pycolmap: Any, config: SfmConfig, db_path: Path,
                   ranked: dict[str, list[str]], matched: set[tuple[str, str]], mopts: Any,
                   verify: Any, work: Path, events: EventCallback | None,
                   rep: StageReporter) -> None:
    """Match every photo outside the largest group of the view graph with its most similar
    photos inside it.

    Retrieval alone can close a group on itself: near-identical photos (video frames in a
    photo collection) rank each other first, so their k pairs never reach the rest
    (statue_of_liberty, k = 15: 9 video frames formed their own group). One round of
    cross-group pairs, ``retrieval_neighbors`` per photo, links such groups when they do
    overlap the main one.
    """
    graph = ViewGraph.from_database(pycolmap, db_path)
    if len(graph.components) < 2:
        return
    main = set(graph.largest)
    outside = set(graph.names) - main
    plan = [p for p in _rematch_plan(outside, ranked, config.retrieval_neighbors, prefer=main)
            if p not in matched and (p[0] in main) != (p[1] in main)]
    if not plan:
        return
    rep.info(f"{len(outside)} photos outside the main group of {len(main)}: matching them with "
             f"their most similar photos in it ({len(plan)} pairs)")
    match_pairs(pycolmap, db_path, plan, mopts, work, events, verify,
                label="link separate groups")


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
