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


def resolve_under_roots(value: str | Path, roots: "tuple[str | Path, ...] | list[str | Path]",
                        what: str, *, must_exist: bool = True) -> Path:
    """An absolute ``value`` resolved (symlinks followed) inside one of ``roots``.

    The allowed-roots check of a local ``source_uri`` / ``vocab_tree_path``: the same checks
    as :func:`resolve_inside` (NUL bytes, over-long components, symlink loops, links leading
    out), for a value that must be absolute and may lie under any of several roots.

    Raises:
        InputError: malformed, relative, outside every root (or no roots are configured),
            or missing when ``must_exist``. Messages show the value as given, never a
            resolved server path.
    """
    text = os.fspath(value)
    check_name(text, what)
    if not Path(text).is_absolute():
        raise InputError(None, f"{what} {text!r}: must be an absolute path or "
                               "s3://bucket/prefix")
    last: InputError | None = None
    for root in roots:
        try:
            out = resolve_inside(root, text, what, allow_absolute=True)
        except InputError as e:
            last = e
            if "symlink loop" in e.problem or "NUL" in e.problem:
                raise
            continue
        if must_exist and not out.exists():
            raise InputError(None, f"{what} {text!r}: does not exist")
        return out
    if last is not None and "symlink loop" in str(last):
        raise last
    raise InputError(None, f"{what} {text!r}: is outside the allowed roots "
                           "(SPLATFORGE_ALLOWED_ROOTS)")


def redact_paths(text: str, roots: "list[str | Path] | tuple[str | Path, ...]") -> str:
    """``text`` with every server folder of ``roots`` (as given and resolved) replaced by
    ``<server>``, so a message can be shown to a client."""
    out = text
    forms: set[str] = set()
    for r in roots:
        if r is None:
            continue
        forms.add(os.fspath(r))
        try:
            forms.add(str(Path(r).resolve()))
        except (OSError, RuntimeError):
            pass
    for f in sorted((f for f in forms if len(f) > 1), key=len, reverse=True):
        out = out.replace(f.rstrip("/") + "/", "").replace(f, "<server>")
    return out


def check_tree_inside(folder: str | Path, roots: "list[str | Path] | tuple[str | Path, ...]",
                      what: str, *, max_entries: int = 200_000) -> None:
    """Refuse a folder that holds a symlink leading outside every one of ``roots`` (or a
    symlink loop): reading the folder must never read a file outside them.

    Raises:
        InputError: naming the link relative to ``folder``.
    """
    base = Path(folder)
    if not base.is_dir():
        return
    resolved_roots = [Path(r).resolve() for r in roots]
    n = 0
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for name in (*dirnames, *filenames):
            n += 1
            if n > max_entries:
                raise InputError(None, f"{what}: more than {max_entries} files")
            p = Path(dirpath) / name
            if not p.is_symlink():
                continue
            rel = display_path(p, base)
            try:
                target = p.resolve(strict=False)
            except (RuntimeError, OSError):
                raise InputError(None, f"{what}: {rel!r} is a symlink loop") from None
            if not any(target == r or target.is_relative_to(r) for r in resolved_roots):
                raise InputError(None, f"{what}: {rel!r} is a symlink that leads outside "
                                       "the allowed roots")
