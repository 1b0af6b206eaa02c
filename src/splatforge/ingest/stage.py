"""The ingest stage: media (image folder, zip of images, video) -> ``<workspace>/input/``.

Results land atomically: frames are written into a temporary sibling folder
``<workspace>/.input.tmp-<pid>``, the manifest into ``<workspace>/.ingest.json.tmp-<pid>``;
only when both are complete is an older ``input/`` moved aside, the new folder renamed to
``input/`` and the manifest moved over ``ingest.json`` (``os.replace``). A failure at any
earlier point removes the temporary files and leaves an earlier ``input/`` and
``ingest.json`` untouched.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import __version__
from ..config import IngestConfig
from ..errors import InputError
from ..events import EventCallback, StageReporter
from .images import (
    IMAGE_EXTENSIONS,
    ingest_image_sources,
    is_image_name,
    list_folder,
    list_zip,
)
from .video import VIDEO_EXTENSIONS, VideoOutcome, ingest_video, is_video_name

MediaKind = Literal["images", "zip", "video"]

#: Folder (inside the workspace) that receives the frames.
INPUT_DIRNAME = "input"
#: Manifest file (inside the workspace).
MANIFEST_NAME = "ingest.json"
#: Manifest format version.
MANIFEST_VERSION = 1

SUPPORTED_INPUTS = (
    "a folder of images (" + ", ".join(IMAGE_EXTENSIONS) + ", any case), a .zip of such "
    "images, or a video (" + ", ".join(VIDEO_EXTENSIONS) + ", any case)"
)


@dataclass
class IngestResult:
    """What :func:`run_ingest` produced.

    Attributes:
        images_dir: ``<workspace>/input``.
        images: file names written there, sorted (video: ``frame_00001.jpg``..., which is
            also time order).
        skipped: ``(name, reason)`` of every candidate image left out: unreadable, empty or
            blurry (``name`` is the source file name, or the member path inside a zip).
        kind: ``"images"``, ``"zip"`` or ``"video"``.
        source: the media path, absolute.
        manifest_path: ``<workspace>/ingest.json``.
        sharpness: output name -> variance of the Laplacian (grey-level^2), when computed
            (blur filter on, or video).
        sources: output name -> source name (image folders and zips).
        reoriented: output names whose EXIF orientation was applied.
        video_fps: frames per second (video only).
        video_frames_decoded: frames decoded in the scoring pass (video only).
        video_frame_indices: decode index of each written frame, aligned with ``images``.
        video_timestamps: time in seconds of each written frame, aligned with ``images``.
        video: the full per-frame record (:class:`~splatforge.ingest.video.VideoOutcome`).
    """

    images_dir: Path
    images: list[str]
    skipped: list[tuple[str, str]]
    kind: MediaKind
    source: Path
    manifest_path: Path
    sharpness: dict[str, float] | None = None
    sources: dict[str, str] = field(default_factory=dict)
    reoriented: list[str] = field(default_factory=list)
    video_fps: float | None = None
    video_frames_decoded: int | None = None
    video_frame_indices: list[int] | None = None
    video_timestamps: list[float] | None = None
    video: VideoOutcome | None = None


def detect_media_kind(media: Path) -> MediaKind:
    """``"images"`` for a folder, ``"zip"`` for a ``.zip`` file, ``"video"`` for a video file.

    Raises:
        InputError: the path does not exist, or is a file of another type (naming it and
            listing the supported inputs).
    """
    if not media.exists():
        raise InputError(media, "does not exist", hint=f"give {SUPPORTED_INPUTS}")
    if media.is_dir():
        return "images"
    name = media.name
    if name.lower().endswith(".zip"):
        return "zip"
    if is_video_name(name):
        return "video"
    if is_image_name(name):
        raise InputError(media, "is a single image; at least a few overlapping photos are "
                                "needed", hint=f"give {SUPPORTED_INPUTS}")
    ext = media.suffix or "no extension"
    raise InputError(media, f"unsupported input type ({ext})", hint=f"give {SUPPORTED_INPUTS}")


def run_ingest(config: IngestConfig, media: Path, workspace: Path,
               events: EventCallback | None = None) -> IngestResult:
    """Turn ``media`` into a folder of frames ``<workspace>/input/`` plus ``ingest.json``.

    Media:
        * a folder: its top-level ``.jpg``/``.jpeg``/``.png`` files (any case; subfolders
          are not searched), see :func:`splatforge.ingest.images.list_folder`;
        * a ``.zip``: image members in any folder (``__MACOSX/`` and hidden entries ignored,
          base names only), see :func:`splatforge.ingest.images.list_zip`;
        * a video (``.mp4``, ``.mov``, ``.mkv``, ``.avi``): up to ``max_num_images`` sharp
          frames spread over ``[start_time, stop_time]``, see
          :func:`splatforge.ingest.video.ingest_video`.

    Images are verified by decoding, EXIF-oriented, named ``<stem>.jpg``/``.png`` and
    optionally blur-filtered (:func:`splatforge.ingest.images.ingest_image_sources`).

    ``ingest.json`` holds: ``format``/``version``, ``splatforge_version``, ``created`` (UTC,
    ISO 8601), ``kind``, ``source`` (absolute path), ``config`` (the IngestConfig as JSON),
    ``images_dir`` (``"input"``), ``images``, ``skipped`` (``[{"name", "reason"}]``),
    ``sources`` (output name -> source name), ``reoriented``, ``sharpness`` (output name ->
    score, or null) and ``video`` (null for images; else ``fps``, ``duration_s``,
    ``frames_decoded``, ``rotation``, ``width``, ``height``, ``start_time``, ``stop_time``,
    ``frames`` = per written frame ``{"name", "index", "time", "sharpness", "window"}``,
    and ``candidates`` = every frame in range as parallel lists ``index``, ``time`` (s, 6
    decimals) and ``sharpness`` (3 decimals), with ``windows`` as ``[lo, hi)`` positions into
    those lists).

    Args:
        config: the ingest configuration.
        media: folder, zip or video.
        workspace: the scene workspace (created if missing).
        events: the progress callback (stage started/finished, ``images``/``decode``/
            ``write`` steps, warnings for skipped files, info).

    Returns:
        The :class:`IngestResult`.

    Raises:
        InputError: naming the offending path: unsupported or missing media, a corrupt zip,
            a file that is not a video, too few usable images, a strict-mode unreadable
            image, a start time past the end of the video. An earlier ``input/`` and
            ``ingest.json`` are left as they were.
    """
    reporter = StageReporter("ingest", events)
    media = Path(media).absolute()
    workspace = Path(workspace)
    kind = detect_media_kind(media)
    reporter.started(f"ingesting {kind} from {media}", kind=kind, source=str(media))

    workspace.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    tmp_dir = workspace / f".{INPUT_DIRNAME}.tmp-{pid}"
    tmp_manifest = workspace / f".{MANIFEST_NAME}.tmp-{pid}"
    final_dir = workspace / INPUT_DIRNAME
    manifest_path = workspace / MANIFEST_NAME
    _remove(tmp_dir)
    tmp_dir.mkdir()
    try:
        result = IngestResult(images_dir=final_dir, images=[], skipped=[], kind=kind,
                              source=media, manifest_path=manifest_path)
        if kind == "video":
            v = ingest_video(media, tmp_dir, config, reporter)
            result.images = list(v.images)
            result.sharpness = {n: v.candidate_sharpness[c] for n, c in zip(v.images, v.chosen)}
            result.video_fps = v.fps
            result.video_frames_decoded = v.frames_decoded
            result.video_frame_indices = v.frame_indices
            result.video_timestamps = v.timestamps
            result.video = v
        else:
            if kind == "zip":
                try:
                    archive = zipfile.ZipFile(media)
                except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                    raise InputError(media, f"not a readable zip file ({exc})",
                                     hint="re-create the zip, or give the folder of images"
                                     ) from None
                with archive:
                    sources = list_zip(archive, media, reporter)
                    out = ingest_image_sources(sources, tmp_dir, config, reporter, media)
            else:
                sources = list_folder(media, reporter)
                out = ingest_image_sources(sources, tmp_dir, config, reporter, media)
            result.images = out.images
            result.skipped = out.skipped
            result.sharpness = out.sharpness
            result.sources = out.sources
            result.reoriented = out.reoriented

        _write_json(tmp_manifest, _manifest(result, config))
        _swap_in(tmp_dir, final_dir)
        os.replace(tmp_manifest, manifest_path)
    except BaseException:
        _remove(tmp_dir)
        _remove(tmp_manifest)
        raise

    reporter.finished(f"{len(result.images)} images in {final_dir}"
                      + (f", {len(result.skipped)} skipped" if result.skipped else ""),
                      images=len(result.images), skipped=len(result.skipped), kind=kind)
    return result


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _swap_in(new_dir: Path, final_dir: Path) -> None:
    """Rename ``new_dir`` to ``final_dir``, replacing an existing one only at the end.

    The old folder is first renamed aside (``.input.old-<pid>``); if the second rename
    fails it is put back.
    """
    old = None
    if final_dir.exists() or final_dir.is_symlink():
        old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        _remove(old)
        os.replace(final_dir, old)
    try:
        os.replace(new_dir, final_dir)
    except BaseException:
        if old is not None:
            os.replace(old, final_dir)
        raise
    if old is not None:
        _remove(old)


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` and flush it to disk."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _manifest(result: IngestResult, config: IngestConfig) -> dict[str, Any]:
    video = None
    v = result.video
    if v is not None:
        window_of = {c: j for j, c in enumerate(v.chosen)}
        video = {
            "fps": v.fps,
            "duration_s": v.duration_s,
            "frames_decoded": v.frames_decoded,
            "rotation": v.rotation,
            "width": v.width,
            "height": v.height,
            "start_time": v.start_s,
            "stop_time": v.stop_s,
            "frames": [
                {"name": name, "index": v.candidate_index[c], "time": v.candidate_time[c],
                 "sharpness": v.candidate_sharpness[c], "window": window_of[c]}
                for name, c in zip(v.images, v.chosen)
            ],
            "windows": [list(w) for w in v.windows],
            "candidates": {
                "index": v.candidate_index,
                "time": [round(t, 6) for t in v.candidate_time],
                "sharpness": [round(s, 3) for s in v.candidate_sharpness],
            },
        }
    return {
        "format": "splatforge-ingest",
        "version": MANIFEST_VERSION,
        "splatforge_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "kind": result.kind,
        "source": str(result.source),
        "config": config.model_dump(mode="json"),
        "images_dir": INPUT_DIRNAME,
        "images": result.images,
        "skipped": [{"name": n, "reason": r} for n, r in result.skipped],
        "sources": result.sources,
        "reoriented": result.reoriented,
        "sharpness": result.sharpness,
        "video": video,
    }
