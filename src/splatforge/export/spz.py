"""Niantic's ``.spz`` format, versions 3 and 4 (github.com/nianticlabs/spz, ``load-spz.cc``).

Version 3 layout (from nianticlabs/spz ``load-spz.cc`` and its README; cited, not copied): the
whole file is one gzip stream holding a 16-byte little-endian header ::

    uint32 magic 0x5053474e ("NGSP")   uint32 version (3)   uint32 numPoints
    uint8 shDegree (0..3)   uint8 fractionalBits   uint8 flags (0x1: antialiased)   uint8 0

followed by the attributes, each as one block over all points, in this order:

==============  =========================  ================================================
block           bytes per point            value
==============  =========================  ================================================
positions       3 x 3 (24-bit signed int)  ``round(p * 2^fractionalBits)``, little-endian
alphas          1                          ``round(sigmoid(opacity) * 255)``
colours         3                          ``round(f_dc * 0.15 * 255 + 0.5 * 255)``
scales          3                          ``round((log_scale + 10) * 16)``
rotations       4 (v3; v2 had 3)           "smallest three": bits 30-31 index of the
                                           largest |component| of the unit quaternion in
                                           **xyzw** order (made non-negative), then the
                                           other three in index order, 10 bits each: sign
                                           bit + 9-bit ``|c| / sqrt(1/2) * 511``
SH rest         (K-1) x 3                  per point, coefficient-major with RGB together,
                                           ``round(c * 128) + 128`` rounded to a bucket of
                                           8 (degree-1 coefficients, 5 bits) or 16 (higher
                                           degrees, 4 bits), clamped to 0..255
==============  =========================  ================================================

Every uint8 is clamped to 0..255. The reader also reads versions 1 (float16 positions) and
2 (3-byte xyz rotations, w >= 0 recovered).

Version 4 (the default of splat-transform 2.x and of Niantic's library since 2026; layout as
three.js ``SPZExporter`` and Niantic's ``load-spz.cc`` write it) is NOT one compressed stream:
the file starts with an uncompressed 32-byte little-endian header ::

    uint32 magic "NGSP"  uint32 version (4)  uint32 numPoints
    uint8 shDegree  uint8 fractionalBits  uint8 flags  uint8 numStreams
    uint32 tocOffset (32)  12 bytes reserved (0)

then, at ``tocOffset``, ``numStreams`` table-of-contents entries of two uint64 (compressed
size, uncompressed size), then the streams back to back, each one zstd frame holding one of
the attribute blocks above in the same order and encoding as version 3 (positions, alphas,
colours, scales, 4-byte smallest-three rotations, and SH when degree > 0). Flag 0x2 marks
vendor extensions after the streams; the reader ignores them.

Decompression is bounded: the header's point count fixes every block's size, so the reader
never inflates more than that (plus one byte to detect an overlong stream): a gzip or zstd
"bomb" fails at once with an :class:`~splatforge.errors.InputError` instead of taking memory.

Coordinate frame: spz files hold splats in **RUB** (x right, y up, z back: the OpenGL /
three.js convention), as the spz README specifies and as the library's ``CoordinateSystem``
conversions (and Spark, GaussianSplats3D and PlayCanvas ``splat-transform`` through the
official spz code) assume. splatforge's splats are in the COLMAP/INRIA frame, **RDF** (x
right, y down, z forward), so the writer flips y and z (positions ``(x, -y, -z)``;
quaternion wxyz ``(w, x, -y, -z)``, i.e. conjugation by the 180 degree turn about x; each
SH coefficient times the parity of its basis function under y, z -> -y, -z) and the reader
flips back: a write/read round trip is the identity up to quantisation.

Quantisation (the round-trip tolerances the tests assert): positions within
``2^-(fractionalBits+1)`` (1/8192 scene units at 12 bits), opacity within 0.5/255 in sigmoid
space, colour ``f_dc`` within ``0.5 / (0.15 * 255)`` (~0.0131) inside -3.33..3.33, log scales
within 1/32 inside -10..5.94, quaternions within ~1/511 per component of ``q/|q|`` (up to
sign), degree-1 SH within 4/128 + 1/256, higher SH within 8/128 + 1/256, inside -1..127/128.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..events import EventCallback
from ..util import atomic_write_bytes, read_input_bytes
from .ply import canonical_splats, clamp_nonfinite, sh_degree_of

SPZ_MAGIC = 0x5053474E
#: The version :func:`write_spz` writes by default.
SPZ_VERSION = 4
#: Versions the reader reads.
SPZ_READ_VERSIONS = (1, 2, 3, 4)
V4_HEADER = struct.Struct("<IIIBBBBI12x")
V4_TOC_ENTRY = struct.Struct("<QQ")
SPZ_HEADER = np.dtype([("magic", "<u4"), ("version", "<u4"), ("num_points", "<u4"),
                       ("sh_degree", "u1"), ("fractional_bits", "u1"), ("flags", "u1"),
                       ("reserved", "u1")])
FLAG_ANTIALIASED = 0x1
#: f_dc -> uint8 scale factor of spz (``colorScale``).
COLOR_SCALE = 0.15
SQRT1_2 = np.float64(np.sqrt(0.5))

#: Sign of each of the 15 higher SH basis functions under (x, y, z) -> (x, -y, -z), in the
#: usual real-SH order (degree 1: y, z, x; degree 2: xy, yz, 3z^2-1, xz, x^2-y^2; degree 3:
#: y(3x^2-y^2), xyz, y(5z^2-1), z(5z^2-3), x(5z^2-1), z(x^2-y^2), x(x^2-3y^2)).
SH_FLIP_RDF_RUB = np.array([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], np.float32)
_POS_FLIP = np.array([1, -1, -1], np.float32)
_QUAT_FLIP = np.array([1, 1, -1, -1], np.float32)  # wxyz


def _flip_frame(splats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """RDF <-> RUB (the map is its own inverse)."""
    out = dict(splats)
    out["means"] = splats["means"] * _POS_FLIP
    out["quats"] = splats["quats"] * _QUAT_FLIP
    k1 = splats["shN"].shape[1]
    out["shN"] = splats["shN"] * SH_FLIP_RDF_RUB[:k1, None]
    return out


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _pack_quats_v3(q_wxyz: np.ndarray) -> np.ndarray:
    """``[N, 4]`` wxyz -> ``[N]`` uint32 smallest-three codes (xyzw component order)."""
    q = q_wxyz[:, [1, 2, 3, 0]].astype(np.float64)
    nrm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(nrm > 0, q / np.where(nrm > 0, nrm, 1), np.array([0, 0, 0, 1.0]))
    n = len(q)
    largest = np.abs(q).argmax(axis=1)
    q = q * np.where(q[np.arange(n), largest] < 0, -1.0, 1.0)[:, None]
    comp = largest.astype(np.uint32)
    for i in range(4):
        mag = np.minimum(np.floor(511.0 * np.abs(q[:, i]) / SQRT1_2 + 0.5), 511).astype(np.uint32)
        field = ((q[:, i] < 0).astype(np.uint32) << np.uint32(9)) | mag
        comp = np.where(largest != i, (comp << np.uint32(10)) | field, comp)
    return comp.astype("<u4")


def _unpack_quats_v3(comp: np.ndarray) -> np.ndarray:
    """``[N]`` uint32 smallest-three codes -> ``[N, 4]`` wxyz unit quaternions."""
    comp = comp.astype(np.uint32)
    n = len(comp)
    largest = (comp >> np.uint32(30)).astype(np.int64)
    q = np.zeros((n, 4), np.float64)
    rest = comp.copy()
    for i in (3, 2, 1, 0):  # the last-packed component sits in the low bits
        here = largest != i
        mag = (rest & np.uint32(511)).astype(np.float64)
        neg = ((rest >> np.uint32(9)) & np.uint32(1)).astype(bool)
        val = SQRT1_2 * mag / 511.0
        q[:, i] = np.where(here, np.where(neg, -val, val), 0.0)
        rest = np.where(here, rest >> np.uint32(10), rest)
    q[np.arange(n), largest] = np.sqrt(np.clip(1.0 - (q * q).sum(1), 0.0, None))
    return q[:, [3, 0, 1, 2]].astype(np.float32)


def _quantize_sh(x: np.ndarray, bucket: int) -> np.ndarray:
    q = np.rint(x.astype(np.float64) * 128.0) + 128.0
    q = np.floor((q + bucket // 2) / bucket) * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def _blocks(splats: Mapping[str, np.ndarray], fractional_bits: int, sh1_bits: int,
            sh_rest_bits: int, path: str | Path | None) -> tuple[list[bytes], int, int]:
    """The attribute blocks (positions, alphas, colours, scales, rotations, SH) of splats
    (RDF, raw parameters) in spz encoding, the SH degree, and the fractional bits used."""
    sp = _flip_frame(canonical_splats(splats, path))
    n = len(sp["means"])
    deg = sh_degree_of(sp)
    if deg > 3:
        raise InputError(path, f"spz stores SH up to degree 3 here; these splats have {deg}")
    means = sp["means"].astype(np.float64)
    top = float(np.abs(means).max()) if n else 0.0
    fb = int(fractional_bits)
    while fb > 0 and np.rint(top * (1 << fb)) >= (1 << 23):
        fb -= 1
    if np.rint(top * (1 << fb)) >= (1 << 23):
        raise InputError(path, f"a coordinate of {top:g} does not fit spz's 24-bit positions")
    fixed = np.rint(means * (1 << fb)).astype(np.int64).astype("<i4")
    pos = fixed.view(np.uint8).reshape(n, 3, 4)[:, :, :3]  # low 3 bytes, two's complement
    alphas = _u8(_sigmoid(sp["opacities"]) * 255.0)
    colors = _u8(sp["sh0"].reshape(n, 3).astype(np.float64) * (COLOR_SCALE * 255.0) + 127.5)
    scales = _u8((sp["scales"].astype(np.float64) + 10.0) * 16.0)
    rots = _pack_quats_v3(sp["quats"])
    shn = sp["shN"]
    sh = np.empty(shn.shape, np.uint8)
    if shn.shape[1]:
        sh[:, :3] = _quantize_sh(shn[:, :3], 1 << (8 - sh1_bits))
        sh[:, 3:] = _quantize_sh(shn[:, 3:], 1 << (8 - sh_rest_bits))
    blocks = [np.ascontiguousarray(pos).tobytes(), alphas.tobytes(), colors.tobytes(),
              scales.tobytes(), rots.tobytes()]
    if deg:
        blocks.append(sh.tobytes())
    return blocks, deg, fb


def encode_spz(splats: Mapping[str, np.ndarray], *, version: int = SPZ_VERSION,
               fractional_bits: int = 12, antialiased: bool = False, sh1_bits: int = 5,
               sh_rest_bits: int = 4, path: str | Path | None = None) -> bytes:
    """Encode splats (RDF frame, raw parameters) as the bytes of an ``.spz`` file.

    Args:
        version: 4 (zstd streams, the default) or 3 (one gzip stream).

    ``fractional_bits`` is lowered automatically (down to 0) when a coordinate would not fit
    the 24-bit fixed point (|p| >= 2^(23 - fractional_bits)); the header records the value
    used. Splats with SH degree above 3 are refused.

    Raises:
        InputError: missing arrays, inconsistent lengths, SH degree > 3, coordinates beyond
            +-2^23 even at 0 fractional bits, or a version other than 3/4 (named after
            ``path`` when given).
    """
    if version not in (3, 4):
        raise InputError(path, f"spz version {version} cannot be written (3 or 4)")
    blocks, deg, fb = _blocks(splats, fractional_bits, sh1_bits, sh_rest_bits, path)
    n = len(blocks[1])
    flags = FLAG_ANTIALIASED if antialiased else 0
    if version == 3:
        header = np.zeros(1, SPZ_HEADER)
        header["magic"], header["version"], header["num_points"] = SPZ_MAGIC, 3, n
        header["sh_degree"], header["fractional_bits"] = deg, fb
        header["flags"] = flags
        return gzip.compress(header.tobytes() + b"".join(blocks), compresslevel=6, mtime=0)
    import zstandard

    cctx = zstandard.ZstdCompressor(level=12)
    comp = [cctx.compress(b) for b in blocks]
    toc = b"".join(V4_TOC_ENTRY.pack(len(c), len(b)) for c, b in zip(comp, blocks))
    head = V4_HEADER.pack(SPZ_MAGIC, 4, n, deg, fb, flags, len(blocks), V4_HEADER.size)
    return head + toc + b"".join(comp)


def write_spz(path: str | Path, splats: Mapping[str, np.ndarray], *,
              version: int = SPZ_VERSION, fractional_bits: int = 12,
              antialiased: bool = False) -> Path:
    """Write splats (RDF frame, raw parameters; see :func:`splatforge.export.ply.write_ply`)
    as an ``.spz`` file of ``version`` 4 (default) or 3 (RUB on disk, see the module
    docstring), atomically.

    Returns:
        ``path``.

    Raises:
        InputError: see :func:`encode_spz`.
    """
    path = Path(path)
    atomic_write_bytes(path, encode_spz(splats, version=version,
                                        fractional_bits=fractional_bits,
                                        antialiased=antialiased, path=path))
    return path


def _block_sizes(version: int, n: int, deg: int) -> list[int]:
    """Bytes of each attribute block for ``n`` points (the SH block only when deg > 0)."""
    k1 = (deg + 1) ** 2 - 1
    sizes = [n * (6 if version == 1 else 9), n, 3 * n, 3 * n, n * (4 if version >= 3 else 3)]
    if k1:
        sizes.append(n * 3 * k1)
    return sizes


def _check_header_fields(path: Path, h: dict[str, int]) -> None:
    if h["version"] not in SPZ_READ_VERSIONS:
        raise InputError(path, f"unsupported spz version {h['version']} (reads 1, 2, 3, 4)")
    if h["sh_degree"] > 3:
        raise InputError(path, f"unsupported spz SH degree {h['sh_degree']} (0..3)")
    if h["num_points"] == 0:
        raise InputError(path, "the .spz file holds no splats (its header says 0 points)",
                         "export the scene again; an empty splat file cannot be viewed")


def _gunzip_bounded(path: Path, data: bytes) -> bytes:
    """Inflate the gzip stream of a v1-v3 file, never past the size its header implies."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        head = d.decompress(data, SPZ_HEADER.itemsize)
        if len(head) < SPZ_HEADER.itemsize:
            head += d.decompress(d.unconsumed_tail, SPZ_HEADER.itemsize - len(head))
    except zlib.error as e:
        raise InputError(path, f"corrupt or truncated gzip stream ({e})") from None
    h = _parse_header(path, head)
    need = SPZ_HEADER.itemsize + sum(_block_sizes(h["version"], h["num_points"],
                                                  h["sh_degree"]))
    try:
        body = d.decompress(d.unconsumed_tail, need - len(head) + 1)
    except zlib.error as e:
        raise InputError(path, f"corrupt or truncated gzip stream ({e})") from None
    raw = head + body
    if len(raw) < need and not d.eof:
        raise InputError(path, f"corrupt or truncated gzip stream (it ends after {len(raw)} of "
                         f"the {need} bytes the header declares)")
    if len(raw) > need:
        raise InputError(path, f"spz v{h['version']} with {h['num_points']} points at SH "
                         f"degree {h['sh_degree']} should hold {need} bytes after "
                         "decompression, but the stream inflates to more",
                         "the file is corrupt (or a decompression bomb)")
    if not d.eof and len(raw) == need:
        # the stream must end here (a longer stream is refused above); a missing trailer
        # means a truncated file
        try:
            rest = d.decompress(d.unconsumed_tail, 1) + d.flush()
        except zlib.error as e:
            raise InputError(path, f"corrupt or truncated gzip stream ({e})") from None
        if rest:
            raise InputError(path, "the gzip stream holds more data than the header declares",
                             "the file is corrupt (or a decompression bomb)")
        if not d.eof:
            raise InputError(path, "corrupt or truncated gzip stream (no end of stream)")
    return raw


