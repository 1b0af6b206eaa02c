"""Viewers started on demand and stopped when idle (the job service's ``/scenes/{id}/view``).

:class:`ViewerManager` keeps at most one :class:`~splatforge.viewer.server.SplatViewer` per key
(a scene id), each on its own free port. :meth:`ViewerManager.get_or_start` reuses the running
viewer when it shows the same model file, and replaces it when the model changed. A viewer is
idle when no browser is connected and nothing asked for it for ``idle_seconds``; a background
thread (or a direct :meth:`ViewerManager.reap` call) stops idle viewers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .data import DEFAULT_MAX_SPLATS, load_view_source
from .server import DEFAULT_HOST, SplatViewer

#: Default idle time in seconds before a managed viewer is stopped.
DEFAULT_IDLE_SECONDS = 600.0


@dataclass
class ManagedViewer:
    """A running viewer and its bookkeeping.

    Attributes:
        key: what it shows (a scene id). source: the file or folder it was started on.
        version: the caller's tag of the model shown (e.g. job id and file time), or None.
        viewer: the server. started: ``time.monotonic()`` at start. last_active: the last
            request for it or the last time a browser was seen connected (monotonic seconds).
    """

    key: str
    source: Path
    version: str | None
    viewer: SplatViewer
    started: float
    last_active: float

    @property
    def url(self) -> str:
        return self.viewer.url

    @property
    def port(self) -> int:
        return self.viewer.port


class ViewerManager:
    """One viewer per key, started on demand, stopped after ``idle_seconds`` without use.

    Args:
        idle_seconds: stop a viewer after this long with no browser connected and no request
            (> 0).
        host: address the viewers bind (each on a free port chosen by the OS).
        max_splats: display budget (see :func:`~splatforge.viewer.data.display_splats`).
        check_every: seconds between idle checks of the background thread (default:
            ``min(idle_seconds / 4, 10)``); 0 = no thread (call :meth:`reap` yourself).

    Raises:
        ValueError: ``idle_seconds <= 0``.
    """

    def __init__(self, idle_seconds: float = DEFAULT_IDLE_SECONDS, host: str = DEFAULT_HOST,
                 max_splats: int = DEFAULT_MAX_SPLATS, check_every: float | None = None):
        if not idle_seconds > 0:
            raise ValueError(f"idle_seconds must be > 0, got {idle_seconds}")
        self.idle_seconds = float(idle_seconds)
        self.host = host
        self.max_splats = int(max_splats)
        self._viewers: dict[str, ManagedViewer] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._closed = threading.Event()
        period = min(self.idle_seconds / 4, 10.0) if check_every is None else check_every
        self._thread = None
        if period > 0:
            self._thread = threading.Thread(target=self._reaper, args=(period,),
                                            name="splatforge-viewer-reaper", daemon=True)
            self._thread.start()

    def get(self, key: str) -> ManagedViewer | None:
        """The running viewer for ``key``, or None."""
        with self._lock:
            return self._viewers.get(key)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._viewers)

    def get_or_start(self, key: str, source: str | Path, version: str | None = None
                     ) -> ManagedViewer:
        """The viewer of ``key`` showing ``source`` (a splat file or model folder, see
        :func:`~splatforge.viewer.data.load_view_source`): the running one when it shows the
        same ``source`` and ``version``, else a new one (the old one is stopped). Marks it
        active.

        Raises:
            InputError: ``source`` cannot be read (nothing is started then).
        """
        source = Path(source)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one start per key at a time; other keys start in parallel
            with self._lock:
                mv = self._viewers.get(key)
                if mv is not None and mv.source == source and mv.version == version:
                    mv.last_active = time.monotonic()
                    return mv
            src = load_view_source(source)
            viewer = SplatViewer(self.host, 0, self.max_splats, label=f"splatforge: {key}")
            try:
                viewer.add_source(src)
            except BaseException:
                viewer.stop()
                raise
            now = time.monotonic()
            new = ManagedViewer(key, source, version, viewer, now, now)
            with self._lock:
                old = self._viewers.get(key)
                self._viewers[key] = new
            if old is not None:
                old.viewer.stop()
            return new

    def stop(self, key: str) -> bool:
        """Stop ``key``'s viewer; False when none was running."""
        with self._lock:
            mv = self._viewers.pop(key, None)
        if mv is None:
            return False
        mv.viewer.stop()
        return True

    def reap(self, now: float | None = None) -> list[str]:
        """Stop every viewer idle for ``idle_seconds`` (no browser connected, no request);
        returns the keys stopped. ``now``: monotonic seconds (default: now)."""
        now = time.monotonic() if now is None else now
        idle = []
        with self._lock:
            for key, mv in list(self._viewers.items()):
                if mv.viewer.num_clients() > 0:
                    mv.last_active = max(mv.last_active, now)
                elif now - mv.last_active >= self.idle_seconds:
                    idle.append(self._viewers.pop(key))
        for mv in idle:
            mv.viewer.stop()
        return [mv.key for mv in idle]

    def close(self) -> None:
        """Stop every viewer and the idle thread."""
        self._closed.set()
        with self._lock:
            viewers = list(self._viewers.values())
            self._viewers.clear()
        for mv in viewers:
            mv.viewer.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _reaper(self, period: float) -> None:
        while not self._closed.wait(period):
            try:
                self.reap()
            except Exception:  # keep the thread alive; a broken viewer is retried next time
                pass
