"""Configuration models, one per stage.

The same pydantic models back the CLI flags (through ``tyro``), the HTTP request bodies and the
job-JSON files, so a name means the same thing everywhere. Invalid values raise
:class:`splatforge.errors.ConfigError` naming the field and its allowed range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

CameraModelName = Literal[
    "SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV",
    "OPENCV_FISHEYE",
]


class StageConfig(BaseModel):
    """Base of the stage configs: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def __init__(self, **data: Any) -> None:
        # Direct construction (the CLI, Python callers) reports like parse_config does;
        # model_validate (FastAPI bodies) keeps pydantic's structured errors.
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, type(self))) from None


class IngestConfig(StageConfig):
    """Turning media (image folder, zip, video) into a folder of frames."""

    max_num_images: int = Field(
        300, ge=3, le=100_000,
        description="Video: number of frames to extract (AWS toolbox default 300).")
    start_time: float | None = Field(
        None, ge=0.0, description="Video: first second to consider (default: the start).")
    stop_time: float | None = Field(
        None, gt=0.0, description="Video: last second to consider (default: the end).")
    blur_filter_percent: float = Field(
        0.0, ge=0.0, lt=100.0,
        description="Image folders: drop this percentage of the blurriest images "
                    "(variance of the Laplacian), as the AWS toolbox's blur filter does.")
    strict: bool = Field(
        False, description="Stop at the first unreadable image instead of skipping it.")
    min_images: int = Field(
        3, ge=1, le=1000, description="Fewer usable images than this is an error.")

    @model_validator(mode="after")
    def _times_ordered(self) -> "IngestConfig":
        if (self.start_time is not None and self.stop_time is not None
                and self.stop_time <= self.start_time):
            raise ValueError(
                f"stop_time ({self.stop_time}) must be greater than start_time "
                f"({self.start_time})")
        return self


