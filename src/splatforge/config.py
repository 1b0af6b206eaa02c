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

    camera_model: CameraModelName = Field(
        "SIMPLE_RADIAL", description="COLMAP camera model fitted during SfM.")
    single_camera: bool = Field(
        True, description="All images share one camera (one phone or one video).")
    max_image_size: int = Field(
        3200, ge=64, le=20_000,
        description="SIFT extraction: images are downscaled so the longer side is at most "
                    "this many pixels.")
    max_num_features: int = Field(
        8192, ge=64, le=65_536, description="SIFT extraction: features kept per image.")
    matching: Literal["auto", "exhaustive", "sequential", "spatial", "vocab_tree"] = Field(
        "auto",
        description="auto = exhaustive below exhaustive_max_images images, sequential for "
                    "video frames and larger sets.")
    exhaustive_max_images: int = Field(
        100, ge=2, le=10_000, description="auto matching: exhaustive up to this many images.")
    sequential_overlap: int = Field(
        10, ge=1, le=1000, description="Sequential matching: neighbours matched per image.")
    quadratic_overlap: bool = Field(
        True, description="Sequential matching: also match images at distances 2^k.")
    vocab_tree_path: Path | None = Field(
        None, description="vocab_tree matching: a local vocabulary-tree file (required; "
                          "splatforge never downloads one).")
    guided_matching: bool = Field(
        True, description="Re-match with the estimated two-view geometry (more matches).")
    mapping: Literal["incremental", "global"] = Field(
        "incremental", description="incremental (COLMAP) or global (GLOMAP, merged in COLMAP).")
    relaxed_retry: bool = Field(
        True,
        description="If the largest model leaves images unregistered, map again with relaxed "
                    "thresholds (init_min_tri_angle 2, init_min_num_inliers 4, "
                    "abs_pose_min_num_inliers 3, abs_pose_max_error 8) and keep the larger "
                    "model.")
    num_threads: int = Field(-1, ge=-1, le=1024, description="-1 = all cores.")
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
