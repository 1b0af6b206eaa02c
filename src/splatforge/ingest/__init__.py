"""Ingest stage: photos (a folder or a zip) or a video in, a folder of frames out.

Entry point: :func:`run_ingest` writes ``<workspace>/input/`` and ``<workspace>/ingest.json``
atomically and reports progress only through the events callback.
"""

from .images import IMAGE_EXTENSIONS
from .sharpness import image_sharpness, laplacian_variance, sharpest_per_window
from .stage import (
    INPUT_DIRNAME,
    MANIFEST_NAME,
    SUPPORTED_INPUTS,
    IngestResult,
    MediaKind,
    detect_media_kind,
    run_ingest,
)
from .video import VIDEO_EXTENSIONS, VideoOutcome

__all__ = [
    "IMAGE_EXTENSIONS",
    "INPUT_DIRNAME",
    "MANIFEST_NAME",
    "SUPPORTED_INPUTS",
    "VIDEO_EXTENSIONS",
    "IngestResult",
    "MediaKind",
    "VideoOutcome",
    "detect_media_kind",
    "image_sharpness",
    "laplacian_variance",
    "run_ingest",
    "sharpest_per_window",
]