class SfmConfig(StageConfig):
    """Structure from motion with pycolmap (COLMAP 3.x/4.x, GLOMAP merged as global mapping)."""

    camera_model: CameraModelName | Literal["equirectangular"] = Field(
        "SIMPLE_RADIAL",
        description="COLMAP camera model fitted during SfM; equirectangular = 360 frames, "
                    "each resampled into pinhole views (equirect_layout) that share one pose "
                    "(a COLMAP rig).")
    equirect_detect: bool = Field(
        True, description="Treat frames that are all 2:1 as equirectangular 360 frames (with "
                          "a message saying so); false = only with "
                          "camera_model=equirectangular.")
    equirect_layout: Literal["cube", "ring"] = Field(
        "cube", description="360 frames: cube = six 90-degree cube faces; ring = "
                            "equirect_num_views views around the horizon plus up and down.")
    equirect_num_views: int = Field(
        8, ge=3, le=36, description="360 frames, ring layout: views around the horizon.")
    equirect_fov: float = Field(
        90.0, ge=30.0, le=150.0,
        description="360 frames, ring layout: field of view of each view in degrees (the cube "
                    "layout is always 90).")
    equirect_size: int | None = Field(
        None, ge=32, le=8192,
        description="360 frames: width = height of each pinhole view in pixels (default: a "
                    "quarter of the equirectangular width, which keeps its resolution at the "
                    "view centre).")
    pose_prior: Path | None = Field(
        None, description="Known poses instead of incremental mapping: a transforms.json "
                          "(nerfstudio / instant-ngp / ARKit-style, camera-to-world in OpenGL "
                          "axes) or a folder with a COLMAP model (itself, sparse/0 or sparse). "
                          "A relative path is taken inside the input media folder. Points are "
                          "triangulated with the poses fixed.")
    pose_prior_world_to_cam: bool = Field(
        False, description="pose_prior transforms.json holds world-to-camera matrices (the AWS "
                           "toolbox's poseIsWorldToCam).")
    pose_prior_refine: bool = Field(
        False, description="After triangulating with the known poses, refine poses and points "
                           "with a bundle adjustment (intrinsics fixed).")
    single_camera: bool = Field(
        True, description="All images share one camera (one phone or one video).")
    max_image_size: int = Field(
        3200, ge=64, le=20_000,
        description="SIFT extraction: images are downscaled so the longer side is at most "
                    "this many pixels (by Pillow, on all cores; the keypoints and camera are "
                    "then brought back to full size as COLMAP does).")
    max_num_features: int = Field(
        8192, ge=64, le=65_536, description="SIFT extraction: features kept per image.")
    sift_peak_threshold: float | None = Field(
        None, gt=0.0, le=0.1,
        description="SIFT extraction: the difference-of-Gaussians peak threshold (lower = more "
                    "features). Default: chosen from the extraction size, COLMAP's 0.0067 for "
                    "images extracted at 1000 px or more, 0.002 below (small photos and video "
                    "frames otherwise give too few features to link every photo).")
    sift_first_octave: Literal[-1, 0] | None = Field(
        None,
        description="SIFT extraction: the first octave of the scale space. -1 (COLMAP's "
                    "default) doubles the image first and also finds features finer than a "
                    "pixel; 0 starts at the extraction size, about 3.5x faster (measured on "
                    "720x1280 video frames: 82 against 288 ms per frame on 2 cores, 610 "
                    "against 1586 features). Default: 0 for sets of global_min_images images "
                    "or more extracted at 1000 px or more, where extraction is a large share "
                    "of the time and there are features to spare (photos left with no "
                    "verified neighbour are extracted again at -1 before they are "
                    "re-matched); -1 otherwise.")
    matching: Literal["auto", "exhaustive", "retrieval", "sequential", "spatial",
                      "vocab_tree"] = Field(
        "auto",
        description="auto = exhaustive up to exhaustive_max_images photos, retrieval for larger "
                    "unordered sets, sequential for video frames. retrieval = each image "
                    "matched with its retrieval_neighbors most similar images by a visual "
                    "vocabulary built from the set's own features.")
    exhaustive_max_images: int = Field(
        100, ge=2, le=10_000,
        description="auto matching: exhaustive up to this many images (retrieval above). "
                    "Exhaustive is the more accurate: on lego (100 views) 0.20 degrees median "
                    "rotation error against 0.45 with retrieval.")
    retrieval_neighbors: int = Field(
        15, ge=2, le=1000,
        description="retrieval matching: most similar images matched per image (about "
                    "N x this many pairs instead of N^2 / 2).")
    retrieval_expansion_rounds: int = Field(
        2, ge=0, le=10,
        description="retrieval matching: rounds of query expansion after the retrieval pairs "
                    "are matched: each image is also matched with up to "
                    "retrieval_expansion_neighbors images that its verified neighbours overlap "
                    "(0 = none). Measured on statue_of_liberty (135 photos): the retrieval "
                    "pairs find 472 of the 1362 pairs that exhaustive matching verifies, two "
                    "rounds 869 for 839 more pairs, and the mapper's first model then poses "
                    "119 photos with its default thresholds where it posed 3.")
    retrieval_expansion_neighbors: int = Field(
        5, ge=1, le=1000,
        description="retrieval matching: new pairs per image in each expansion round.")
    sequential_overlap: int = Field(
        10, ge=1, le=1000, description="Sequential matching: neighbours matched per image.")
    quadratic_overlap: bool = Field(
        True, description="Sequential matching: also match images at distances 2^k.")
    vocab_tree_path: Path | None = Field(
        None, description="vocab_tree matching: a local vocabulary-tree file (required; "
                          "splatforge never downloads one).")
    verification_max_trials: int | None = Field(
        None, ge=100, le=1_000_000,
        description="Geometric verification: most RANSAC trials per pair and model (COLMAP's "
                    "default 10000). A pair of photos that overlap reaches RANSAC's confidence "
                    "long before; a pair that does not runs every trial, and such pairs are "
                    "most of what retrieval plans. Default: 2000 with retrieval matching "
                    "(measured on 400 statue_of_liberty pairs, 2 cores: 11.1 s against 21.3 s "
                    "with the same 136 pairs verified and 10383 against 10387 inliers), "
                    "COLMAP's 10000 otherwise.")
    guided_matching: bool | None = Field(
        None, description="Re-match pairs with their estimated two-view geometry (more "
                          "matches, about 1.6x the matching time per pair). Default: on for "
                          "exhaustive matching (small sets, where it decides whether weak "
                          "pairs link) and with pose_prior, off for retrieval and sequential "
                          "matching; left-over photos are always re-matched guided.")
    drop_guided_two_view_points: bool = Field(
        True, description="Leave out of the sparse points those seen in only two photos "
                          "through a match that guided matching alone found (no descriptor "
                          "match backs it) and, with guided_two_view_max_depth_ratio (the "
                          "default), whose depth disagrees with their neighbours'; the poses "
                          "are unchanged. Every such point left out, measured from the same "
                          "poses, 7000 GPU steps: beer_phone 25.0 dB held-out PSNR without "
                          "them against 23.3 with them, plush_dog level, lego 0.17 dB "
                          "lower (35.35 against 35.52). No effect without guided matching.")
    guided_two_view_max_depth_ratio: float | None = Field(
        2.0, ge=1.0, le=100.0,
        description="Of the points drop_guided_two_view_points concerns, keep those whose "
                    "depth in each of their two photos lies within this ratio of the median "
                    "depth of the 8 points nearest to them in that photo (a wrong "
                    "correspondence along the epipolar line reprojects well but lands at a "
                    "wrong depth); None leaves them all out. Default 2: from the same poses "
                    "(README, SfM at scale, nineteenth round), held-out PSNR after 7000 GPU "
                    "steps fox 32.36 dB (all left out: 32.02; all kept: 32.28), beer_phone "
                    "24.55 (24.80; all kept: 23.3); after the short CPU training fox 25.90 "
                    "(24.93), beer_phone 23.68 (23.36), lego 26.55 (26.39), plush_dog 22.78 "
                    "(20.58). beer_phone keeps 1832 of its 2203 such points, fox 12369 of "
                    "13571, lego 1299 of 1367.")
    mapping: Literal["auto", "incremental", "global"] = Field(
        "auto",
        description="incremental (COLMAP), global (GLOMAP, merged in COLMAP), or auto: "
                    "incremental below global_min_images images, global from there on. "
                    "Global mapping solves all rotations, then all positions, then one bundle "
                    "adjustment; incremental mapping adds one image at a time with repeated "
                    "bundle adjustments, whose cost grows fastest with the image count. "
                    "Measured on one database each (2 cores, global with its 2 px track "
                    "filter): lego (100 views) 8.7 s against 31.9 s at 0.149 against 0.131 "
                    "degrees median rotation error; fox (67 frames extracted at 1024 px) 33 s "
                    "against 131 s at 0.187 against 0.190 degrees; 260 video frames 62 s "
                    "against 148 s.")
    global_min_images: int = Field(
        200, ge=3, le=1_000_000,
        description="auto mapping: global mapping from this many images on.")
    filter_max_reproj_error: float = Field(
        2.0, gt=0.0, le=100.0,
        description="Observations whose reprojection error exceeds this many pixels are "
                    "dropped: after each bundle adjustment of incremental mapping (COLMAP's "
                    "Mapper.filter_max_reproj_error, whose default is 4), and from global "
                    "mapping's tracks (at the extraction size; GLOMAP's default is 1 % of the "
                    "focal length). 2 is the more accurate: lego's median rotation error 0.14 "
                    "degrees against 0.22 with 4 (incremental), 0.149 against 0.161 with "
                    "GLOMAP's default (global).")
    relaxed_retry: bool = Field(
        True,
        description="If the kept model leaves out images that overlap the main group, try "
                    "again: relaxed thresholds (init_min_tri_angle 2, init_min_num_inliers 4, "
                    "abs_pose_min_num_inliers 3, abs_pose_max_error 8), then re-matching the "
                    "left-over images against more neighbours and extending the model, then "
                    "global mapping; the model registering most is kept. On sets matched by "
                    "retrieval the re-matching comes first, with the default thresholds, and "
                    "the relaxed ones only after it.")
    allow_partial: bool = Field(
        False, description="Go on with a scene where fewer than half of the images could be "
                           "posed (otherwise SfM stops with the reasons, photo by photo).")
    num_threads: int = Field(-1, ge=-1, le=1024,
                             description="Threads for extraction, retrieval and matching "
                                         "(-1 = all cores). 1 is fully repeatable (10 of 10 "
                                         "runs of the shipped sample identical); with more, "
                                         "rare runs differ (1 of 20 at 2 threads: the same "
                                         "photos, one pose set 0.73 degrees off).")
    mapping_threads: int | None = Field(
        None, ge=-1, le=1024,
        description="Threads for mapping (-1 = all cores). Default: 1 for incremental mapping, "
                    "whose multi-threaded runs are not repeatable (two identical 2-thread runs "
                    "of the shipped sample differed by up to 54 degrees on one photo), and all "
                    "cores for global mapping, whose runs are (two 2-thread runs within 4e-10 "
                    "of each other in every pose on fox, 260 video frames, beer_phone and "
                    "sceaux_castle; 8 s faster on fox's 67 frames, 26-28 s against 35 s). "
                    "Runs on different thread counts may differ slightly.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Random seed for the mapper.")

    @model_validator(mode="after")
    def _vocab_tree_needs_path(self) -> "SfmConfig":
        if self.matching == "vocab_tree" and self.vocab_tree_path is None:
            raise ValueError(
                "matching 'vocab_tree' needs vocab_tree_path: a local vocabulary-tree file "
                "(splatforge does not download one); use exhaustive or sequential otherwise")
        return self


