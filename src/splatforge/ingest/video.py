"""Video: choose the sharpest frame of each of N equal windows and write them as JPEGs.

Two decoding passes with PyAV (ffmpeg inside the wheel), threaded decoding on:

1. every frame up to ``stop_time`` is decoded; for those in ``[start_time, stop_time]`` the
   time and the sharpness (variance of the Laplacian, Pech-Pacheco et al. 2000, on the
   grayscale frame downscaled to a 320 px longer side) are recorded;
2. the in-range frames are split into ``N = min(max_num_images, frames in range)``
   consecutive windows of equal frame count, the sharpest frame of each window is chosen,
   and the video is decoded again to save those frames as ``frame_00001.jpg``, ... (JPEG
   quality 95) in time order, turned upright with the stream's display-matrix rotation.

Nothing is seeked: frames are identified by their decode index, which both passes share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from ..config import IngestConfig
from ..errors import InputError
from ..events import StageReporter
from .sharpness import (
    VIDEO_SHARPNESS_LONG_SIDE,
    laplacian_variance,
    scaled_size,
    sharpest_per_window,
)

#: Video file extensions (compared case-insensitively).
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi")

#: Emit a decode progress event every this many frames.
DECODE_PROGRESS_EVERY = 50

#: JPEG quality of the written frames.
JPEG_QUALITY = 95

_HINT = "give an H.264/HEVC/VP9/AV1 video in an .mp4, .mov, .mkv or .avi file"


@dataclass
class VideoOutcome:
    """What :func:`ingest_video` found and wrote.

    Attributes:
        images: written names ``frame_00001.jpg`` ..., in time order.
        fps: the stream's average frame rate (frames per second).
        duration_s: the video's duration in seconds (container or stream; ``None`` if the
            file does not say).
        frames_decoded: frames decoded in pass 1 (every frame up to ``stop_time``).
        rotation: the display-matrix rotation applied to the written frames, degrees
            counter-clockwise (0, 90, -90 or 180).
        width, height: coded frame size in pixels (before rotation).
        start_s, stop_s: the time range actually used, seconds.
        candidate_index: ``[M]`` decode index (0-based, from the first decoded frame) of each
            frame in range, in time order.
        candidate_time: ``[M]`` its time in seconds from the stream start.
        candidate_sharpness: ``[M]`` its variance of the Laplacian.
        windows: ``[N]`` half-open ranges ``(lo, hi)`` into the candidate arrays.
        chosen: ``[N]`` positions into the candidate arrays of the written frames.
    """

    images: list[str]
    fps: float
    duration_s: float | None
    frames_decoded: int
    rotation: int
    width: int
    height: int
    start_s: float
    stop_s: float
    candidate_index: list[int]
    candidate_time: list[float]
    candidate_sharpness: list[float]
    windows: list[tuple[int, int]]
    chosen: list[int]

    @property
    def frame_indices(self) -> list[int]:
        """Decode index of each written frame."""
        return [self.candidate_index[c] for c in self.chosen]

    @property
    def timestamps(self) -> list[float]:
        """Time in seconds of each written frame."""
        return [self.candidate_time[c] for c in self.chosen]


def is_video_name(name: str) -> bool:
    """True for ``.mp4``, ``.mov``, ``.mkv`` and ``.avi`` names, in any case."""
    return name.lower().endswith(VIDEO_EXTENSIONS)


def _open(path: Path) -> av.container.InputContainer:
    """Open ``path`` for decoding; InputError when ffmpeg cannot read it as a video."""
    try:
        if path.stat().st_size == 0:
            raise InputError(path, "empty file (0 bytes), not a video", hint=_HINT)
    except OSError as exc:
        raise InputError(path, f"cannot be read: {exc.strerror or exc}") from None
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        raise InputError(path, f"not a readable video: {_av_reason(exc)}", hint=_HINT) from None
    fmt = container.format.name
    if fmt.endswith("_pipe") or fmt in ("image2", "image2pipe"):
        container.close()
        raise InputError(path, f"not a video: ffmpeg reads it as a still image ({fmt})",
                         hint=_HINT)
    if not container.streams.video:
        container.close()
        raise InputError(path, "contains no video stream", hint=_HINT)
    return container


def _av_reason(exc: Exception) -> str:
    msg = getattr(exc, "strerror", None) or str(exc)
    return msg.split(": '", 1)[0]


def _frame_rate(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _duration_s(container, stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


def _frame_time(frame, t0: float, index: int, fps: float) -> float:
    """Seconds from the stream start: from pts when present, else from index and fps."""
    if frame.pts is not None and frame.time_base:
        return float(frame.pts * frame.time_base) - t0
    return index / fps if fps > 0 else float(index)


def _normalise_rotation(deg: float) -> int:
    """Nearest multiple of 90 in {-90, 0, 90, 180}."""
    r = int(round(deg / 90.0)) % 4
    return {0: 0, 1: 90, 2: 180, 3: -90}[r]


def upright(image: Image.Image, rotation: int) -> Image.Image:
    """Rotate a decoded frame for display.

    ``rotation`` is PyAV's ``VideoFrame.rotation``: the angle in degrees by which the
    stream's display matrix rotates the frame counter-clockwise (e.g. -90 for a phone held
    upright, whose frames are stored landscape). Pillow's ``ROTATE_90`` is also
    counter-clockwise. Flips in the display matrix are not applied.
    """
    method = {90: Image.Transpose.ROTATE_90, -90: Image.Transpose.ROTATE_270,
              180: Image.Transpose.ROTATE_180}.get(_normalise_rotation(rotation))
    return image.transpose(method) if method is not None else image


def ingest_video(path: Path, out_dir: Path, config: IngestConfig,
                 reporter: StageReporter) -> VideoOutcome:
    """Extract the sharpest frame of each of N equal windows of a video into ``out_dir``.

    Args:
        path: the video file.
        out_dir: an existing, empty folder; receives ``frame_00001.jpg`` ... (5 digits, more
            when N > 99999), JPEG quality 95, upright.
        config: ``max_num_images`` (N at most), ``start_time`` / ``stop_time`` (seconds from
            the stream start; a stop past the end means the end), ``min_images``.
        reporter: ``decode`` progress (every 50 frames, of the estimated frame count) and
            ``write`` progress (k of N).

    Returns:
        A :class:`VideoOutcome` with the per-frame record of pass 1.

    Raises:
        InputError: naming the file, when it cannot be opened or decoded as a video (e.g. a
            text file or a JPEG renamed ``.mp4``), has no video stream, has no decodable
            frames, when ``start_time`` is at or past the end of the video, or when fewer
            than ``min_images`` frames lie in the range.
    """
    start = config.start_time or 0.0
    stop = config.stop_time if config.stop_time is not None else math.inf

    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _frame_rate(stream)
        duration = _duration_s(container, stream)
        if duration is not None and start >= duration:
            raise InputError(path, f"start_time {start:g} s is at or past the end of the video "
                                   f"({duration:.3f} s long)",
                             hint="choose a start_time inside the video")
        t0 = float(stream.start_time * stream.time_base) if (
            stream.start_time is not None and stream.time_base) else 0.0
        estimate = stream.frames or (round(duration * fps) if duration and fps else None)
        if estimate and math.isfinite(stop) and fps:
            estimate = min(estimate, math.ceil(stop * fps) + 1)

        reporter.start_steps("decode", estimate)
        reformatter = VideoReformatter()
        idx_l: list[int] = []
        time_l: list[float] = []
        sharp_l: list[float] = []
        rotation = 0
        width = height = 0
        decoded = 0
        try:
            for frame in container.decode(stream):
                t = _frame_time(frame, t0, decoded, fps)
                if t > stop:
                    break
                if decoded == 0:
                    rotation = _normalise_rotation(frame.rotation or 0)
                    width, height = frame.width, frame.height
                if t >= start - 1e-9:
                    w, h = scaled_size(frame.width, frame.height, VIDEO_SHARPNESS_LONG_SIDE)
                    gray = reformatter.reformat(frame, width=w, height=h,
                                                format="gray").to_ndarray()
                    idx_l.append(decoded)
                    time_l.append(t)
                    sharp_l.append(laplacian_variance(gray))
                decoded += 1
                if decoded % DECODE_PROGRESS_EVERY == 0:
                    reporter.step(decoded)
        except av.FFmpegError as exc:
            if decoded == 0:
                raise InputError(path, f"no decodable video frames: {_av_reason(exc)}",
                                 hint=_HINT) from None
            reporter.warning(f"{path}: decoding stopped after {decoded} frames "
                             f"({_av_reason(exc)}); using the frames decoded so far",
                             frames=decoded)
        if decoded % DECODE_PROGRESS_EVERY:
            reporter.step(decoded)
    finally:
        container.close()

    if decoded == 0:
        raise InputError(path, "no decodable video frames", hint=_HINT)
    if not idx_l:
        end = time_l[-1] if time_l else None
        raise InputError(path, f"start_time {start:g} s is past the end of the video "
                               f"(last frame at {end if end is not None else 'unknown'} s)",
                         hint="choose a start_time inside the video")
    if fps <= 0 and len(time_l) > 1:
        fps = (len(time_l) - 1) / max(time_l[-1] - time_l[0], 1e-9)

    # Time order (decode order already is, except for files with disordered timestamps).
    order = sorted(range(len(idx_l)), key=lambda i: (time_l[i], idx_l[i]))
    cand_idx = [idx_l[i] for i in order]
    cand_time = [time_l[i] for i in order]
    cand_sharp = [sharp_l[i] for i in order]

    n_images = min(config.max_num_images, len(cand_idx))
    if n_images < config.min_images:
        raise InputError(path, f"only {len(cand_idx)} frame(s) in the chosen time range "
                               f"[{start:g}, {min(stop, cand_time[-1]):g}] s; at least "
                               f"{config.min_images} are needed (min_images)",
                         hint="widen start_time/stop_time or use a longer video")
    chosen, windows = sharpest_per_window(np.asarray(cand_sharp), n_images)

    digits = max(5, len(str(n_images)))
    names_by_index = {cand_idx[c]: f"frame_{j + 1:0{digits}d}.jpg" for j, c in enumerate(chosen)}
    # Frames are written in decode order; keep the file numbers in time order.
    last_index = max(names_by_index)
    written = _write_frames(path, out_dir, names_by_index, last_index, rotation, reporter)
    if written != len(names_by_index):
        raise InputError(path, f"the second decoding pass yielded {written} of the "
                               f"{len(names_by_index)} chosen frames (the file decodes "
                               f"differently each time)")

    return VideoOutcome(
        images=[names_by_index[cand_idx[c]] for c in chosen],
        fps=fps, duration_s=duration, frames_decoded=decoded, rotation=rotation,
        width=width, height=height, start_s=start,
        stop_s=min(stop, duration) if duration is not None else min(stop, cand_time[-1]),
        candidate_index=cand_idx, candidate_time=cand_time, candidate_sharpness=cand_sharp,
        windows=windows, chosen=chosen)


def _write_frames(path: Path, out_dir: Path, names_by_index: dict[int, str], last_index: int,
                  rotation: int, reporter: StageReporter) -> int:
    """Pass 2: decode up to ``last_index`` and save the frames named in ``names_by_index``."""
    container = _open(path)
    written = 0
    reporter.start_steps("write", len(names_by_index))
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        reformatter = VideoReformatter()
        for i, frame in enumerate(container.decode(stream)):
            name = names_by_index.get(i)
            if name is not None:
                rgb = reformatter.reformat(frame, format="rgb24").to_image()
                upright(rgb, rotation).save(out_dir / name, "JPEG", quality=JPEG_QUALITY)
                written += 1
                reporter.step(written)
            if i >= last_index:
                break
    except av.FFmpegError as exc:
        raise InputError(path, f"decoding failed while writing frames: {_av_reason(exc)}",
                         hint=_HINT) from None
    finally:
        container.close()
    return written

