"""Small file helpers shared by the stages."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name keeps ``path``'s suffix (so writers that pick a format from the
    extension work). Readers see either the old file or the complete new one, never a partial
    write; on any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}",
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`), synced to disk."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def read_input_bytes(path: str | Path) -> bytes:
    """The bytes of an input file.

    Raises:
        InputError: the file is missing or cannot be read (the message names it).
    """
    from .errors import InputError

    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as e:
        raise InputError(path, f"cannot read file ({e.strerror or e})") from None


@contextmanager
def sigint_handler(handler) -> Iterator[None]:
    """Within the block, Ctrl-C (SIGINT) calls ``handler(signum, frame)`` instead of the
    current handler, which is put back on exit. Outside the main thread, or where signals
    cannot be set (an embedded interpreter), nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not allowed here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
