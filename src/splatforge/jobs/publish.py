"""The one ``publish``: a manifest of local files into an artifact-store prefix.

Each object is complete or absent (the local store stages each file in its temp folder and
renames it, S3 creates an object by a single PUT or a multipart completion). A publish first
sweeps what writers that died (``kill -9`` mid-publish) left: local temp files of dead
processes, S3 multipart uploads older than a day (``store.sweep_temp()``). They were never
under a servable key; now they do not pile up either. When an upload fails for good, the objects this call
already wrote are deleted again, so the prefix never mixes this run's outputs with an earlier
run's; when every upload succeeded, keys under the prefix that the manifest does not name
(stale artifacts of an earlier run) are deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..storage import normalize_prefix, parallel_map, validate_key

log = logging.getLogger("splatforge.jobs")


def publish(store: Any, prefix: str, files: Mapping[str, Path], *,
            remove_stale: bool = True,
            on_progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Upload ``files`` (name -> local file) under ``prefix`` of ``store``.

    Args:
        store: a :class:`splatforge.storage.ArtifactStore`.
        prefix: e.g. ``outputs/{id}/``.
        files: the manifest (:func:`splatforge.jobs.manifest.artifact_files`).
        remove_stale: delete keys under ``prefix`` that ``files`` does not name, after every
            upload succeeded.
        on_progress: ``on_progress(done, total)`` after each upload.

    Returns:
        The written keys, sorted.

    Raises:
        InvalidKey: a name that is not a clean key (nothing is written).
        StorageError (or the store's error): an upload failed after its retries; the keys
            this call wrote were deleted again.
    """
    prefix = normalize_prefix(prefix)
    pairs = [(validate_key(prefix + name), Path(path)) for name, path in files.items()]
    sweep = getattr(store, "sweep_temp", None)
    if sweep is not None:  # temp files of earlier writers killed mid-publish
        try:
            sweep()
        except OSError as e:
            log.warning("could not sweep the store's temp files: %s", e)
    done: list[str] = []
    lock = threading.Lock()

    def one(pair: tuple[str, Path]) -> str:
        key, path = pair
        store.put_file(key, path)
        with lock:
            done.append(key)
            n = len(done)
        if on_progress is not None:
            on_progress(n, len(pairs))
        return key

    try:
        keys = parallel_map(one, pairs, store.workers)
    except BaseException:
        for key in list(done):
            try:
                store.delete(key)
            except Exception as e:  # noqa: BLE001
                log.error("could not remove %s after the failed upload: %s", key, e)
        raise
    if remove_stale:
        written = set(keys)
        for info in store.list(prefix):
            if info.key not in written:
                try:
                    store.delete(info.key)
                except Exception as e:  # noqa: BLE001  (a stale key left is not a failure)
                    log.warning("could not remove stale %s: %s", info.key, e)
    return sorted(keys)