class SceneConfig(StageConfig):
    """How a dataset is read into a :class:`splatforge.scene.Scene`."""

    data_factor: Literal[1, 2, 4, 8] = Field(
        1, description="Image downsampling factor: uses images_N/ when present, else "
                       "downsamples on the fly into the cache.")
    images: str | None = Field(
        None, description="Image folder name inside a COLMAP dataset (INRIA's --images); "
                          "default images/ (or images_N/ with data_factor N).")
    test_every: int = Field(
        8, ge=0, le=10_000,
        description="Hold out every N-th image by sorted name for testing (INRIA llffhold=8); "
                    "0 = no hold-out. Blender datasets use their own split.")
    background: tuple[float, float, float] = Field(
        (1.0, 1.0, 1.0), description="RGB in [0, 1] that RGBA images are composited on.")
    normalize: bool = Field(
        True, description="Centre and scale the scene from the camera positions.")
    cache_dir: Path | None = Field(
        None, description="Where undistorted and downsampled images are cached (default: "
                          "<workspace>/cache for splatforge workspaces, else "
                          "$SPLATFORGE_CACHE_DIR or ~/.cache/splatforge).")
    min_points: int = Field(
        100, ge=0, le=10_000_000,
        description="With fewer SfM points than this, consumers initialise randomly.")
    masks: str | None = Field(
        None, description="Mask folder inside the dataset (white = keep; a mask per image "
                          "named like the image or the image name + .png). Default: a masks/ "
                          "folder beside the images when there is one; 'none' = no masks. "
                          "transforms.json datasets use their frames' mask_path.")

    @model_validator(mode="after")
    def _folder_names(self) -> "SceneConfig":
        # dataset-relative folder names only: the loader resolves them inside the
        # dataset (splatforge.paths.resolve_inside), this refuses the obvious escapes early
        for key in ("images", "masks"):
            v = getattr(self, key)
            if v is None:
                continue
            parts = v.replace("\\", "/").split("/")
            if not v or "\x00" in v or v.startswith(("/", "\\")) or ".." in parts \
                    or (len(v) > 1 and v[1] == ":"):
                raise ValueError(f"{key} must be a folder name inside the dataset, got {v!r}")
        return self

    @model_validator(mode="after")
    def _background_range(self) -> "SceneConfig":
        if any(not 0.0 <= c <= 1.0 for c in self.background):
            raise ValueError(f"background values must lie in [0, 1], got {self.background}")
        return self


M = TypeVar("M", bound=BaseModel)


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """Describe the allowed values of the field at ``loc`` (nested models followed)."""
    cls: Any = model
    info = None
    for part in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            break
        info = cls.model_fields.get(str(part))
        if info is None:
            return ""
        cls = info.annotation
    if info is None:
        return ""
    lo = hi = None
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = f"{m.ge} <="
        elif isinstance(m, annotated_types.Gt):
            lo = f"{m.gt} <"
        elif isinstance(m, annotated_types.Le):
            hi = f"<= {m.le}"
        elif isinstance(m, annotated_types.Lt):
            hi = f"< {m.lt}"
    if lo or hi:
        return "allowed: " + " ".join(p for p in (lo, "value", hi) if p)
    return ""


def format_validation_error(err: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """One line per invalid field: ``name: problem (got X; allowed: lo <= value <= hi)``."""
    lines = []
    for e in err.errors():
        loc = tuple(e.get("loc", ()))
        name = prefix + ".".join(str(p) for p in loc) if loc else (prefix.rstrip(".") or model.__name__)
        detail = e.get("msg", "invalid")
        extras = []
        if "input" in e and loc and e.get("type") != "missing":
            extras.append(f"got {e['input']!r}")
        allowed = _allowed(model, loc)
        if allowed:
            extras.append(allowed)
        lines.append(f"{name}: {detail}" + (f" ({'; '.join(extras)})" if extras else ""))
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_config(model: type[M], data: dict[str, Any] | None = None, prefix: str = "",
                 **overrides: Any) -> M:
    """Validate ``data`` (plus keyword ``overrides``) into ``model``.

    Raises:
        ConfigError: naming every invalid field, its value and its allowed range.
    """
    merged = dict(data or {})
    merged.update(overrides)
    try:
        return model.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, prefix)) from None


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