def _parse_header(path: Path, raw: bytes) -> dict[str, int]:
    if len(raw) < SPZ_HEADER.itemsize:
        raise InputError(path, f"spz data is {len(raw)} bytes, shorter than its 16-byte header")
    h = np.frombuffer(raw[:SPZ_HEADER.itemsize], SPZ_HEADER)[0]
    if int(h["magic"]) != SPZ_MAGIC:
        raise InputError(path, f"bad spz magic 0x{int(h['magic']):08x} (expected 0x5053474e "
                         "'NGSP')")
    out = {k: int(h[k]) for k in ("version", "num_points", "sh_degree", "fractional_bits",
                                  "flags")}
    _check_header_fields(path, out)
    if out["version"] == 4:
        raise InputError(path, "an spz version-4 header inside a gzip stream",
                         "version-4 files are not gzip-compressed")
    return out


def _read_v4(path: Path, data: bytes) -> tuple[dict[str, int], list[bytes]]:
    """Header and decompressed blocks of a version-4 file (bounded, see the module doc)."""
    if len(data) < V4_HEADER.size:
        raise InputError(path, f"spz v4 file is {len(data)} bytes, shorter than its 32-byte "
                         "header")
    magic, ver, n, deg, fb, flags, nstreams, toc_off = V4_HEADER.unpack_from(data)
    h = {"version": ver, "num_points": n, "sh_degree": deg, "fractional_bits": fb,
         "flags": flags}
    _check_header_fields(path, h)
    sizes = _block_sizes(4, n, deg)
    if nstreams != len(sizes):
        raise InputError(path, f"spz v4 header lists {nstreams} streams; SH degree {deg} "
                         f"needs {len(sizes)}")
    end_toc = toc_off + nstreams * V4_TOC_ENTRY.size
    if toc_off < V4_HEADER.size or end_toc > len(data):
        raise InputError(path, f"spz v4 table of contents at byte {toc_off} lies outside the "
                         f"{len(data)}-byte file")
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    off = end_toc
    blocks = []
    for k, want in enumerate(sizes):
        csize, usize = V4_TOC_ENTRY.unpack_from(data, toc_off + k * V4_TOC_ENTRY.size)
        if usize != want:
            raise InputError(path, f"spz v4 stream {k} declares {usize} bytes; {n} points at "
                             f"SH degree {deg} need {want}", "the file is corrupt")
        if off + csize > len(data):
            raise InputError(path, f"spz v4 stream {k} runs past the end of the file "
                             "(truncated)")
        try:
            out = dctx.decompress(data[off:off + csize], max_output_size=want + 1)
        except zstandard.ZstdError as e:
            raise InputError(path, f"corrupt zstd stream {k} ({e})") from None
        if len(out) != want:
            raise InputError(path, f"spz v4 stream {k} inflates to {len(out)} bytes, not the "
                             f"{want} its table declares", "the file is corrupt")
        blocks.append(out)
        off += csize
    return h, blocks


