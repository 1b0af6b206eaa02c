"""The service's view of the artifact store (:mod:`splatforge.storage`) and its key layout.

Keys (the seeds' layout)::

    media/{scene_id}/...           uploaded media (images, an extracted zip, a video)
    colmap/{scene_id}/sparse/0/    the COLMAP model of a scene (written after SfM)
    outputs/{scene_id}/...         artifacts of the latest finished job: point_cloud.ply,
                                   cameras.json, cfg_args, metrics.json, scene.splat,
                                   scene.spz, reconstruct.json, renders/*.png
"""

from __future__ import annotations

import re
import threading
from typing import Any

from .settings import ServiceSettings

#: Scene ids the compat routes accept from a frontend (they become key components).
SCENE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_stores: dict[tuple[str, str | None], Any] = {}
_lock = threading.Lock()


def get_store(settings: ServiceSettings) -> Any:
    """The process-wide :class:`splatforge.storage.ArtifactStore` of ``settings``."""
    from ..storage import open_store

    key = (settings.storage_url, settings.endpoint_url)
    with _lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = open_store(settings.storage_url,
                                              endpoint_url=settings.endpoint_url)
        return store


def open_source(uri: str, settings: ServiceSettings) -> Any:
    """A store over a scene's ``s3://bucket/prefix`` source URI."""
    from ..storage import open_store

    return open_store(uri, endpoint_url=settings.endpoint_url)


def media_prefix(scene_id: str) -> str:
    """``media/{scene_id}/`` (:func:`splatforge.storage.media_prefix`)."""
    from ..storage import media_prefix as f

    return f(scene_id)


def colmap_prefix(scene_id: str) -> str:
    """``colmap/{scene_id}/``."""
    from ..storage import colmap_prefix as f

    return f(scene_id)


def outputs_prefix(scene_id: str) -> str:
    """``outputs/{scene_id}/``."""
    from ..storage import outputs_prefix as f

    return f(scene_id)


def check_allowed_path(path: Any, settings: ServiceSettings) -> Any:
    """A local ``source_uri`` (or ``vocab_tree_path``) resolved, when it lies under one of
    ``settings.allowed_roots`` (:func:`splatforge.paths.resolve_under_roots`: symlinks
    followed, NUL bytes, over-long names and symlink loops refused).

    Raises:
        InputError: relative, malformed, missing, or outside every allowed root, or a folder
            holding a symlink that leads out of them; the message shows the value as given.
    """
    from ..paths import check_tree_inside, resolve_under_roots

    out = resolve_under_roots(path, settings.allowed_roots, "source_uri")
    check_tree_inside(out, settings.allowed_roots, "source_uri")
    return out
