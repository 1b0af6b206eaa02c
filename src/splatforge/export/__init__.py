"""Splat files: writers, readers and converters.

INRIA PLY (:mod:`.ply`, also reading gsplat / nerfstudio / SuperSplat PLYs and the PlayCanvas
compressed PLY), antimatter15 ``.splat`` (:mod:`.splat`), Niantic ``.spz`` v3 (:mod:`.spz`),
and extension-based dispatch (:mod:`.convert`). Splats are dicts of numpy arrays of raw
parameters (``means``, ``scales`` (log), ``quats`` (wxyz), ``opacities`` (logit), ``sh0``,
``shN``) in the COLMAP/INRIA frame.
"""

from .convert import (
                      SPLAT_EXTENSIONS,
                      ConvertResult,
                      convert,
                      read_splats,
                      splat_format,
                      write_splats,
)
from .ply import (
                      SH_C0,
                      canonical_splats,
                      inria_ply_properties,
                      read_ply,
                      sh_degree_of,
                      write_ply,
)
from .splat import decode_splat, encode_splat, read_splat, write_splat
from .spz import encode_spz, read_spz, read_spz_header, write_spz

__all__ = ["SH_C0", "SPLAT_EXTENSIONS", "ConvertResult", "canonical_splats", "convert",
           "decode_splat", "encode_splat", "encode_spz", "inria_ply_properties", "read_ply",
           "read_splat", "read_splats", "read_spz", "read_spz_header", "sh_degree_of",
           "splat_format", "write_ply", "write_splat", "write_splats", "write_spz"]
