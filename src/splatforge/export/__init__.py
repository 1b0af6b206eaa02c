"""Writers (and later readers/converters) of trained splats: the INRIA PLY layout."""

from .ply import inria_ply_properties, write_ply

__all__ = ["inria_ply_properties", "write_ply"]