from typing import Annotated, Union

import tyro  # CLI alias metadata only; tyro is a core dependency
from pydantic import AliasChoices, TypeAdapter

#: Steps at which INRIA 3DGS and gsplat save by default (besides the last step).
DEFAULT_SAVE_STEPS = (7000,)

#: The automatic MCMC budget (TrainConfig.cap_max = None): this many Gaussians per initial
#: Gaussian, clamped to [CAP_MIN, CAP_MAX]. On plush_dog (3122 SfM points -> 46,830) the
#: held-out PSNR stays within 1 dB of its peak over 15k/30k steps, where caps of 100k/300k
#: (and the default strategy's unbounded growth) fall 2-3 dB from it (benchmarks/NOTES.md).
#: CAP_MAX is gsplat's own MCMC default.
CAP_PER_INITIAL = 15
CAP_MIN = 10_000
CAP_MAX = 1_000_000


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class DefaultStrategyConfig(StageConfig):
    """Every setting of gsplat 1.5.3's ``DefaultStrategy`` (INRIA clone/split/prune and opacity
    reset; ``gsplat/strategy/default.py``) as splatforge trains with it.

    Sizes: ``*_scale3d`` are fractions of the scene extent, ``*_scale2d`` fractions of the
    image size, ``grow_grad2d`` the mean screen-space gradient in normalised image units.
    Steps are 1-based (refinement when ``refine_start_iter < step < refine_stop_iter`` and
    ``step % refine_every == 0``).
    """

    name: Literal["default"] = "default"
    prune_opa: float = Field(0.005, gt=0.0, lt=1.0,
                             description="Prune Gaussians with opacity below this; opacity "
                                         "resets clamp to twice it (INRIA: 0.005, 0.01).")
    grow_grad2d: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Clone/split above this mean 2D gradient (None: 0.0002; 0.0008 with "
                    "absgrad, gsplat's AbsGS value).")
    grow_scale3d: float = Field(0.01, gt=0.0, le=10.0,
                                description="Clone below, split above this 3D scale.")
    grow_scale2d: float | None = Field(
        None, gt=0.0, le=10.0,
        description="Split above this 2D scale (needs prune_scale2d > 0; None: prune_scale2d "
                    "/ 3).")
    prune_scale3d: float = Field(0.1, gt=0.0, le=100.0,
                                 description="Prune above this 3D scale (after a reset).")
    prune_scale2d: float = Field(
        0.0, ge=0.0, le=10.0,
        description="Prune above this 2D scale during refinement (0 = off: gsplat's "
                    "refine_scale2d_stop_iter 0).")
    refine_start_iter: int = Field(500, ge=0, le=10_000_000)
    refine_stop_iter: int = Field(15_000, ge=0, le=10_000_000)
    refine_every: int = Field(100, ge=1, le=1_000_000)
    reset_every: int = Field(3000, ge=1, le=10_000_000,
                             description="Opacity reset every this many steps (inside the "
                                         "refinement window).")
    pause_refine_after_reset: int = Field(
        0, ge=0, le=10_000_000,
        description="No refinement for this many steps after a reset (gsplat; 0 = off).")
    absgrad: bool = False
    revised_opacity: bool = Field(False, description="Bulo et al. 2024's opacity on cloning.")
    packed: bool = False

    def resolved_grow_grad2d(self) -> float:
        """``grow_grad2d``, else 2e-4 (8e-4 with absgrad)."""
        if self.grow_grad2d is not None:
            return self.grow_grad2d
        return 8e-4 if self.absgrad else 2e-4

    def resolved_scale2d(self) -> tuple[float, float, int]:
        """``(prune_scale2d, grow_scale2d, refine_scale2d_stop_iter)`` as gsplat takes them:
        when ``prune_scale2d`` is 0 the 2D rule is off (stop step 0) and gsplat's 0.15 / 0.05
        are passed unused."""
        prune = self.prune_scale2d or 0.15
        grow = self.grow_scale2d if self.grow_scale2d is not None else prune / 3.0
        return prune, grow, self.refine_stop_iter if self.prune_scale2d > 0 else 0


class MCMCStrategyConfig(StageConfig):
    """Every setting of gsplat 1.5.3's ``MCMCStrategy`` (Kheradmand et al. 2024;
    ``gsplat/strategy/mcmc.py``) plus splatforge's budget and pruning additions
    (:class:`splatforge.train.strategies.MCMCDensification`)."""

    name: Literal["mcmc"] = "mcmc"
    cap_max: int | None = Field(
        None, ge=1, le=100_000_000,
        description="The Gaussian budget. None: CAP_PER_INITIAL x the initial Gaussians, "
                    "clamped to [CAP_MIN, CAP_MAX].")
    noise_lr: float = Field(5e5, ge=0.0, le=1e12,
                            description="Scale of the SGLD position noise (times the means "
                                        "learning rate; gsplat: 5e5).")
    min_opacity: float = Field(0.005, gt=0.0, lt=1.0,
                               description="Gaussians below this opacity are relocated.")
    refine_start_iter: int = Field(500, ge=0, le=10_000_000)
    refine_stop_iter: int = Field(15_000, ge=0, le=10_000_000)
    refine_every: int = Field(100, ge=1, le=1_000_000)
    noise_after_refine: bool = Field(
        True, description="Keep the position noise after refine_stop_iter (gsplat does).")
    prune_significance: float = Field(0.0, ge=0.0, lt=1.0,
                                      description="Fraction removed at each pruning step.")
    prune_steps: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, description="Steps of significance pruning.")

    def resolved_cap_max(self, num_initial: int) -> int:
        """``cap_max``, else ``CAP_PER_INITIAL * num_initial`` clamped to
        ``[CAP_MIN, CAP_MAX]`` (``num_initial``: Gaussians at initialisation)."""
        if self.cap_max is not None:
            return self.cap_max
        return int(min(CAP_MAX, max(CAP_MIN, CAP_PER_INITIAL * int(num_initial))))


