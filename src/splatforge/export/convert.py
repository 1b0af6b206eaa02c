"""Read and write splat files by extension, and convert between them.

Formats (see each module for its layout, source and quantisation):

======================  ==========================================  ======================
name                    format                                      module
======================  ==========================================  ======================
``.ply``                INRIA 3DGS PLY (read also: gsplat,          :mod:`.ply`
                        nerfstudio, SuperSplat)
``.compressed.ply``     PlayCanvas / SuperSplat compressed PLY      :mod:`.ply`
                        (any ``.ply`` holding its layout is read
                        as such)
``.splat``              antimatter15 32-byte rows, SH degree 0      :mod:`.splat`
``.spz``                Niantic spz v4 (zstd; v3 gzip on request,   :mod:`.spz`
                        v1-v3 read), RUB on disk
``.sog`` / meta.json    PlayCanvas SOG v2 (bundled ZIP, or the      :mod:`.sog`
                        folder named by its meta.json, or a folder
                        holding one)
======================  ==========================================  ======================

All readers return splats in splatforge's frame (COLMAP/INRIA, RDF) as raw parameters and
clamp non-finite values with a warning; all writers write atomically (temp file, then rename).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..events import Event, EventCallback
from .ply import (
    encode_compressed_ply,
    encode_ply,
    read_ply,
    sh_degree_of,
    write_compressed_ply,
    write_ply,
)
from .sog import META_NAME, bundle_sog, encode_sog, read_sog, write_sog
from .splat import encode_splat, read_splat, write_splat
from .spz import encode_spz, read_spz, write_spz

#: Extensions :func:`read_splats` / :func:`write_splats` understand (plus ``meta.json`` and
#: folders holding one, for SOG).
SPLAT_EXTENSIONS = (".ply", ".compressed.ply", ".splat", ".spz", ".sog")
#: Format names, as :func:`splat_format` returns them.
SPLAT_FORMATS = ("ply", "compressed.ply", "splat", "spz", "sog")


def splat_format(path: str | Path) -> str:
    """``"ply"``, ``"compressed.ply"``, ``"splat"``, ``"spz"`` or ``"sog"`` from the
    (case-insensitive) name of ``path``: its extension, ``meta.json`` or a folder holding
    ``meta.json`` (SOG).

    Raises:
        InputError: any other name.
    """
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".compressed.ply"):
        return "compressed.ply"
    if name == META_NAME or (p.is_dir() and (p / META_NAME).is_file()):
        return "sog"
    ext = p.suffix.lower()
    if ext not in SPLAT_EXTENSIONS:
        raise InputError(path, f"unknown splat file extension {ext or '(none)'!r}",
                         f"use one of {', '.join(SPLAT_EXTENSIONS)} (or a SOG meta.json)")
    return ext[1:]


def read_splats(path: str | Path, events: EventCallback | None = None
                ) -> dict[str, np.ndarray]:
    """Read any splat file splatforge knows (see the module docstring) into a splats dict.

    Raises:
        InputError: unknown extension, or any problem the format's reader reports.
    """
    fmt = splat_format(path)
    reader = {"ply": read_ply, "compressed.ply": read_ply, "splat": read_splat,
              "spz": read_spz, "sog": read_sog}[fmt]
    return reader(path, events)


def truncate_sh(splats: Mapping[str, np.ndarray], degree: int) -> dict[str, np.ndarray]:
    """``splats`` with SH above ``degree`` dropped (no-op when it holds no more)."""
    out = dict(splats)
    k1 = (degree + 1) ** 2 - 1
    if "shN" in out and out["shN"] is not None:
        shN = np.asarray(out["shN"])
        out["shN"] = np.ascontiguousarray(shN.reshape(len(shN), -1, 3)[:, :k1])
    return out


def encode_format(fmt: str, splats: Mapping[str, np.ndarray], *, spz_version: int = 4
                  ) -> bytes:
    """The bytes of ``splats`` in format ``fmt`` (one of :data:`SPLAT_FORMATS`; SOG as its
    bundled ``.sog`` ZIP)."""
    if fmt == "ply":
        return encode_ply(splats)
    if fmt == "compressed.ply":
        return encode_compressed_ply(splats)
    if fmt == "splat":
        return encode_splat(splats)
    if fmt == "spz":
        return encode_spz(splats, version=spz_version)
    if fmt == "sog":
        return bundle_sog(encode_sog(splats))
    raise InputError(None, f"unknown splat format {fmt!r} (one of {', '.join(SPLAT_FORMATS)})")


def write_splats(path: str | Path, splats: Mapping[str, np.ndarray], *,
                 spz_version: int = 4) -> Path:
    """Write splats to ``path`` in the format its name gives (see :func:`splat_format`),
    atomically. ``spz_version``: 4 (default) or 3 for ``.spz``.

    Raises:
        InputError: unknown extension or unwritable splats.
    """
    fmt = splat_format(path)
    if fmt == "spz":
        return write_spz(path, splats, version=spz_version)
    writer = {"ply": write_ply, "compressed.ply": write_compressed_ply, "splat": write_splat,
              "sog": write_sog}[fmt]
    return writer(path, splats)


#: The web formats written next to a trained model: ``scene<ext>`` -> writer.
SCENE_WRITERS = {".splat": write_splat, ".spz": write_spz, ".sog": write_sog}


def write_scene_exports(out_dir: str | Path, splats: Mapping[str, np.ndarray],
                        stem: str = "scene") -> dict[str, Path]:
    """Write ``<out_dir>/<stem>.splat``, ``.spz`` (v4) and ``.sog`` from one splats dict
    (source frame, raw parameters); returns extension -> path."""
    out_dir = Path(out_dir)
    return {ext: w(out_dir / f"{stem}{ext}", splats) for ext, w in SCENE_WRITERS.items()}


@dataclass
class ConvertResult:
    """What :func:`convert` did.

    Attributes:
        input, output: the two files.
        num_splats: splats written (non-finite values clamped by the reader).
        sh_degree_in, sh_degree_out: SH degree read and written (``.splat`` keeps 0).
        warnings: warning messages the reader emitted (also sent to ``events``).
    """

    input: Path
    output: Path
    num_splats: int
    sh_degree_in: int
    sh_degree_out: int
    warnings: list[str] = field(default_factory=list)


def convert(src: str | Path, dst: str | Path, events: EventCallback | None = None, *,
            sh_degree: int | None = None, spz_version: int = 4) -> ConvertResult:
    """Convert a splat file between every format splatforge knows (see the module
    docstring), by name.

    Args:
        sh_degree: drop SH bands above this degree (default: keep all the format holds).
        spz_version: version of an ``.spz`` output (4, or 3 for older readers).

    The output is written atomically; ``.splat`` drops SH above degree 0 (an ``info`` event
    says so).

    Raises:
        InputError: unknown extension of either file, ``dst`` is the same file as ``src``
            (refused, so the input is never overwritten), a bad ``sh_degree``, or a bad input
            file.
    """
    src, dst = Path(src), Path(dst)
    splat_format(src)
    out_fmt = splat_format(dst)
    if src.resolve() == dst.resolve() or (dst.exists() and src.exists()
                                          and os.path.samefile(src, dst)):
        raise InputError(dst, "the output is the input file; refusing to overwrite it",
                         "choose another output path")
    warnings: list[str] = []

    def ev(e: Event) -> None:
        if e.kind == "warning":
            warnings.append(e.message)
        if events is not None:
            events(e)

    if sh_degree is not None and not 0 <= sh_degree <= 3:
        raise InputError(dst, f"--sh-degree {sh_degree} is not in 0..3")
    splats = read_splats(src, ev)
    deg = sh_degree_of(splats)
    deg_out = 0 if out_fmt == "splat" else deg
    if deg_out != deg:
        ev(Event("info", "export", f"{dst}: .splat stores SH degree 0; dropped degrees 1..{deg}"))
    if sh_degree is not None and sh_degree < deg_out:
        deg_out = sh_degree
    splats = truncate_sh(splats, deg_out)
    write_splats(dst, splats, spz_version=spz_version)
    return ConvertResult(src, dst, len(splats["means"]), deg, deg_out, warnings)


__all__ = ["SCENE_WRITERS", "SPLAT_EXTENSIONS", "SPLAT_FORMATS", "ConvertResult", "convert",
           "encode_format", "read_splats", "splat_format", "truncate_sh", "write_scene_exports",
           "write_splats"]
