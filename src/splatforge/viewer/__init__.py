"""The browser viewer (viser): ``splatforge view``, the live training view
(``train --viewer``) and on-demand viewers for the job service.

Modules: :mod:`.data` (reading splats, cameras and SfM points; display conversion and
subsampling), :mod:`.server` (:class:`SplatViewer`, the page), :mod:`.live`
(:class:`LiveTrainingViewer`, the trainer's step hook and events), :mod:`.manager`
(:class:`ViewerManager`, one viewer per scene, stopped when idle), :mod:`.command` (the CLI).
"""

from .data import (
    DEFAULT_MAX_SPLATS,
    DisplaySplats,
    ViewCamera,
    ViewSource,
    display_splats,
    load_view_source,
)
from .live import DEFAULT_REFRESH_EVERY, LiveTrainingViewer
from .manager import DEFAULT_IDLE_SECONDS, ManagedViewer, ViewerManager
from .server import DEFAULT_HOST, DEFAULT_PORT, ModelView, SplatViewer

__all__ = ["DEFAULT_HOST", "DEFAULT_IDLE_SECONDS", "DEFAULT_MAX_SPLATS", "DEFAULT_PORT",
           "DEFAULT_REFRESH_EVERY", "DisplaySplats", "LiveTrainingViewer", "ManagedViewer",
           "ModelView", "SplatViewer", "ViewCamera", "ViewSource", "ViewerManager",
           "display_splats", "load_view_source"]
