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


def disambiguate(name: str, taken: set[str] | frozenset[str]) -> str:
    """``name`` (a relative ``/``-separated path), or the first of ``stem-2.ext``,
    ``stem-3.ext`` ... (in the same folder) that is not in ``taken``."""
    if name not in taken:
        return name
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    k = 2
    while True:
        cand = f"{stem}-{k}" + (f".{ext}" if ext else "")
        cand = f"{folder}/{cand}" if folder else cand
        if cand not in taken:
            return cand
        k += 1


def stored_names(names: list[str], taken: set[str] | frozenset[str] = frozenset(), *,
                 keep_folders: bool = False) -> list[str]:
    """The one naming rule of every upload: each client name (a file name, or a zip
    member's relative path) becomes a safe, distinct stored name.

    A file name is reduced to its last component and sanitised by :func:`sanitize_name`
    (``../../x.jpg`` -> ``x.jpg``); with ``keep_folders`` (zip members, already checked for
    ``..`` and absolute paths by :func:`check_zip`) every ``/``-separated component is
    sanitised and the folders are kept. A result that
    another name of ``names`` (earlier in the list) or of ``taken`` (already stored) has
    is disambiguated by :func:`disambiguate` (``a b.jpg``, ``a_b.jpg`` and ``a+b.jpg``
    become ``a_b-2.jpg``, ``a_b.jpg``, ``a_b-3.jpg``): two files never get one name, so
    none is overwritten. A name already safe and free keeps it (safe names are placed
    first).

    Returns:
        The stored names, in the order of ``names``.

    Raises:
        UploadRejected: a name with no usable characters.
    """
    safe = []
    for name in names:
        if not keep_folders:
            safe.append(sanitize_name(name))
            continue
        parts = [sanitize_name(p) for p in name.split("/") if p not in ("", ".")]
        if not parts:
            raise UploadRejected(f"file name {name!r} has no usable characters")
        safe.append("/".join(parts))
    used = set(taken)
    out: list[str | None] = [None] * len(names)
    # names that are already safe are placed first, so they keep their name
    order = sorted(range(len(names)), key=lambda k: safe[k] != names[k])
    for k in order:
        out[k] = disambiguate(safe[k], used)
        used.add(out[k])
    return out  # type: ignore[return-value]


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
    #: each member's relative path as the zip names it (wrapper folder dropped), in the
    #: order of ``members``: ``originals[k]`` was stored as ``members[k][1]``.
    originals: list[str] | None = None

    @property
    def renames(self) -> dict[str, str]:
        """Original relative path -> stored relative path, for the members whose name
        the naming rule changed."""
        return {o: rel for o, (_, rel) in zip(self.originals or [], self.members) if o != rel}

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
    dropped (``scene/sparse/0/...`` becomes ``sparse/0/...``); member names follow
    :func:`stored_names` (sanitised, collisions disambiguated; ``ZipPlan.renames`` says
    which changed, for :func:`rewrite_references`).

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
    originals = ["/".join(parts[1:] if strip else parts) for _, parts in kept]
    names = stored_names(_image_folders_alike(originals), keep_folders=True)
    members = [(info, rel) for (info, _), rel in zip(kept, names)]
    return ZipPlan(members, total, originals)


def _image_folders_alike(paths: list[str]) -> list[str]:
    """``paths`` with the names inside a dataset's image folders (``images/``,
    ``images_4/`` ... of one parent) given by :func:`stored_names` over the union of their
    names, so one photo gets one stored name in every resolution's folder (and a model's
    image name maps to one file name). Other paths are returned as they are."""
    groups: dict[str, set[str]] = {}
    where: list[tuple[str, str, str] | None] = []
    for path in paths:
        parts = path.split("/")
        k = next((i for i, p in enumerate(parts[:-1]) if p.lower().startswith("images")),
                 None)
        if k is None:
            where.append(None)
            continue
        parent, rest = "/".join(parts[:k]), "/".join(parts[k + 1:])
        groups.setdefault(parent, set()).add(rest)
        where.append((parent, parts[k], rest))
    mapped = {}
    for parent, rests in groups.items():
        order = sorted(rests)
        mapped[parent] = dict(zip(order, stored_names(order, keep_folders=True)))
    out = []
    for path, w in zip(paths, where):
        if w is None:
            out.append(path)
        else:
            parent, folder, rest = w
            out.append("/".join(x for x in (parent, folder, mapped[parent][rest]) if x))
    return out


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


# --------------------------------------------------------------------------------------------
# a dataset's own references
# --------------------------------------------------------------------------------------------

def _dataset_root(model_dir: str) -> str:
    """The dataset folder of a COLMAP model folder (``x/sparse/0`` -> ``x``, ``sparse`` ->
    ``""``), relative, ``/``-separated."""
    parts = [p for p in model_dir.split("/") if p]
    if "sparse" in parts:
        parts = parts[: len(parts) - 1 - parts[::-1].index("sparse")]
    elif parts:
        parts = parts[:-1]
    return "/".join(parts)


