"""Checking uploaded media before anything is written: file names, zip entries, types.

Every check runs before the first byte is stored, so a rejected request writes nothing.
"""

from __future__ import annotations

import re
import stat
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..ingest import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from ..paths import resolve_inside

#: What a sanitised name keeps; everything else becomes ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: Files inside zips that are copied besides images (COLMAP models, transforms.json).
DATASET_EXTENSIONS = (".bin", ".txt", ".json", ".ply", ".db")


#: Member names that make a zip a posed dataset.
DATASET_MARKERS = frozenset({"cameras.bin", "cameras.txt", "images.bin", "images.txt",
                             "transforms.json", "transforms_train.json"})


class UploadRejected(ValueError):
    """A request that must be answered 400 (the message says why)."""


class UploadTooLarge(UploadRejected):
    """An upload over a byte budget (:class:`ByteBudget`): answered 413."""


@dataclass
class ByteBudget:
    """The uncompressed bytes one upload may write: ``total`` over all its files and zip
    members together (``SPLATFORGE_MAX_UNCOMPRESSED_MB``) and ``per_member`` for one file
    inside a zip (``SPLATFORGE_MAX_MEMBER_MB``), both in bytes; ``used`` counts what was
    charged so far."""

    total: int
    per_member: int
    used: int = 0

    def charge(self, n: int, label: str, member: str | None = None) -> None:
        """Count ``n`` more bytes of ``label`` (a file or a zip; ``member`` inside it).

        Raises:
            UploadTooLarge: the member is over ``per_member``, or the upload over ``total``;
                the message names the file, the member and the setting.
        """
        if member is not None and n > self.per_member:
            raise UploadTooLarge(
                f"{label}: member {member!r} is over the limit of {self.per_member} bytes "
                "uncompressed per file (SPLATFORGE_MAX_MEMBER_MB)")
        self.used += n
        if self.used > self.total:
            where = f"{label}" + (f" (member {member!r})" if member else "")
            raise UploadTooLarge(
                f"{where}: the upload holds more than {self.total} bytes uncompressed "
                "(SPLATFORGE_MAX_UNCOMPRESSED_MB)")


def sanitize_name(name: str) -> str:
    """A safe single file name from a client's ``name``: the last path component (``/`` and
    ``\\`` both separate), NFKC-normalised, characters outside ``A-Za-z0-9._-`` replaced by
    ``_``, leading dots removed, at most 200 characters.

    Raises:
        UploadRejected: nothing usable is left (``""``, ``..``).
    """
    base = re.split(r"[\\/]", name or "")[-1]
    base = unicodedata.normalize("NFKC", base)
    base = _UNSAFE.sub("_", base).lstrip(".")
    if len(base) > 200:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: 200 - len(ext) - 1] + "." + ext) if dot else base[:200]
    if not base or base.strip("._") == "":
        raise UploadRejected(f"file name {name!r} has no usable characters")
    return base


def media_type(name: str) -> str:
    """``image`` | ``video`` | ``zip`` from the extension.

    Raises:
        UploadRejected: another type.
    """
    low = name.lower()
    if low.endswith(IMAGE_EXTENSIONS):
        return "image"
    if low.endswith(tuple(VIDEO_EXTENSIONS)):
        return "video"
    if low.endswith(".zip"):
        return "zip"
    raise UploadRejected(
        f"{name}: unsupported file type (give images {', '.join(IMAGE_EXTENSIONS)}, a .zip "
        f"or a video {', '.join(VIDEO_EXTENSIONS)})")


@dataclass
class ZipPlan:
    """The checked members of a zip: ``(member, relative destination)`` pairs."""

    members: list[tuple[zipfile.ZipInfo, str]]
    total_bytes: int

    @property
    def is_dataset(self) -> bool:
        """The zip holds a posed dataset (a COLMAP model or a transforms.json): it is
        extracted; a zip of photos only is stored as it is (ingest reads zips)."""
        return any(rel.rsplit("/", 1)[-1] in DATASET_MARKERS for _, rel in self.members)


