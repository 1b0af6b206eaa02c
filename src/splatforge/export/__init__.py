"""Splat files: writers, readers and converters.

INRIA PLY and the PlayCanvas compressed PLY (:mod:`.ply`, also reading gsplat / nerfstudio /
SuperSplat PLYs), antimatter15 ``.splat`` (:mod:`.splat`), Niantic ``.spz`` v3/v4
(:mod:`.spz`), PlayCanvas SOG (:mod:`.sog`), and name-based dispatch (:mod:`.convert`).
Splats are dicts of numpy arrays of raw parameters (``means``, ``scales`` (log), ``quats``
(wxyz), ``opacities`` (logit), ``sh0``, ``shN``) in the COLMAP/INRIA frame.
"""

from .convert import (
                      SCENE_WRITERS,
                      SPLAT_EXTENSIONS,
                      SPLAT_FORMATS,
                      ConvertResult,
                      convert,
                      encode_format,
                      read_splats,
                      splat_format,
                      truncate_sh,
                      write_scene_exports,
                      write_splats,
)
from .ply import (
                      SH_C0,
                      canonical_splats,
                      clamp_nonfinite,
                      encode_compressed_ply,
                      encode_ply,
                      inria_ply_properties,
                      read_ply,
                      sh_degree_of,
                      write_compressed_ply,
                      write_ply,
)
from .sog import encode_sog, read_sog, write_sog
from .splat import decode_splat, encode_splat, read_splat, write_splat
from .spz import encode_spz, read_spz, read_spz_header, write_spz

__all__ = ["SCENE_WRITERS", "SH_C0", "SPLAT_EXTENSIONS", "SPLAT_FORMATS", "ConvertResult",
           "canonical_splats", "clamp_nonfinite", "convert", "decode_splat", "encode_format",
           "encode_compressed_ply", "encode_ply", "encode_sog", "encode_splat", "encode_spz",
           "inria_ply_properties", "read_ply", "read_sog", "read_splat", "read_splats",
           "read_spz", "read_spz_header", "sh_degree_of", "splat_format", "truncate_sh",
           "write_compressed_ply", "write_ply", "write_scene_exports", "write_sog",
           "write_splat", "write_splats", "write_spz"]
