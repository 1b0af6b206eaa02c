"""One place that turns a user- or dataset-supplied path into a path inside its folder.

Every path that arrives from outside (an HTTP field, an upload's member name, an image name in a
dataset's ``images.txt`` / ``transforms.json``, a ``source_uri`` under an allowed root) goes
through :func:`resolve_inside` before anything opens it, so a hostile ``../..``, an absolute
path, a symlink that leads out of the folder, a NUL byte, an over-long component or a symlink
loop becomes one clear :class:`~splatforge.errors.InputError` instead of a read outside the
folder or an ``OSError`` that surfaces as an HTTP 500.

Messages name the offending value *relative to the folder* (never the server's absolute path),
so they can be shown to a client as they are.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from .errors import InputError

#: POSIX NAME_MAX on every file system splatforge supports (ext4, xfs, APFS, NTFS).
NAME_MAX = 255


def check_name(value: str, what: str) -> None:
    """Reject values no file system can hold, before they reach ``os`` calls.

    Args:
        value: the user-supplied path or name.
        what: how the message names the value (``"scene.images"``, ``"images.txt entry"``).

    Raises:
        InputError: ``value`` is empty, holds a NUL byte, or has a component longer than
            :data:`NAME_MAX` bytes (UTF-8).
    """
    if not value:
        raise InputError(None, f"{what}: empty path")
    if "\x00" in value:
        raise InputError(None, f"{what}: the path holds a NUL byte")
    for part in PurePosixPath(value.replace("\\", "/")).parts:
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise InputError(None, f"{what}: a path component is longer than {NAME_MAX} bytes")


def resolve_inside(root: str | Path, value: str | Path, what: str, *,
                   allow_absolute: bool = False) -> Path:
    """Resolve ``value`` (relative to ``root``) and insist the result lies inside ``root``.

    Symlinks are followed (both in ``root`` and in ``value``) before the check, so a link that
    points out of ``root`` is refused like a ``../`` would be.

    Args:
        root: the folder the value belongs to (a dataset folder, an upload folder, an allowed
            root).
        value: the path as the user or the dataset wrote it. Relative paths are taken relative
            to ``root``.
        what: how the message names the value.
        allow_absolute: accept an absolute ``value`` when it resolves inside ``root`` (an
            allowed-root check for a local ``source_uri``); otherwise an absolute value is an
            error even if it points inside.

    Returns:
        The resolved absolute path (it need not exist).

    Raises:
        InputError: the value is malformed (see :func:`check_name`), absolute when that is not
            allowed, leads outside ``root``, or is a symlink loop. The message names ``what``
            and the value as given, never the server-side absolute path of ``root``.
    """
    text = os.fspath(value)
    check_name(text, what)
    given = Path(text)
    if given.is_absolute() and not allow_absolute:
        raise InputError(None, f"{what} {text!r}: must be a path inside the folder, not an "
                               "absolute path")
    base = Path(root).resolve()
    try:
        out = (base / given).resolve(strict=False)
    except RuntimeError:  # Python < 3.13 reports a symlink loop this way
        raise InputError(None, f"{what} {text!r}: symlink loop") from None
    except OSError as e:
        raise InputError(None, f"{what} {text!r}: {e.strerror or e}") from None
    if out != base and not out.is_relative_to(base):
        raise InputError(None, f"{what} {text!r}: leads outside the folder it belongs to")
    return out


def display_path(path: str | Path, root: str | Path | None) -> str:
    """``path`` as a client may see it: relative to ``root`` when inside it, else its name.

    Args:
        path: a server-side path.
        root: the folder the client knows (an upload, a workspace), or ``None``.
    """
    p = Path(path)
    if root is not None:
        try:
            return p.resolve().relative_to(Path(root).resolve()).as_posix() or "."
        except (ValueError, OSError, RuntimeError):
            pass
    return p.name


def join_inside(root: str | Path, value: str, what: str) -> Path:
    """``root / value`` for a name a *dataset* lists (an ``images.txt`` name, a
    ``transforms.json`` ``file_path``), refused when it leads outside ``root`` on its own.

    Unlike :func:`resolve_inside` this is a lexical check: symlinks inside the dataset are the
    dataset owner's (a local dataset may link its photos from elsewhere; uploads never carry
    links, their extraction refuses them), but the name itself may not be absolute or climb
    out with ``..``.

    Raises:
        InputError: the name is malformed (:func:`check_name`), absolute, or leads outside
            ``root``; the message names ``what`` and the value, never ``root``.
    """
    check_name(value, what)
    text = value.replace("\\", "/")
    if text.startswith("/") or PurePosixPath(text).is_absolute() or Path(value).is_absolute() \
            or (len(text) > 1 and text[1] == ":"):
        raise InputError(None, f"{what} {value!r}: must be a path inside the folder, not an "
                               "absolute path")
    norm = os.path.normpath(text)
    if norm == ".." or norm.startswith("../"):
        raise InputError(None, f"{what} {value!r}: leads outside the folder it belongs to")
    return Path(root) / value