def _load(path: Path) -> tuple[dict[str, int], list[bytes]]:
    data = read_input_bytes(path)
    if data[:4] == b"NGSP":
        return _read_v4(path, data)
    if data[:2] != b"\x1f\x8b":
        raise InputError(path, "not an .spz file (neither gzip-compressed nor an 'NGSP' "
                         "version-4 header)", "spz files are gzip streams (v1-v3) or start "
                         "with 'NGSP' (v4)")
    raw = _gunzip_bounded(path, data)
    h = _parse_header(path, raw)
    sizes = _block_sizes(h["version"], h["num_points"], h["sh_degree"])
    need = 16 + sum(sizes)
    if len(raw) != need:
        raise InputError(path, f"spz v{h['version']} with {h['num_points']} points at SH "
                         f"degree {h['sh_degree']} should hold {need} bytes after "
                         f"decompression, not {len(raw)}", "the file is truncated or corrupt")
    blocks, off = [], 16
    for s in sizes:
        blocks.append(raw[off:off + s])
        off += s
    return h, blocks


def read_spz_header(path: str | Path) -> dict[str, int]:
    """The header fields of an ``.spz`` file (``version``, ``num_points``, ``sh_degree``,
    ``fractional_bits``, ``flags``); see :func:`read_spz` for the errors raised."""
    return _load(Path(path))[0]