#: The typed choice of strategy settings (gsplat's ``Union[DefaultStrategy, MCMCStrategy]``),
#: told apart by ``name``.
StrategyConfig = Annotated[Union[DefaultStrategyConfig, MCMCStrategyConfig],
                           Field(discriminator="name")]

#: Strategy-config field -> TrainConfig field, where the names differ (the INRIA names).
_STRATEGY_FLAT_NAMES = {"refine_start_iter": "densify_from_iter",
                        "refine_stop_iter": "densify_until_iter",
                        "refine_every": "densification_interval",
                        "reset_every": "opacity_reset_interval",
                        "grow_grad2d": "densify_grad_threshold",
                        "prune_steps": "prune_significance_steps"}


def _flatten_strategy(data: Any) -> Any:
    """``TrainConfig`` input whose ``strategy`` is a strategy config (a dict with ``name``, or
    a :data:`StrategyConfig` instance): ``strategy`` becomes the name and each field given
    there is set on the TrainConfig field it maps to.

    Raises:
        ValueError: a field given both there and at the top level, with different values.
    """
    if not isinstance(data, dict):
        return data
    given = data.get("strategy")
    if isinstance(given, dict):
        given = TypeAdapter(StrategyConfig).validate_python(given)
    if not isinstance(given, (DefaultStrategyConfig, MCMCStrategyConfig)):
        return data
    out = dict(data, strategy=given.name)
    for key in given.model_fields_set - {"name"}:
        flat = _STRATEGY_FLAT_NAMES.get(key, key)
        value = getattr(given, key)
        if flat in out and out[flat] != value:
            raise ValueError(f"strategy.{key} ({value!r}) and {flat} ({out[flat]!r}) disagree")
        out[flat] = value
    return out