def _image_name_map(root: str, renames: dict[str, str]) -> dict[str, str]:
    """COLMAP image name -> stored name, from the renamed members of the dataset's image
    folders (``<root>/images*/<name>``, or photos in ``<root>`` itself); ``images/`` first
    when folders disagree."""
    pre = f"{root}/" if root else ""
    found: list[tuple[bool, str, str]] = []
    for orig, new in renames.items():
        if not orig.startswith(pre) or not new.startswith(pre):
            continue
        o_parts, n_parts = orig[len(pre):].split("/"), new[len(pre):].split("/")
        if len(o_parts) == 1 and len(n_parts) == 1:  # photos beside sparse/
            found.append((True, o_parts[0], n_parts[0]))
            continue
        if len(o_parts) < 2 or not o_parts[0].lower().startswith("images"):
            continue
        found.append((o_parts[0] != "images", "/".join(o_parts[1:]), "/".join(n_parts[1:])))
    out: dict[str, str] = {}
    for _, o, n in sorted(found):
        out.setdefault(o, n)
    return out


def _rewrite_images_txt(path: Path, names: dict[str, str]) -> bool:
    """Rename the NAME column of a COLMAP ``images.txt`` (each image line is followed by its
    2D-points line, read as COLMAP reads it). Returns True when something changed."""
    lines = path.read_text(encoding="utf-8", errors="surrogateescape").split("\n")
    changed = False
    k = 0
    while k < len(lines):
        line = lines[k].strip()
        if not line or line.startswith("#"):
            k += 1
            continue
        fields = line.split(None, 9)
        if len(fields) == 10 and fields[9] in names:
            lines[k] = " ".join(fields[:9] + [names[fields[9]]])
            changed = True
        k += 2  # the next line is this image's 2D points, whatever it holds
    if changed:
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogateescape")
    return changed


def _rewrite_images_bin(model: Path, names: dict[str, str]) -> bool:
    """Rename images of a binary COLMAP model through pycolmap (read, rename, write back).
    A model pycolmap cannot read is left as it is (the job names the broken file)."""
    import numpy  # noqa: F401  (before pycolmap: pycolmap first breaks a later PNG save)
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(model))
    except Exception:  # noqa: BLE001  (an invalid model: reading it in the job says why)
        return False
    changed = False
    for im in rec.images.values():
        if im.name in names:
            im.name = names[im.name]
            changed = True
    if changed:
        rec.write_binary(str(model))
    return changed


def _rewrite_transforms(path: Path, rel_dir: str, renames: dict[str, str]) -> bool:
    """Rename ``file_path`` / ``mask_path`` / ``depth_file_path`` of a transforms.json's
    frames (kept relative to the JSON's folder, ``./`` and a missing extension kept)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list):
        return False
    pre = f"{rel_dir}/" if rel_dir else ""
    by_stem = {}
    for orig, new in renames.items():
        o_base, n_base = orig.rsplit(".", 1)[0], new.rsplit(".", 1)[0]
        by_stem.setdefault(o_base, n_base)
    changed = False
    for f in frames:
        if not isinstance(f, dict):
            continue
        for key in ("file_path", "mask_path", "depth_file_path"):
            value = f.get(key)
            if not isinstance(value, str):
                continue
            dot = "./" if value.startswith("./") else ""
            rel = pre + value[len(dot):]
            new = renames.get(rel)
            if new is None and "." not in rel.rsplit("/", 1)[-1]:
                new = by_stem.get(rel)  # blender style: no extension
            if new is not None and new.startswith(pre):
                f[key] = dot + new[len(pre):]
                changed = True
    if changed:
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return changed


def rewrite_references(root: Path, renames: dict[str, str]) -> list[str]:
    """Make a dataset extracted into ``root`` name its files as they were stored: the NAME
    of COLMAP ``images.txt`` / ``images.bin`` (through pycolmap) and the frames' paths of
    ``transforms*.json``, wherever the file they name was renamed by :func:`stored_names`
    (``renames``: original relative path -> stored one). Names that match no stored member
    (a file outside the dataset, a missing image) are left as they are, so the job's error
    names them as the client wrote them.

    Returns:
        The rewritten files, relative to ``root``.
    """
    if not renames:
        return []
    root = Path(root)
    done = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        folder = rel.rpartition("/")[0]
        low = p.name.lower()
        if low == "images.txt":
            if _rewrite_images_txt(p, _image_name_map(_dataset_root(folder), renames)):
                done.append(rel)
        elif low == "images.bin":
            if _rewrite_images_bin(p.parent, _image_name_map(_dataset_root(folder), renames)):
                done.append(rel)
        elif low.startswith("transforms") and low.endswith(".json"):
            if _rewrite_transforms(p, folder, renames):
                done.append(rel)
    return done
