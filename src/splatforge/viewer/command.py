"""The viewer's CLI parts: the ``splatforge view`` command and the ``--viewer`` options of
``train`` / ``reconstruct`` (:class:`ViewerOptions`, :func:`start_training_viewer`)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from ..errors import ConfigError
from .data import DEFAULT_MAX_SPLATS
from .live import DEFAULT_REFRESH_EVERY, LiveTrainingViewer
from .server import DEFAULT_HOST, DEFAULT_PORT, SplatViewer


def serve_until_interrupted(viewer: SplatViewer | LiveTrainingViewer, message: str) -> None:
    """Print ``message`` and keep serving until Ctrl-C, then stop the server."""
    print(message, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()


def view(paths: Annotated[tyro.conf.Positional[list[Path]], tyro.conf.arg(metavar="PATH")],
         host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
         max_splats: int = DEFAULT_MAX_SPLATS) -> None:
    """Open splat models in the browser: starts a viser server and prints its URL. The splats
    render in the browser (WebGL), so no GPU is needed here. The training cameras (click one
    to look through it), SfM points (toggle) and an "up" direction (reset from the current
    view) are shown; several models get their own visibility and transform controls.

    Args:
        paths: .ply / .splat / .spz files, model folders (point_cloud/iteration_N/), reconstruct
            outputs or workspaces (cameras and SfM points only).
        host: address to listen on (0.0.0.0 to let other machines connect).
        port: TCP port (the next free one when taken).
        max_splats: per model, show a random subset of this many splats above it.
    """
    from .data import load_view_source

    if not paths:
        raise ConfigError("paths: give at least one splat file, model folder or workspace")
    if max_splats < 1:
        raise ConfigError(f"max_splats: must be >= 1, got {max_splats}")
    sources = [load_view_source(p) for p in paths]  # every input read before serving
    viewer = SplatViewer(host, port, max_splats)
    lines = []
    for src in sources:
        mv = viewer.add_source(src)
        d = mv.display
        what = (f"{d.total:,} splats" + (f" ({d.shown:,} shown)" if d.subsampled else "")
                if d is not None else "no splats")
        lines.append(f"model {mv.index}: {src.path}: {what}, {len(src.cameras)} cameras, "
                     f"{len(src.points)} SfM points")
    serve_until_interrupted(viewer, "\n".join(lines) + f"\nviewer: {viewer.url}  "
                            "(Ctrl-C to stop)")


@dataclass(frozen=True)
class ViewerOptions:
    """Live viewer during training.

    Attributes:
        viewer: serve the training in the browser (splats refreshed every few hundred steps;
            step, loss, PSNR, Gaussians; a Pause button that pauses the loop).
        viewer_host: address the viewer listens on.
        viewer_port: viewer TCP port (the next free one when taken).
        viewer_refresh_every: steps between two splat refreshes.
        viewer_max_splats: show a random subset of this many splats above it.
        viewer_keep_open: after training, keep the page open until Ctrl-C.
    """

    viewer: bool = False
    viewer_host: str = DEFAULT_HOST
    viewer_port: int = DEFAULT_PORT
    viewer_refresh_every: int = DEFAULT_REFRESH_EVERY
    viewer_max_splats: int = DEFAULT_MAX_SPLATS
    viewer_keep_open: bool = True


def start_training_viewer(options: ViewerOptions) -> LiveTrainingViewer | None:
    """Start the live viewer when ``options.viewer`` (prints its URL to stderr), else None.

    Raises:
        ConfigError: refresh or splat budget < 1.
    """
    if not options.viewer:
        return None
    if options.viewer_max_splats < 1:
        raise ConfigError(f"viewer_max_splats: must be >= 1, got {options.viewer_max_splats}")
    live = LiveTrainingViewer(options.viewer_host, options.viewer_port,
                              options.viewer_max_splats, options.viewer_refresh_every)
    print(f"viewer: {live.url}", file=sys.stderr, flush=True)
    return live


def finish_training_viewer(live: LiveTrainingViewer | None, options: ViewerOptions) -> None:
    """After training: keep the page until Ctrl-C (``viewer_keep_open``) or stop it."""
    if live is None:
        return
    live.finish()
    if options.viewer_keep_open:
        serve_until_interrupted(live, f"viewer still open at {live.url} (Ctrl-C to stop)")
    else:
        live.stop()