class TrainConfig(StageConfig):
    """Training a 3D Gaussian Splatting scene (Kerbl et al. 2023) with gsplat's strategies.

    Defaults follow the INRIA recipe (gaussian-splatting arguments/__init__.py, train.py) and
    gsplat examples/simple_trainer.py where INRIA has none. Steps are 1-based like INRIA
    iterations: "saved at step k" means after k optimiser steps. JSON, HTTP and job files also
    accept the INRIA/gsplat names iterations, save_iterations, position_lr_init,
    position_lr_final, feature_lr, opacity_lr, scaling_lr, rotation_lr and lambda_dssim; the
    CLI accepts --iterations and --save-iterations. The image downsampling factor is the
    scene's data_factor.

    Strategy settings: ``strategy`` names the choice (``--strategy mcmc``); every threshold of
    the chosen strategy is a field here (INRIA names where INRIA has one, gsplat's otherwise)
    and :meth:`strategy_config` gives them as the typed choice :data:`StrategyConfig`
    (:class:`DefaultStrategyConfig` | :class:`MCMCStrategyConfig`), which owns their
    defaults. JSON, HTTP and job files may also give ``strategy`` as such a config, e.g.
    ``{"strategy": {"name": "mcmc", "cap_max": 500000, "noise_lr": 1e5}}``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False,
                              populate_by_name=True)

    # -- schedule ---------------------------------------------------------------------------
    max_steps: Annotated[int, tyro.conf.arg(aliases=("--iterations",))] = Field(
        30_000, ge=1, le=10_000_000, validation_alias=_alias("max_steps", "iterations"),
        description="Number of optimiser steps (INRIA --iterations, gsplat max_steps).")
    save_steps: Annotated[list[Annotated[int, Field(ge=1)]] | None,
                          tyro.conf.arg(aliases=("--save-iterations",))] = Field(
        None, validation_alias=_alias("save_steps", "save_iterations"),
        description="Steps after which point_cloud/iteration_N/point_cloud.ply and "
                    "ckpts/step_N.pt are written (default: 7000 when <= max_steps); the last "
                    "step is always saved, as INRIA appends --iterations to its list.")
    sh_degree: int = Field(3, ge=0, le=3, description="Final spherical-harmonics degree.")
    sh_degree_interval: int = Field(
        1000, ge=1, le=10_000_000,
        description="Raise the SH degree by one every this many steps (INRIA: 1000).")
    # -- densification ----------------------------------------------------------------------
    strategy: Literal["default", "mcmc"] = Field(
        "mcmc", description="mcmc = gsplat MCMCStrategy (Kheradmand et al. 2024) with a Gaussian "
                            "budget (cap_max): relocation instead of clone/split, opacity and "
                            "scale regularisers; default = gsplat DefaultStrategy (INRIA "
                            "clone/split/prune and opacity reset), whose growth makes the "
                            "held-out PSNR of small captures fall as training goes on "
                            "(benchmarks/NOTES.md).")
    densify_from_iter: int = Field(
        500, ge=0, le=10_000_000, description="Refinement starts after this step.")
    densify_until_iter: int = Field(
        15_000, ge=0, le=10_000_000,
        description="Refinement (and opacity reset) stops at this step.")
    densification_interval: int = Field(
        100, ge=1, le=1_000_000, description="Refine every this many steps.")
    densify_grad_threshold: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Mean screen-space gradient above which Gaussians are cloned/split "
                    "(default 0.0002; 0.0008 with absgrad, gsplat's AbsGS value).")
    opacity_reset_interval: int = Field(
        3000, ge=1, le=10_000_000,
        description="default strategy: clamp opacities to 0.01 every this many steps.")
    cap_max: int | None = Field(
        None, ge=1, le=100_000_000,
        description="mcmc: maximum number of Gaussians (the budget). Default: "
                    f"{CAP_PER_INITIAL} x the initial Gaussians (SfM points or init_num_pts), "
                    f"between {CAP_MIN:,} and {CAP_MAX:,}.")
    noise_after_refine: bool = Field(
        True, description="mcmc: keep adding the SGLD position noise after refinement stops "
                          "(densify_until_iter), as gsplat does; false: plain Adam from then on.")
    opacity_reg: float | None = Field(
        None, ge=0.0, le=100.0,
        description="Weight of mean(opacity) in the loss (default 0.01 with mcmc, else 0; "
                    "gsplat simple_trainer's mcmc preset).")
    scale_reg: float | None = Field(
        None, ge=0.0, le=100.0,
        description="Weight of mean(scale) in the loss (default 0.01 with mcmc, else 0).")
    prune_opa: float = Field(
        DefaultStrategyConfig.model_fields["prune_opa"].default, gt=0.0, lt=1.0,
        description="default strategy: prune Gaussians with opacity below this; opacity "
                    "resets clamp to twice it (INRIA: 0.005).")
    grow_scale3d: float = Field(
        DefaultStrategyConfig.model_fields["grow_scale3d"].default, gt=0.0, le=10.0,
        description="default strategy: clone below, split above this 3D scale (fraction of "
                    "the scene extent).")
    grow_scale2d: float | None = Field(
        None, gt=0.0, le=10.0,
        description="default strategy: split above this 2D scale (fraction of the image "
                    "size; with prune_scale2d > 0; default prune_scale2d / 3).")
    prune_scale3d: float = Field(
        DefaultStrategyConfig.model_fields["prune_scale3d"].default, gt=0.0, le=100.0,
        description="default strategy: prune above this 3D scale (fraction of the scene "
                    "extent).")
    pause_refine_after_reset: int = Field(
        0, ge=0, le=10_000_000,
        description="default strategy: no refinement for this many steps after an opacity "
                    "reset (gsplat; 0 = off).")
    revised_opacity: bool = Field(
        False, description="default strategy: revised opacity on cloning (Bulo et al. 2024).")
    min_opacity: float = Field(
        MCMCStrategyConfig.model_fields["min_opacity"].default, gt=0.0, lt=1.0,
        description="mcmc: Gaussians below this opacity are relocated (gsplat: 0.005).")
    noise_lr: float = Field(
        MCMCStrategyConfig.model_fields["noise_lr"].default, ge=0.0, le=1e12,
        description="mcmc: scale of the SGLD position noise, times the means learning rate "
                    "(gsplat: 5e5).")
    # -- optimiser --------------------------------------------------------------------------
    means_lr: float = Field(
        1.6e-4, gt=0.0, le=1.0, validation_alias=_alias("means_lr", "position_lr_init"),
        description="Initial learning rate of the means, times the scene extent.")
    means_lr_final: float = Field(
        1.6e-6, gt=0.0, le=1.0, validation_alias=_alias("means_lr_final", "position_lr_final"),
        description="Final learning rate of the means, times the scene extent (log-linear "
                    "decay over max_steps, INRIA get_expon_lr_func).")
    sh0_lr: float = Field(2.5e-3, gt=0.0, le=1.0,
                          validation_alias=_alias("sh0_lr", "feature_lr"),
                          description="Learning rate of the SH DC colour.")
    shN_lr: float = Field(2.5e-3 / 20, gt=0.0, le=1.0,
                          description="Learning rate of the higher SH coefficients.")
    opacities_lr: float = Field(5e-2, gt=0.0, le=1.0,
                                validation_alias=_alias("opacities_lr", "opacity_lr"),
                                description="Learning rate of the opacity logits.")
    scales_lr: float = Field(5e-3, gt=0.0, le=1.0,
                             validation_alias=_alias("scales_lr", "scaling_lr"),
                             description="Learning rate of the log scales.")
    quats_lr: float = Field(1e-3, gt=0.0, le=1.0,
                            validation_alias=_alias("quats_lr", "rotation_lr"),
                            description="Learning rate of the rotation quaternions.")
    ssim_lambda: float = Field(0.2, ge=0.0, le=1.0,
                               validation_alias=_alias("ssim_lambda", "lambda_dssim"),
                               description="Loss = (1 - l) * L1 + l * (1 - SSIM).")
    # -- initialisation ---------------------------------------------------------------------
    init_type: Literal["auto", "sfm", "random"] = Field(
        "auto", description="auto = SfM points unless there are fewer than "
                            "SceneConfig.min_points, then random.")
    init_num_pts: int = Field(
        100_000, ge=1, le=100_000_000,
        description="Random initialisation: number of Gaussians (gsplat init_num_pts).")
    init_extent: float = Field(
        3.0, gt=0.0, le=1000.0,
        description="Random initialisation: half-size of the cube, times the scene extent "
                    "(gsplat init_extent).")
    init_opacity: float | None = Field(
        None, gt=0.0, lt=1.0, description="Initial opacity (default 0.1; 0.5 with mcmc).")
    init_scale: float | None = Field(
        None, gt=0.0, le=1000.0,
        description="Multiplier of the nearest-neighbour scale (default 1; 0.1 with mcmc).")
    # -- rasterization ----------------------------------------------------------------------
    absgrad: bool = Field(False, description="AbsGS absolute screen gradients for densifying.")
    antialiased: bool = Field(False, description="Mip-Splatting antialiased rasterization.")
    packed: bool = Field(False, description="gsplat packed mode (less memory).")
    sparse_grad: bool = Field(False, description="Sparse gradients (needs packed).")
    prune_unseen: bool = Field(
        False, description="At every densification interval (default strategy), remove "
                          "Gaussians whose centre lies in no training camera's view frustum: "
                          "no photo constrains them, and left alone they become floaters in "
                          "front of held-out views.")
    unseen_margin: float = Field(
        0.15, ge=0.0, le=2.0,
        description="prune_unseen: a centre counts as seen when it projects within this "
                    "fraction of the image size outside a training image's border.")
    camera_clearance: float = Field(
        0.0, ge=0.0, le=1.0,
        description="At every densification interval (default strategy), remove Gaussians "
                    "closer to a training camera than this fraction of the median depth of "
                    "the SfM points it sees (0 = off; see splatforge.train.visibility).")
    prune_scale2d: float = Field(
        0.0, ge=0.0, le=10.0,
        description="default strategy: during densification, also prune (and split at a "
                    "third of it) Gaussians whose screen radius exceeded this fraction of the "
                    "image size in a training view (gsplat's refine_scale2d; 0 = off).")
    fused_ssim: bool = Field(
        True, description="SSIM loss with the hand-derived backward pass "
                          "(splatforge.train.fused_ssim; same values, less memory and time).")
    triton_loss: bool = Field(
        False, description="On CUDA with Triton (and ssim_lambda > 0): the photometric loss and "
                           "its gradient in five Triton kernels that read the uint8 training "
                           "image directly (splatforge.train.triton_loss; same values, fewer "
                           "temporaries, no graph pool). Takes precedence over graph_loss. Off "
                           "by default until it has been measured on a GPU (CPU-tested only).")
    graph_loss: bool = Field(
        True, description="On CUDA when triton_loss does not apply, replay the photometric "
                          "loss (forward and backward) as CUDA graphs "
                          "(splatforge.train.losses.GraphedPhotometricLoss): same kernels, far "
                          "fewer launches.")
    fused_mcmc_noise: bool = Field(
        True, description="mcmc on CUDA: the per-step position noise in one Triton kernel "
                          "(splatforge.train.mcmc_noise; same formula as gsplat's).")
    fused_adam: bool = Field(
        True, description="On CUDA, PyTorch's fused (single-kernel) Adam.")
    selective_adam: bool = Field(
        False, description="Adam updates (and moment decay) only for the Gaussians that some "
                            "pixel of the step's view saw (gsplat's SelectiveAdam; Mallick et "
                            "al. 2024, Taming 3DGS); one Triton kernel per parameter on CUDA "
                            "(splatforge.train.selective_adam). Off by default: 1.09x the loop time on "
                            "plush_dog at 7k on an H200 (benchmarks/NOTES.md).")
    adam_moments_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Storage of the Adam moments: bfloat16 halves their memory "
                               "(compute stays float32, stochastic rounding on store; "
                               "splatforge.train.selective_adam).")
    res_schedule: bool = Field(
        False, description="Train on downscaled images first and raise the resolution in "
                           "res_schedule_levels steps up to full size at res_schedule_until "
                           "x max_steps, with the MCMC budget growing in proportion to the "
                           "image side (DashGaussian, Chen et al. 2025; "
                           "splatforge.train.res_schedule).")
    res_schedule_start: float = Field(
        4.0, ge=1.0, le=32.0, description="res_schedule: the first downscale factor.")
    res_schedule_levels: int = Field(
        4, ge=1, le=16, description="res_schedule: number of resolutions (geometric from "
                                    "res_schedule_start to 1).")
    res_schedule_until: float = Field(
        0.5, gt=0.0, le=1.0,
        description="res_schedule: fraction of max_steps at which full resolution is reached.")
    prune_significance: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="mcmc: at prune_significance_steps remove this fraction of the Gaussians, "
                    "those with the smallest summed blend weight over the training views, and "
                    "shrink the budget with them (Speedy-Splat, Hanson et al. 2024; "
                    "LightGaussian's significance; 0 = off).")
    prune_significance_steps: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="prune_significance: the steps (default: 0.4 and 0.8 of "
                          "min(densify_until_iter, max_steps)).")
    images_on_gpu: Literal["auto", "yes", "no"] = Field(
        "no", description="Keep the decoded uint8 training images on the GPU (yes), or in "
                          "pinned host memory copied asynchronously each step (no: less GPU "
                          "memory); auto = yes when they fit in a quarter of the free memory.")
    random_background: bool = Field(
        False, description="Render on a random background colour each step (INRIA "
                           "--random_background).")
    backend: Literal["auto", "gsplat", "torch"] = Field(
        "auto", description="Rasterizer: gsplat (CUDA), torch (any device), auto = gsplat on "
                            "CUDA when available, else torch.")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="auto | cpu | cuda | cuda:N | mps (auto = cuda when available, else cpu).")
    gpus: int = Field(
        1, ge=1, le=64,
        description="Ranks (processes) that train this one scene together: N > 1 shards the "
                    "Gaussians and the training views over N GPUs (NCCL, one per visible CUDA "
                    "device) or N CPU processes (gloo); each step then trains N views, one "
                    "per rank (splatforge.train.distributed).")
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Random seed.")
    # -- real captures: appearance, masks, poses ----------------------------------------------
    appearance: Literal["none", "embedding", "bilateral"] = Field(
        "none", description="Per-image appearance compensation: embedding (per-image "
                            "embedding + per-Gaussian features -> MLP colour correction, "
                            "NeRF-W / splatfacto-w style), bilateral (per-image bilateral "
                            "grid on the render, Wang et al. 2024), none.")
    mask_mode: Literal["ignore", "background"] = Field(
        "ignore", description="With masks: ignore = masked-out pixels take no part in the "
                              "loss; background = also push the rendered alpha to 0 there "
                              "(the object alone).")
    mask_alpha_lambda: float = Field(
        1.0, ge=0.0, le=100.0,
        description="Weight of the alpha-to-zero loss outside the mask (mask_mode "
                    "background).")
    eval_masked: bool = Field(
        False, description="Held-out PSNR/SSIM over the mask only (views with a mask).")
    pose_opt: bool = Field(
        False, description="Refine training camera poses (learned SE(3) correction per image, "
                           "gsplat CameraOptModule); refined poses go to cameras.json and "
                           "sparse_refined/.")
    pose_opt_lr: float = Field(1e-5, gt=0.0, le=1.0,
                               description="Learning rate of the pose corrections.")
    # -- logging, evaluation, memory --------------------------------------------------------
    log_every: int = Field(
        100, ge=1, le=1_000_000,
        description="Compute loss/PSNR on the host and append to train_log.jsonl every this "
                    "many steps.")
    eval_every: int = Field(
        0, ge=0, le=10_000_000,
        description="Evaluate on the held-out views every this many steps (0 = only at the "
                    "end).")
    image_cache_mb: float = Field(
        4096.0, ge=0.0, le=1_048_576.0,
        description="Host memory for decoded training images, in MiB (least recently used "
                    "beyond it are decoded again on demand).")

    @model_validator(mode="before")
    @classmethod
    def _strategy_as_config(cls, data: Any) -> Any:
        return _flatten_strategy(data)

    @model_validator(mode="after")
    def _cross_field(self) -> "TrainConfig":
        if self.save_steps is not None:
            bad = [s for s in self.save_steps if s > self.max_steps]
            if bad:
                raise ValueError(
                    f"save_steps {bad} lie beyond max_steps ({self.max_steps}); every save step "
                    f"must be in 1..{self.max_steps}")
        if self.selective_adam and self.sparse_grad:
            raise ValueError("selective_adam needs dense gradients; it cannot be combined with "
                             "sparse_grad")
        if self.sparse_grad and not self.packed:
            raise ValueError("sparse_grad needs packed=True (gsplat computes sparse gradients "
                             "only in packed mode)")
        return self

    # -- resolved values --------------------------------------------------------------------
    def resolved_save_steps(self) -> list[int]:
        """Sorted steps to save at: ``save_steps`` (or 7000 when it is <= max_steps) plus
        ``max_steps``."""
        steps = self.save_steps if self.save_steps is not None else DEFAULT_SAVE_STEPS
        return sorted({s for s in steps if s <= self.max_steps} | {self.max_steps})

    def resolved_prune_steps(self) -> list[int]:
        """Steps of significance pruning: ``prune_significance_steps``, else 0.4 and 0.8 of
        ``min(densify_until_iter, max_steps)``; empty when ``prune_significance`` is 0."""
        if self.prune_significance <= 0:
            return []
        if self.prune_significance_steps is not None:
            return sorted(set(self.prune_significance_steps))
        end = min(self.densify_until_iter, self.max_steps)
        return sorted({max(1, int(end * f)) for f in (0.4, 0.8)})

    def strategy_config(self) -> DefaultStrategyConfig | MCMCStrategyConfig:
        """The chosen strategy's settings as its typed config (the fields of this config that
        map onto it, ``prune_steps`` resolved by :meth:`resolved_prune_steps`)."""
        cls = MCMCStrategyConfig if self.strategy == "mcmc" else DefaultStrategyConfig
        values = {key: getattr(self, _STRATEGY_FLAT_NAMES.get(key, key))
                  for key in cls.model_fields if key != "name"}
        if cls is MCMCStrategyConfig:
            values["prune_steps"] = self.resolved_prune_steps()
        return cls(**values)

    def grow_grad2d(self) -> float:
        """Densification gradient threshold: the field, else 2e-4 (8e-4 with absgrad)."""
        return DefaultStrategyConfig(grow_grad2d=self.densify_grad_threshold,
                                     absgrad=self.absgrad).resolved_grow_grad2d()

    def resolved_cap_max(self, num_initial: int) -> int:
        """The MCMC Gaussian budget: ``cap_max``, else ``CAP_PER_INITIAL * num_initial``
        clamped to ``[CAP_MIN, CAP_MAX]`` (:meth:`MCMCStrategyConfig.resolved_cap_max`).

        Args:
            num_initial: Gaussians at initialisation (SfM points, or ``init_num_pts``).
        """
        return MCMCStrategyConfig(cap_max=self.cap_max).resolved_cap_max(num_initial)

    def regularization(self) -> tuple[float, float]:
        """(opacity_reg, scale_reg): the fields, else 0.01 each with mcmc and 0 otherwise."""
        d = 0.01 if self.strategy == "mcmc" else 0.0
        return (self.opacity_reg if self.opacity_reg is not None else d,
                self.scale_reg if self.scale_reg is not None else d)

    def initial_opacity(self) -> float:
        """Initial opacity: the field, else 0.1 (INRIA) or 0.5 with mcmc (gsplat preset)."""
        if self.init_opacity is not None:
            return self.init_opacity
        return 0.5 if self.strategy == "mcmc" else 0.1

    def initial_scale(self) -> float:
        """Nearest-neighbour scale multiplier: the field, else 1 or 0.1 with mcmc."""
        if self.init_scale is not None:
            return self.init_scale
        return 0.1 if self.strategy == "mcmc" else 1.0

    def notes(self) -> list[str]:
        """Cross-field combinations that are allowed but probably not meant."""
        out = []
        if self.densify_from_iter >= min(self.densify_until_iter, self.max_steps):
            out.append(f"densify_from_iter ({self.densify_from_iter}) >= min(densify_until_iter "
                       f"({self.densify_until_iter}), max_steps ({self.max_steps})): no "
                       "densification happens")
        elif self.densify_until_iter > self.max_steps:
            out.append(f"densify_until_iter ({self.densify_until_iter}) > max_steps "
                       f"({self.max_steps}): densification runs until the end")
        if self.sh_degree * self.sh_degree_interval > self.max_steps:
            out.append(f"sh_degree {self.sh_degree} is reached at step "
                       f"{self.sh_degree * self.sh_degree_interval}, after max_steps "
                       f"({self.max_steps})")
        if self.strategy == "mcmc" and self.densify_grad_threshold is not None:
            out.append("densify_grad_threshold is not used by the mcmc strategy")
        return out