def check_zip(fileobj: BinaryIO, label: str, budget: ByteBudget | int) -> ZipPlan:
    """Check every entry of a zip before anything is extracted.

    Entries that would land outside the target (absolute paths, ``..`` components, drive
    letters, backslash tricks: "zip slip") and symbolic links reject the whole zip; so do a
    corrupt archive and declared uncompressed sizes over ``budget`` (a zip bomb: one member
    over ``budget.per_member``, or the kept members over what is left of ``budget.total``,
    which they are charged to). Hidden
    entries and ``__MACOSX/`` are skipped; a single top folder shared by every entry is
    dropped (``scene/sparse/0/...`` becomes ``sparse/0/...``); every path component is
    sanitised like :func:`sanitize_name`.

    Raises:
        UploadRejected: naming the zip and the offending entry.
        UploadTooLarge: over the budget, naming the zip and the member.
    """
    if isinstance(budget, int):  # one number: the zip's total and per-member limit
        budget = ByteBudget(budget, budget)
    try:
        zf = zipfile.ZipFile(fileobj)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise UploadRejected(f"{label}: not a readable zip ({e})") from None
    kept: list[tuple[zipfile.ZipInfo, list[str]]] = []
    total = 0
    for info in infos:
        raw = info.filename
        if "\\" in raw or raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or "\0" in raw:
            raise UploadRejected(f"{label}: entry {raw!r} escapes the target folder")
        parts = [p for p in PurePosixPath(raw).parts]
        if any(p == ".." for p in parts):
            raise UploadRejected(f"{label}: entry {raw!r} escapes the target folder")
        mode = (info.external_attr >> 16) & 0xFFFF
        if stat.S_ISLNK(mode):
            raise UploadRejected(f"{label}: entry {raw!r} is a symbolic link")
        if info.is_dir():
            continue
        parts = [p for p in parts if p not in ("", ".")]
        if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            continue
        low = parts[-1].lower()
        if not (low.endswith(IMAGE_EXTENSIONS) or low.endswith(DATASET_EXTENSIONS)
                or low.endswith(tuple(VIDEO_EXTENSIONS))):
            continue
        budget.charge(info.file_size, label, raw)
        total += info.file_size
        kept.append((info, parts))
    if not kept:
        raise UploadRejected(f"{label}: no images, video or dataset files inside")
    tops = {parts[0] for _, parts in kept}
    # a wrapper folder (``scene/...``) is dropped; a dataset's own folder (``sparse/0/...``,
    # ``images/...``) is not
    strip = (len(tops) == 1 and all(len(parts) > 1 for _, parts in kept)
             and not _is_dataset_folder(next(iter(tops))))
    members = []
    for info, parts in kept:
        rel = [sanitize_name(p) for p in (parts[1:] if strip else parts)]
        members.append((info, "/".join(rel)))
    return ZipPlan(members, total)


def _is_dataset_folder(name: str) -> bool:
    """``sparse``, ``images``, ``images_4``, ``masks``...: a folder a dataset itself holds."""
    low = name.lower()
    return low in ("sparse", "masks", "distorted") or low.startswith("images")


def extract_zip(fileobj: BinaryIO, plan: ZipPlan, dest: Path, label: str = "zip",
                per_member: int | None = None) -> None:
    """Extract the members of a checked zip into ``dest`` (paths from the plan only),
    streamed in 1 MiB blocks.

    The bytes are counted as they are written, never trusting the headers: a member stops
    at its declared size (which :func:`check_zip` charged to the budget) and at
    ``per_member`` bytes; its CRC is checked.

    Raises:
        UploadRejected: a corrupt member (bad CRC, broken deflate stream, a member that
            inflates past its declared size), naming the zip and the member.
        UploadTooLarge: a member inflating past ``per_member`` bytes.
    """
    import zlib

    zf = zipfile.ZipFile(fileobj)
    root = dest.resolve()
    for info, rel in plan.members:
        out = resolve_inside(root, rel, f"{label}: entry")
        out.parent.mkdir(parents=True, exist_ok=True)
        cap = info.file_size if per_member is None else min(info.file_size, per_member)
        try:
            with zf.open(info) as src, open(out, "wb") as dst:
                written = 0
                while block := src.read(1 << 20):
                    written += len(block)
                    if written > cap:
                        if written > info.file_size:
                            raise zipfile.BadZipFile("inflates past its declared size")
                        raise UploadTooLarge(
                            f"{label}: member {info.filename!r} is over the limit of "
                            f"{per_member} bytes uncompressed per file "
                            "(SPLATFORGE_MAX_MEMBER_MB)")
                    dst.write(block)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
                RuntimeError) as e:
            out.unlink(missing_ok=True)
            raise UploadRejected(f"{label}: entry {info.filename!r} is corrupt ({e})") from None
        except UploadTooLarge:
            out.unlink(missing_ok=True)
            raise
