"""Image folders and zips of images: list, verify, orient, name and write.

Sources are listed by :func:`list_folder` or :func:`list_zip` as :class:`ImageSource` items
(a name plus a way to open a stream of its bytes); :func:`ingest_image_sources` then
streams each one to disk (never holding a file or zip member whole in memory), decodes it to
check it, applies its EXIF orientation, writes it under a normalised name and (optionally)
scores its sharpness and drops the blurriest.
"""

from __future__ import annotations

import re
import zipfile
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from PIL import ExifTags, Image, ImageOps

from ..config import IngestConfig
from ..errors import InputError
from ..events import StageReporter
from .sharpness import blur_filter_count, blurriest, image_sharpness

#: File extensions taken as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

#: Zip members larger than this (uncompressed, bytes) are skipped: a guard against zip bombs.
MAX_MEMBER_BYTES = 1 << 30

#: Orientation values that :func:`PIL.ImageOps.exif_transpose` acts on (1 = already upright).
_TRANSPOSING_ORIENTATIONS = frozenset(range(2, 9))


@dataclass(frozen=True)
class ImageSource:
    """One candidate image.

    Attributes:
        name: how the image is named in messages and in ``skipped``: the file name for a
            folder, the member path (``sub/IMG_1.JPG``) for a zip.
        base_name: the file's own name, without any folder (used for the output name).
        size: size in bytes (uncompressed for zip members).
        open: returns a binary stream of the file's bytes, read in blocks (may raise
            ``OSError``, ``zipfile.BadZipFile``, ...; a zip member's stream stops at its
            declared size and checks its CRC).
        origin: the file itself (folders) or the zip (zips): what errors name.
        member: the member path inside the zip, ``None`` for folder files.
        parents: the member's folder names inside the zip (used to prefix duplicate names).
    """

    name: str
    base_name: str
    size: int
    open: Callable[[], BinaryIO]
    origin: Path
    member: str | None = None
    parents: tuple[str, ...] = ()


@dataclass
class ImagesOutcome:
    """What :func:`ingest_image_sources` wrote.

    Attributes:
        images: output file names (in the output folder), sorted.
        skipped: ``(name, reason)`` for every candidate not written or removed again.
        sharpness: output name -> variance of the Laplacian, when the blur filter ran.
        sources: output name -> source name (file name or zip member path).
        reoriented: output names whose EXIF orientation was applied.
    """

    images: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sharpness: dict[str, float] | None = None
    sources: dict[str, str] = field(default_factory=dict)
    reoriented: list[str] = field(default_factory=list)


