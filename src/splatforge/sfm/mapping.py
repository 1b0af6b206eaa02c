"""Mapping that does not settle for the largest fragment.

:func:`map_complete` runs the mapper, then, while the kept model leaves out images of the
largest component of the verified view graph (the images that can be posed together at all),
climbs a ladder of remedies and keeps whichever model registers most (then the lowest mean
reprojection error). Each rung is recorded in ``attempts`` with its outcome, so ``sfm.json``
says what was tried, what won and what lost:

1. ``incremental``: COLMAP's incremental mapper with its default thresholds, seeded. On a
   sparse view graph (retrieval matching) it stops at its first model, and the ladder is
   *guarded*: the photos that model leaves out are re-matched (rung 3, default thresholds)
   before any relaxed threshold is tried.
2. ``extend``: the mapper continues from the kept model with relaxed thresholds
   (:data:`RELAXED_MAPPER`, ``input_path``): the cheapest remedy, one pass over the rest.
3. ``rematch+extend``: the left-over images are matched against more neighbours (their next
   most similar images by retrieval, with guided matching), then the mapper continues from
   the kept model (``input_path``): it registers what it can into that model and
   bundle-adjusts. Unguarded it comes after ``extend``, with relaxed thresholds, and before
   mapping from scratch because it costs a pass over the few left-over photos, not a whole
   mapping (statue_of_liberty: 20 s against 67 s for the relaxed mapping, which registered 2
   of the 7 left over). Guarded it comes before ``extend``, with the default thresholds: a
   photo that 3 inliers suffice to pose can be posed wrongly, and once posed it is not
   re-matched (statue_of_liberty, 135 photos against the dataset's poses: relaxed first, 29
   photos more than 10 degrees off; re-matching first, after query expansion, 11, with every
   photo posed by the default thresholds; README "SfM at scale", sixteenth round).
4. ``relaxed``: the mapper from scratch with relaxed thresholds.
5. ``global``: global mapping (GLOMAP, merged in COLMAP) over the same view graph.

With ``mapping="global"`` (and ``auto`` from ``global_min_images`` images on) the first rung is
global mapping and the incremental rungs follow
when it misses photos (measured: on 16 plush_dog photos matched unguided, GLOMAP's rotation
averaging failed outright).

The mapper is seeded (``random_seed`` in the pipeline, mapper and triangulator options) and runs
on :func:`mapping_threads` threads: one for incremental mapping, with which the same database
and options give the same model in every run, which COLMAP's multi-threaded incremental mapper
does not (measured: two 2-thread runs of the shipped sample on one database differed by up to
54 degrees on one photo, two 1-thread runs by 2e-6 degrees); all cores for global mapping,
whose 2-thread runs agree (within 4e-10 in every quaternion and translation component on fox,
260 video frames, beer_phone and sceaux_castle).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import SfmConfig
from ..events import EventCallback, StageReporter
from .rig import RIG_MAPPER_OPTIONS

# Relaxed incremental-mapper thresholds that register all 84 plush_dog photos where the
# defaults register 47 (measured with pycolmap 4.2.1).
RELAXED_MAPPER = {
    "init_min_tri_angle": 2.0,
    "init_min_num_inliers": 4,
    "abs_pose_min_num_inliers": 3,
    "abs_pose_max_error": 8.0,
}


@dataclass
class MapOutcome:
    """The kept model and what was tried.

    Attributes:
        model: the kept ``pycolmap.Reconstruction`` (None when nothing was reconstructed).
        method: the rung that produced it (``incremental``, ``extend``, ``relaxed``,
            ``rematch+extend``, ``global``).
        num_models: models the winning rung produced.
        attempts: one dict per rung: ``method``, ``registered``, ``models``,
            ``reprojection_error`` (px), ``seconds``, ``multiple_models`` (False: the rung
            stopped at its first model), ``thresholds`` (``default`` or ``relaxed``),
            ``kept``.
    """

    model: Any | None
    method: str
    num_models: int
    attempts: list[dict[str, Any]] = field(default_factory=list)


def model_size(rec: Any) -> tuple[int, int]:
    """(registered images, 3D points) of a reconstruction."""
    return (rec.num_reg_images(), rec.num_points3D())


def _score(rec: Any | None) -> tuple[int, float]:
    """Larger is better: registered images, then lower reprojection error."""
    if rec is None:
        return (0, 0.0)
    return (rec.num_reg_images(), -float(rec.compute_mean_reprojection_error()))


def registered_names(rec: Any | None) -> set[str]:
    """Names of the images with a pose in ``rec``."""
    if rec is None:
        return set()
    return {img.name for img in rec.images.values() if img.has_pose}


def resolve_mapping(config: SfmConfig, num_images: int, rig: bool = False) -> str:
    """The first mapper for ``num_images`` images: ``config.mapping``, with ``auto`` resolved to
    ``global`` from ``config.global_min_images`` images on, else ``incremental``; ``auto``
    maps a rig of 360 views (``rig``) incrementally, with the rig options."""
    if config.mapping != "auto":
        return config.mapping
    if rig:
        return "incremental"
    return "global" if num_images >= config.global_min_images else "incremental"


def global_max_normalized_error(pycolmap: Any, config: SfmConfig, db_path: Path) -> float:
    """Global mapping's track filter (``max_normalized_reproj_error``, a reprojection error
    divided by the focal length) for ``config.filter_max_reproj_error`` pixels at the
    extraction size: ``filter_max_reproj_error * s / f``, with ``f`` the median focal length of
    the database's cameras (px) and ``s = max(1, longest side / max_image_size)`` the
    downscale of extraction, since keypoints from downscaled images are that much less
    precise in full-size pixels.

    GLOMAP's own default is 0.01 (10 px at f = 1000). Measured on one database each (2 cores):
    lego 0.161 -> 0.149 degrees median rotation error and 0.66 -> 0.45 px; fox extracted at
    1024 px 0.172 -> 0.187 degrees (0.253 with s taken as 1); 260 beer frames 0.71 -> 0.46 px.

    Raises:
        ValueError: the database holds no camera.
    """
    with pycolmap.Database.open(db_path) as db:
        cams = db.read_all_cameras()
    if not cams:
        raise ValueError(f"{db_path}: no camera in the database")
    focal = float(np.median([c.mean_focal_length() for c in cams]))
    longest = max(max(c.width, c.height) for c in cams)
    scale = max(1.0, longest / config.max_image_size)
    return config.filter_max_reproj_error * scale / focal


def mapping_threads(config: SfmConfig, method: str) -> int:
    """Threads for one mapper run (-1 = all cores): ``config.mapping_threads`` when set, else
    1 for the incremental methods and all cores for ``global`` (see the module docstring)."""
    if config.mapping_threads is not None:
        return config.mapping_threads
    return -1 if method == "global" else 1


def _incremental_options(pycolmap: Any, config: SfmConfig, relaxed: bool, rig: bool) -> Any:
    threads = mapping_threads(config, "incremental")
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = threads
    opts.random_seed = config.seed
    opts.mapper.random_seed = config.seed
    opts.mapper.num_threads = threads
    opts.triangulation.random_seed = config.seed
    opts.mapper.filter_max_reproj_error = config.filter_max_reproj_error
    if relaxed:
        for k, v in RELAXED_MAPPER.items():
            setattr(opts.mapper, k, v)
    if rig:
        for k, v in RIG_MAPPER_OPTIONS.items():
            setattr(opts, k, v)
    return opts


def empty_image_dir(out: Path) -> Path:
    """An empty folder ``out/no_images`` (created) to give COLMAP's mappers and triangulator as
    their image folder. They read the images only to colour the points, which the undistortion
    step does while it reads them anyway (``scene/undistort.py``): an empty folder saves a
    second read of every image (1.1 s of 22 s of global mapping on 260 frames of 720x1280)."""
    path = out / "no_images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_mapper(pycolmap: Any, config: SfmConfig, db_path: Path, out: Path,
               events: EventCallback | None, num_images: int, method: str,
               rig: bool = False, input_path: Path | None = None,
               multiple_models: bool = True) -> dict[int, Any]:
    """One mapper run; reports "register images" k of n through ``events``.

    Args:
        method: ``incremental`` | ``relaxed`` | ``global``; ``relaxed`` with ``input_path``
            continues from the model there.
        multiple_models: incremental methods: when the model stops growing, start further
            models from new initial pairs (COLMAP's default); False stops at the first.
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    sub = StageReporter("sfm", events)
    no_images = empty_image_dir(out)
    if method == "global":
        opts = pycolmap.GlobalPipelineOptions()
        opts.num_threads = opts.mapper.num_threads = mapping_threads(config, "global")
        opts.random_seed = config.seed
        opts.mapper.random_seed = config.seed
        opts.mapper.rotation_averaging.random_seed = config.seed
        opts.mapper.global_positioning.random_seed = config.seed
        opts.mapper.retriangulation.random_seed = config.seed
        opts.mapper.max_normalized_reproj_error = global_max_normalized_error(
            pycolmap, config, db_path)
        sub.start_steps("global mapping", None)
        return pycolmap.global_mapping(db_path, no_images, out, opts)
    opts = _incremental_options(pycolmap, config, relaxed=method != "incremental", rig=rig)
    opts.multiple_models = multiple_models
    counter = {"n": 0}
    label = "register images" + ("" if method == "incremental" else f" ({method})")
    sub.start_steps(label, num_images)

    def next_image() -> None:
        counter["n"] += 1
        sub.step(min(counter["n"], num_images))

    kw: dict[str, Any] = {"next_image_callback": next_image}
    if input_path is not None:
        kw["input_path"] = input_path
    return pycolmap.incremental_mapping(db_path, no_images, out, opts, **kw)


def map_complete(pycolmap: Any, config: SfmConfig, db_path: Path, work: Path,
                 events: EventCallback | None, num_images: int, target: set[str],
                 mapping: str = "incremental", rig: bool = False,
                 rematch: Callable[[set[str]], tuple[int, set[str]]] | None = None,
                 all_names: set[str] | None = None,
                 first_model_only: bool = False) -> MapOutcome:
    """Map, then climb the remedy ladder until every image of ``target`` is registered.

    Args:
        config: SfM options (``relaxed_retry``, ``seed``, ``mapping_threads``).
        db_path: the matched COLMAP database.
        work: a scratch folder for the models of each rung.
        num_images: images in the database (for the progress count).
        target: the images that can be posed (the largest view-graph component).
        mapping: the first rung, ``incremental`` or ``global`` (``config.mapping`` resolved
            for the image count: :func:`resolve_mapping`).
        rig: apply the rig options (360 frames).
        rematch: matches the given left-over images against more neighbours (guided) and
            returns the number of pairs matched and the new ``target`` (the largest
            component of the view graph after it); the ``rematch+extend`` rung runs only
            when given.
        all_names: every image name; images outside ``target`` are re-matched too (a photo
            with no verified neighbour may gain one with guided matching).
        first_model_only: the guarded ladder (module docstring): an ``incremental`` first
            rung stops at its first model (the one grown from the best initial pair with the
            default thresholds), the photos it leaves out are re-matched and the model is
            extended with the default thresholds, and only then with relaxed ones. For
            sparse view graphs (retrieval matching), where the mapper would spend its time
            starting more models that the extension does not use (statue_of_liberty before
            query expansion: 53 photos in 4 models, 120 s, against 3 photos in 1.3 s).

    Returns:
        The :class:`MapOutcome`; its ``model`` is None when no rung produced a model.
    """
    rep = StageReporter("sfm", events)
    models = work / "models"
    shutil.rmtree(models, ignore_errors=True)
    best: Any | None = None
    best_method, best_models = mapping, 0
    attempts: list[dict[str, Any]] = []

    def attempt(method: str, input_path: Path | None = None,
                multiple_models: bool = True, relaxed: bool = False) -> Any | None:
        nonlocal best, best_method, best_models
        t0 = time.monotonic()
        recs = run_mapper(pycolmap, config, db_path, models / method.replace("+", "_"),
                          events, num_images, "global" if method == "global" else
                          ("relaxed" if relaxed else "incremental"),
                          rig=rig, input_path=input_path, multiple_models=multiple_models)
        cand = max(recs.values(), key=model_size) if recs else None
        row = {"method": method, "registered": 0 if cand is None else cand.num_reg_images(),
               "models": len(recs),
               "reprojection_error": None if cand is None else
               round(float(cand.compute_mean_reprojection_error()), 4),
               "seconds": round(time.monotonic() - t0, 3), "multiple_models": multiple_models,
               "thresholds": "relaxed" if relaxed else "default",
               "kept": False}
        attempts.append(row)
        if cand is not None and _score(cand) > _score(best):
            best, best_method, best_models = cand, method, len(recs)
            for a in attempts:
                a["kept"] = a is row
        return cand

    def missing() -> set[str]:
        return target - registered_names(best)

    def left_over() -> set[str]:  # every image not registered, in target or not
        return (all_names or target) - registered_names(best)

    def extend(method: str, relaxed: bool = True) -> None:
        seed_dir = models / f"kept_for_{method.replace('+', '_')}"
        shutil.rmtree(seed_dir, ignore_errors=True)
        seed_dir.mkdir(parents=True)
        best.write_binary(str(seed_dir))
        attempt(method, input_path=seed_dir, relaxed=relaxed)

    def rematch_and_extend(relaxed: bool) -> None:
        nonlocal target
        left = left_over()
        n_new, target = rematch(left)
        rep.info(f"{len(left)} images left out: matched them against more neighbours "
                 f"({n_new} new pairs) and continued mapping from the kept model with "
                 f"{'relaxed' if relaxed else 'the default'} thresholds")
        extend("rematch+extend", relaxed=relaxed)

    def can_rematch() -> bool:
        return rematch is not None and best is not None and bool(left_over())

    ladder = config.relaxed_retry
    # On a sparse view graph: the first model, re-matching, then the default thresholds.
    guarded = first_model_only and ladder and not rig
    attempt(mapping, multiple_models=not guarded)
    if guarded and can_rematch():
        rematch_and_extend(relaxed=False)
    if ladder and missing() and best is not None and not rig:
        # Cheapest first: continue from the kept model with relaxed thresholds (registers
        # what it can of the rest, then bundle-adjusts) before mapping again from scratch.
        rep.info(f"{len(target - missing())}/{len(target)} poseable images registered: "
                 "registering the rest into the kept model with relaxed thresholds")
        extend("extend")
    if ladder and not guarded and can_rematch():
        rematch_and_extend(relaxed=True)
    if ladder and missing():  # also after a global mapping that missed photos
        rep.info(f"{len(target - missing())}/{len(target)} poseable images registered: "
                 f"mapping again with relaxed thresholds {RELAXED_MAPPER}")
        attempt("relaxed", relaxed=True)
    if ladder and missing() and mapping != "global" and not rig:
        rep.info(f"{len(missing())} poseable images still left out: trying global mapping")
        attempt("global")
    return MapOutcome(best, best_method, best_models, attempts)
