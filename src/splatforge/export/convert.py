"""Read and write splat files by extension, and convert between them.

Formats (see each module for its layout, source and quantisation):

=====================  ==========================================  ======================
extension              format                                      module
=====================  ==========================================  ======================
``.ply``               INRIA 3DGS PLY (read also: gsplat,          :mod:`.ply`
                       nerfstudio, SuperSplat, PlayCanvas
                       compressed PLY)
``.splat``             antimatter15 32-byte rows, SH degree 0      :mod:`.splat`
``.spz``               Niantic spz v3 (gzip, RUB on disk)          :mod:`.spz`
=====================  ==========================================  ======================

All readers return splats in splatforge's frame (COLMAP/INRIA, RDF) as raw parameters; all
writers write atomically (temp file, then rename).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..events import Event, EventCallback
from .ply import read_ply, sh_degree_of, write_ply
from .splat import read_splat, write_splat
from .spz import read_spz, write_spz

#: Extensions :func:`read_splats` / :func:`write_splats` understand.
SPLAT_EXTENSIONS = (".ply", ".splat", ".spz")


def splat_format(path: str | Path) -> str:
    """``"ply"``, ``"splat"`` or ``"spz"`` from the (case-insensitive) extension of ``path``.

    Raises:
        InputError: any other extension.
    """
    ext = Path(path).suffix.lower()
    if ext not in SPLAT_EXTENSIONS:
        raise InputError(path, f"unknown splat file extension {ext or '(none)'!r}",
                         f"use one of {', '.join(SPLAT_EXTENSIONS)}")
    return ext[1:]


def read_splats(path: str | Path, events: EventCallback | None = None
                ) -> dict[str, np.ndarray]:
    """Read a ``.ply`` / ``.splat`` / ``.spz`` file into a splats dict (see the readers).

    Raises:
        InputError: unknown extension, or any problem the format's reader reports.
    """
    fmt = splat_format(path)
    reader = {"ply": read_ply, "splat": read_splat, "spz": read_spz}[fmt]
    return reader(path, events)


def write_splats(path: str | Path, splats: Mapping[str, np.ndarray]) -> Path:
    """Write splats to ``path`` in the format its extension names, atomically.

    Raises:
        InputError: unknown extension or unwritable splats.
    """
    fmt = splat_format(path)
    writer = {"ply": write_ply, "splat": write_splat, "spz": write_spz}[fmt]
    return writer(path, splats)


@dataclass
class ConvertResult:
    """What :func:`convert` did.

    Attributes:
        input, output: the two files.
        num_splats: splats written (after dropping NaN/Inf rows).
        sh_degree_in, sh_degree_out: SH degree read and written (``.splat`` keeps 0).
        warnings: warning messages the reader emitted (also sent to ``events``).
    """

    input: Path
    output: Path
    num_splats: int
    sh_degree_in: int
    sh_degree_out: int
    warnings: list[str] = field(default_factory=list)


def convert(src: str | Path, dst: str | Path, events: EventCallback | None = None
            ) -> ConvertResult:
    """Convert a splat file between ``.ply``, ``.splat`` and ``.spz``, by extension.

    The output is written atomically; ``.splat`` drops SH above degree 0 (an ``info`` event
    says so).

    Raises:
        InputError: unknown extension of either file, ``dst`` is the same file as ``src``
            (refused, so the input is never overwritten), or a bad input file.
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

    splats = read_splats(src, ev)
    deg = sh_degree_of(splats)
    deg_out = 0 if out_fmt == "splat" else deg
    if deg_out != deg:
        ev(Event("info", "export", f"{dst}: .splat stores SH degree 0; dropped degrees 1..{deg}"))
    write_splats(dst, splats)
    return ConvertResult(src, dst, len(splats["means"]), deg, deg_out, warnings)


__all__ = ["SPLAT_EXTENSIONS", "ConvertResult", "convert", "read_splats", "splat_format",
           "write_splats"]