def is_image_name(name: str) -> bool:
    """True for ``.jpg``, ``.jpeg`` and ``.png`` names, in any case."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _summarise(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def list_folder(folder: Path, reporter: StageReporter) -> list[ImageSource]:
    """The image files at the top level of ``folder``, sorted by name.

    Only the folder's own files are taken: subfolders are not searched (an info event names
    them). Hidden files (``.name``, e.g. macOS ``._IMG_1.JPG`` resource forks) and files
    whose extension is not ``.jpg``/``.jpeg``/``.png`` (any case) are ignored, with an info
    event.

    Raises:
        InputError: the folder cannot be listed.
    """
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise InputError(folder, f"cannot list the folder: {exc.strerror or exc}") from None
    sources, others, subfolders = [], [], []
    for p in entries:
        if p.is_dir():
            subfolders.append(p.name)
        elif _is_hidden(p.name) or not is_image_name(p.name) or not p.is_file():
            others.append(p.name)
        else:
            sources.append(ImageSource(
                name=p.name, base_name=p.name, size=p.stat().st_size,
                open=(lambda p=p: open(p, "rb")), origin=p))
    if others:
        reporter.info(f"ignoring {len(others)} non-image or hidden file(s) in {folder}: "
                      f"{_summarise(others)}", ignored=others)
    if subfolders:
        reporter.info(f"ignoring {len(subfolders)} subfolder(s) of {folder} (only the top "
                      f"level is read): {_summarise(subfolders)}", subfolders=subfolders)
    return sources


def list_zip(archive: zipfile.ZipFile, zip_path: Path, reporter: StageReporter) -> list[ImageSource]:
    """The image members of an open zip, sorted by member path.

    Members in any folder are taken. Directories, anything under ``__MACOSX/``, hidden files
    or files in hidden folders (a path part starting with ``.``) and non-image names are
    ignored (info event). Only a member's base name is ever used for output, so ``../`` or
    absolute member paths cannot write outside the output folder. Members over
    :data:`MAX_MEMBER_BYTES` are ignored with a warning.
    """
    sources, others = [], []
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
        if info.is_dir():
            continue
        name = info.filename
        parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", "/")]
        if not parts:
            continue
        base = parts[-1]
        folders = [p for p in parts[:-1] if p not in (".", "..")]
        if parts[0] == "__MACOSX" or any(_is_hidden(p) for p in folders) or _is_hidden(base):
            continue
        if not is_image_name(base):
            others.append(name)
            continue
        if info.file_size > MAX_MEMBER_BYTES:
            reporter.warning(f"{zip_path}: ignoring member {name}: {info.file_size} bytes "
                             f"uncompressed, over the {MAX_MEMBER_BYTES} byte limit",
                             file=name)
            continue
        sources.append(ImageSource(
            name=name, base_name=base, size=info.file_size,
            open=(lambda i=info: archive.open(i)), origin=zip_path, member=name,
            parents=tuple(folders)))
    if others:
        reporter.info(f"ignoring {len(others)} non-image member(s) of {zip_path}: "
                      f"{_summarise(others)}", ignored=others)
    return sources


def _output_extension(fmt: str | None) -> str:
    """Output extension for a decoded format: JPEG (and MPO, JPEG-compatible) -> ``.jpg``,
    everything else -> ``.png`` (non-JPEG/PNG content is re-encoded as PNG)."""
    return ".jpg" if fmt in ("JPEG", "MPO") else ".png"


_UNSAFE = re.compile(r"[^\w.\-]+")


def _unique_name(src: ImageSource, ext: str, taken: set[str]) -> str:
    """An output name for ``src`` that collides with none in ``taken`` (case-insensitively).

    The original stem is kept. On a collision, zip members are prefixed with their folder
    names (``a/b/IMG.jpg`` -> ``a_b_IMG.jpg``); if the name is still taken (or the source
    has no folder), ``_2``, ``_3``, ... is appended to the stem.
    """
    stem = PurePosixPath(src.base_name).stem or "image"
    candidates = [stem]
    if src.parents:
        prefix = _UNSAFE.sub("_", "_".join(src.parents)).strip("_")
        if prefix:
            candidates.append(f"{prefix}_{stem}")
    for c in candidates:
        if (c + ext).casefold() not in taken:
            return c + ext
    base = candidates[-1]
    k = 2
    while f"{base}_{k}{ext}".casefold() in taken:
        k += 1
    return f"{base}_{k}{ext}"


def _fail(src: ImageSource, reason: str) -> InputError:
    if src.member is not None:
        return InputError(src.origin, f"member {src.member}: {reason}",
                          hint="fix or remove it, or run without strict to skip it")
    return InputError(src.origin, reason,
                      hint="fix or remove the file, or run without strict to skip it")


def ingest_image_sources(
    sources: list[ImageSource],
    out_dir: Path,
    config: IngestConfig,
    reporter: StageReporter,
    origin: Path,
) -> ImagesOutcome:
    """Verify, orient and write ``sources`` into ``out_dir``; optionally drop the blurriest.

    For each source, in order:

    1. A zero-byte file, or one that cannot be read or fully decoded by Pillow
       (``Image.open`` + ``load``; e.g. a truncated JPEG), is skipped: a ``warning`` event
       and a ``skipped`` entry name it and say why. With ``config.strict`` the first such
       file raises instead.
    2. If its EXIF Orientation is 2..8, the image is transposed
       (:func:`PIL.ImageOps.exif_transpose`) and re-encoded (JPEG quality 95, or PNG)
       with its EXIF kept minus the orientation tag, and its ICC profile kept. Otherwise
       the file's bytes are copied unchanged (lossless).
    3. It is written as ``<original stem>.jpg`` or ``.png`` (the extension follows the
       decoded content; ``.JPEG``/``.jpeg``/``.JPG`` all become ``.jpg``). Name collisions
       after normalisation are resolved by :func:`_unique_name`.

    With ``config.blur_filter_percent`` P > 0, each written image gets a sharpness score
    (:func:`~splatforge.ingest.sharpness.image_sharpness`, on the oriented image downscaled to
    a 640 px longer side) and the ``round(P% of N)`` lowest-scoring ones are deleted again,
    never leaving fewer than ``config.min_images``.

    Args:
        sources: candidates from :func:`list_folder` or :func:`list_zip`.
        out_dir: an existing, empty folder to write into.
        config: the ingest configuration.
        reporter: progress (``images`` step k of n), warnings and info.
        origin: the folder or zip, named by the errors below.

    Returns:
        The :class:`ImagesOutcome`.

    Raises:
        InputError: no candidate images at all; fewer than ``config.min_images`` usable
            images (the message says how many were usable and the minimum); or, with
            ``config.strict``, the first unreadable image (naming it).
    """
    min_images = config.min_images
    if not sources:
        raise InputError(
            origin,
            f"no images found (looked for .jpg, .jpeg and .png files, any case); "
            f"0 usable images, at least {min_images} are needed",
            hint="point to a folder or zip of photos, or to a video")

    out = ImagesOutcome()
    want_sharpness = config.blur_filter_percent > 0
    scores: dict[str, float] = {}
    taken: set[str] = set()
    reporter.start_steps("images", len(sources))
    for k, src in enumerate(sources, start=1):
        reason = None
        img = None
        # the bytes are streamed to a hidden file next to the output (1 MiB blocks), then
        # decoded from there: a large file or zip member is never held in memory whole
        spool = out_dir / f".ingest-{k}.part"
        if src.size == 0:
            reason = "empty file (0 bytes)"
        else:
            try:
                with src.open() as fin, open(spool, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            except (OSError, zipfile.BadZipFile, RuntimeError, NotImplementedError,
                    EOFError, ValueError) as exc:
                # RuntimeError: encrypted member; NotImplementedError: compression method.
                reason = f"cannot be read: {exc}"
            else:
                if spool.stat().st_size == 0:
                    reason = "empty file (0 bytes)"
                else:
                    try:
                        img = Image.open(spool)
                        img.load()
                    except Exception as exc:  # noqa: BLE001  Pillow raises many types
                        if img is not None:
                            img.close()
                        img = None
                        reason = f"not a readable image ({type(exc).__name__}: {exc})"
        if reason is not None:
            spool.unlink(missing_ok=True)
            if config.strict:
                raise _fail(src, reason)
            reporter.warning(f"skipping {src.name}: {reason}", file=src.name, reason=reason)
            out.skipped.append((src.name, reason))
            reporter.step(k)
            continue

        assert img is not None
        ext = _output_extension(img.format)
        name = _unique_name(src, ext, taken)
        taken.add(name.casefold())
        target = out_dir / name
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in _TRANSPOSING_ORIENTATIONS:
            oriented = ImageOps.exif_transpose(img)
            _save_reencoded(oriented, target, ext)
            out.reoriented.append(name)
            spool.unlink()
        elif img.format in ("JPEG", "MPO", "PNG"):
            oriented = img
            os.replace(spool, target)  # the bytes unchanged (lossless)
        else:
            oriented = img
            reporter.info(f"{src.name}: {img.format} content re-encoded as PNG ({name})",
                          file=src.name)
            _save_reencoded(img, target, ext)
            spool.unlink()
        if want_sharpness:
            scores[name] = image_sharpness(oriented)
        out.images.append(name)
        out.sources[name] = src.name
        img.close()
        reporter.step(k)

    n_ok = len(out.images)
    if n_ok < min_images:
        skipped_note = f" ({len(out.skipped)} skipped as unreadable)" if out.skipped else ""
        raise InputError(
            origin,
            f"only {n_ok} usable image{'s' if n_ok != 1 else ''} found{skipped_note}; "
            f"at least {min_images} are needed (min_images)",
            hint="add more photos (20 or more overlapping views work best)")

    if want_sharpness:
        out.sharpness = scores
        pct = config.blur_filter_percent
        n_drop = blur_filter_count(n_ok, pct, min_images)
        dropped = blurriest(scores, n_drop)
        for name in dropped:
            (out_dir / name).unlink()
            reason = f"blurry (sharpness {scores[name]:.1f}, below the {pct:g}-th percentile)"
            out.skipped.append((out.sources[name], reason))
            out.images.remove(name)
        reporter.info(f"blur filter: dropped {len(dropped)} of {n_ok} images "
                      f"({pct:g}% requested, at least {min_images} kept)",
                      dropped=[out.sources[n] for n in dropped])

    out.images.sort()
    return out


def _save_reencoded(img: Image.Image, target: Path, ext: str) -> None:
    """Write ``img`` as JPEG (quality 95) or PNG, keeping its EXIF and ICC profile."""
    params: dict = {}
    exif = img.getexif()
    if len(exif):
        params["exif"] = exif
    icc = img.info.get("icc_profile")
    if icc:
        params["icc_profile"] = icc
    if ext == ".jpg":
        if img.mode not in ("RGB", "L", "CMYK"):
            img = img.convert("RGB")
        img.save(target, "JPEG", quality=95, **params)
    else:
        img.save(target, "PNG", **params)