def read_spz(path: str | Path, events: EventCallback | None = None) -> dict[str, np.ndarray]:
    """Read an ``.spz`` file (versions 1-4) into a splats dict in splatforge's RDF frame.

    Returns:
        ``means [N, 3]``, ``scales [N, 3]`` (log), ``quats [N, 4]`` (wxyz, unit),
        ``opacities [N]`` (logit; alpha clamped to 0.5..254.5 / 255 so that it stays
        finite), ``sh0 [N, 1, 3]``, ``shN [N, K-1, 3]``; float32, converted from the file's
        RUB frame (see the module docstring). Non-finite values (v1 float16 positions) are
        clamped with a ``warning`` event.

    Raises:
        InputError: missing file, not gzip / v4, corrupt gzip or zstd, bad magic, unsupported
            version or SH degree, zero points, or a decompressed size that differs from the
            header's point count (checked without inflating more than that).
    """
    path = Path(path)
    h, raw_blocks = _load(path)
    n, deg, fb, ver = h["num_points"], h["sh_degree"], h["fractional_bits"], h["version"]
    k1 = (deg + 1) ** 2 - 1
    sizes = _block_sizes(ver, n, deg)
    blocks = [np.frombuffer(b, np.uint8).reshape(n, s // n) for b, s in zip(raw_blocks, sizes)]
    if not k1:
        blocks.append(np.zeros((n, 0), np.uint8))
    pos, alpha, col, scl, rot, sh = blocks
    if ver == 1:
        means = pos.copy().view("<f2").astype(np.float32)
    else:
        b = pos.reshape(n, 3, 3).astype(np.int32)
        fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        means = (fixed.astype(np.float64) / (1 << fb)).astype(np.float32)
    a = np.clip(alpha[:, 0].astype(np.float64) / 255.0, 0.5 / 255, 1 - 0.5 / 255)
    if ver >= 3:
        quats = _unpack_quats_v3(rot.copy().view("<u4")[:, 0])
    else:
        xyz = rot.astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.clip(1.0 - (xyz * xyz).sum(1), 0.0, None))
        quats = np.concatenate([w[:, None], xyz], axis=1).astype(np.float32)
    splats = {
        "means": means,
        "scales": (scl.astype(np.float32) / 16.0 - 10.0),
        "quats": quats,
        "opacities": (-np.log(1.0 / a - 1.0)).astype(np.float32),
        "sh0": ((col.astype(np.float32) / 255.0 - 0.5) / COLOR_SCALE).reshape(n, 1, 3),
        "shN": ((sh.astype(np.float32) - 128.0) / 128.0).reshape(n, k1, 3),
    }
    return clamp_nonfinite(_flip_frame(splats), path, events)


__all__ = ["COLOR_SCALE", "SPZ_MAGIC", "SPZ_READ_VERSIONS", "SPZ_VERSION", "encode_spz",
           "read_spz", "read_spz_header", "write_spz"]
