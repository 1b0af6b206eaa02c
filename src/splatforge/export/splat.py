"""The ``.splat`` format of antimatter15's WebGL viewer (github.com/antimatter15/splat).

Layout, as antimatter15/splat ``convert.py`` writes it (cited, not copied): no header; one
32-byte little-endian row per splat, rows sorted by descending
``exp(scale_0 + scale_1 + scale_2) * sigmoid(opacity)`` (volume times opacity, so a viewer
streaming the file shows the big, opaque splats first)::

    bytes  0..11  float32 x, y, z                 position (scene units)
    bytes 12..23  float32 exp(scale_0..2)         linear scales (scene units)
    bytes 24..27  uint8 R, G, B, A                RGB = clip((0.5 + SH_C0 * f_dc) * 255),
                                                  A = sigmoid(opacity) * 255
    bytes 28..31  uint8 q_w, q_x, q_y, q_z        clip((q / |q|) * 128 + 128)

Only SH band 0 is stored (``shN`` is dropped). This writer rounds to the nearest uint8
(``convert.py`` truncates), so colour and alpha are within 0.5/255 of the true value inside
the representable range; the quaternion within 1/256 per component of ``q/|q|`` (1/128 where
a component of +1 is clipped to 255). Positions and exp(scales) are float32, exact.

The frame is whatever the splats are in (antimatter15's converter writes INRIA's PLY frame
unchanged: x right, y down, z forward), so this module does no axis conversion.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..events import EventCallback
from ..util import atomic_write_bytes, read_input_bytes
from .ply import SH_C0, canonical_splats, clamp_nonfinite

#: One row of a ``.splat`` file.
SPLAT_DTYPE = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)),
                        ("rgba", "u1", (4,)), ("rot", "u1", (4,))])
assert SPLAT_DTYPE.itemsize == 32


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def splat_order(splats: Mapping[str, np.ndarray]) -> np.ndarray:
    """Row order of a ``.splat`` file: indices ``[N]`` sorting by descending
    ``exp(sum of log scales) * sigmoid(opacity)`` (stable for ties)."""
    s = np.asarray(splats["scales"], np.float64).reshape(-1, 3).sum(1)
    key = np.exp(s) * _sigmoid(np.asarray(splats["opacities"]).reshape(-1))
    return np.argsort(-key, kind="stable")


def encode_splat(splats: Mapping[str, np.ndarray]) -> bytes:
    """Encode splats (raw parameters, see :func:`splatforge.export.ply.write_ply`) as the bytes
    of a ``.splat`` file (32 bytes per splat, sorted; see the module docstring)."""
    sp = canonical_splats(splats)
    order = splat_order(sp)
    n = len(order)
    out = np.zeros(n, SPLAT_DTYPE)
    out["position"] = sp["means"][order]
    out["scale"] = np.exp(sp["scales"][order].astype(np.float64)).astype(np.float32)
    rgb = 0.5 + SH_C0 * sp["sh0"][order, 0].astype(np.float64)
    a = _sigmoid(sp["opacities"][order])
    out["rgba"][:, :3] = np.clip(np.rint(rgb * 255), 0, 255)
    out["rgba"][:, 3] = np.clip(np.rint(a * 255), 0, 255)
    q = sp["quats"][order].astype(np.float64)
    qn = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(qn > 0, q / np.where(qn > 0, qn, 1), np.array([1.0, 0, 0, 0]))
    out["rot"] = np.clip(np.rint(q * 128 + 128), 0, 255)
    return out.tobytes()


def write_splat(path: str | Path, splats: Mapping[str, np.ndarray]) -> Path:
    """Write splats as an antimatter15 ``.splat`` file, atomically.

    Args:
        path: file to write (folders are created).
        splats: ``means [N, 3]``, ``scales [N, 3]`` (log), ``quats [N, 4]`` (wxyz),
            ``opacities [N]`` (logit), ``sh0 [N, 1, 3]`` or ``[N, 3]``; ``shN`` is ignored.

    Returns:
        ``path``.

    Raises:
        InputError: missing arrays or inconsistent lengths.
    """
    path = Path(path)
    atomic_write_bytes(path, encode_splat(splats))
    return path


def decode_splat(data: bytes, path: str | Path | None = None,
                 events: EventCallback | None = None) -> dict[str, np.ndarray]:
    """Decode the bytes of a ``.splat`` file (see :func:`read_splat`)."""
    if len(data) % SPLAT_DTYPE.itemsize:
        raise InputError(path, f".splat file is {len(data)} bytes, not a multiple of the "
                         f"{SPLAT_DTYPE.itemsize}-byte row", "the file is truncated or not a "
                         ".splat file")
    if not data:
        raise InputError(path, "the .splat file is empty (no splats)",
                         "export the scene again; an empty splat file cannot be viewed")
    rows = np.frombuffer(data, SPLAT_DTYPE)
    n = len(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.log(rows["scale"].astype(np.float32))  # scale <= 0 -> -inf/nan: clamped
    rgba = rows["rgba"].astype(np.float32) / 255.0
    a = np.clip(rgba[:, 3], 0.5 / 255, 1 - 0.5 / 255)
    splats = {
        "means": rows["position"].astype(np.float32),
        "scales": scales.astype(np.float32),
        "quats": ((rows["rot"].astype(np.float32) - 128.0) / 128.0),
        "opacities": (-np.log(1.0 / a - 1.0)).astype(np.float32),
        "sh0": ((rgba[:, :3] - 0.5) / SH_C0).astype(np.float32).reshape(n, 1, 3),
        "shN": np.zeros((n, 0, 3), np.float32),
    }
    return clamp_nonfinite(splats, path, events)


def read_splat(path: str | Path, events: EventCallback | None = None) -> dict[str, np.ndarray]:
    """Read an antimatter15 ``.splat`` file into a splats dict at SH degree 0.

    Returns:
        ``means [N, 3]``, ``scales [N, 3]`` (log of the stored linear scales),
        ``quats [N, 4]`` (wxyz, ``(u8 - 128) / 128``, unnormalised), ``opacities [N]``
        (``logit(A / 255)``, A clamped to 0.5..254.5 so that 0 and 255 stay finite),
        ``sh0 [N, 1, 3]`` (``(RGB / 255 - 0.5) / SH_C0``), ``shN [N, 0, 3]``; float32, in
        the file's order (sorted, see the module docstring).

    NaN/Inf values (and the log of a non-positive scale) are clamped with a ``warning`` event
    (see :func:`~splatforge.export.ply.clamp_nonfinite`).

    Raises:
        InputError: missing/unreadable file, an empty file, or a size that is not a multiple
            of 32 bytes.
    """
    path = Path(path)
    data = read_input_bytes(path)
    if data[:3] == b"ply" or data[:2] == b"\x1f\x8b":
        raise InputError(path, "this is a PLY or gzip (.spz) file, not a .splat file",
                         "rename it to the right extension")
    return decode_splat(data, path, events)


__all__ = ["SPLAT_DTYPE", "decode_splat", "encode_splat", "read_splat", "splat_order",
           "write_splat"]
