"""The INRIA 3DGS ``point_cloud.ply`` layout (``scene/gaussian_model.py`` ``save_ply``).

One ``vertex`` element, binary little-endian, every property ``float`` (float32), in this
order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3(K-1)-1}
    opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

with ``K = (sh_degree + 1)^2``. Values are the raw parameters: opacity logits, log scales,
unnormalised wxyz quaternions; normals are zero. ``f_rest`` is channel-major, as INRIA's
``_features_rest.transpose(1, 2).flatten(1)``: the K-1 red coefficients, then green, then blue.
This is what the INRIA viewer, SuperSplat, gsplat's exporter and most tools read.

:func:`read_ply` reads this layout as written by INRIA, gsplat (with or without normals),
nerfstudio and SuperSplat, and the PlayCanvas/SuperSplat compressed PLY.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..events import Event, EventCallback
from ..util import atomic_path, read_input_bytes
from .quant import smallest_three


def inria_ply_properties(num_rest_coeffs: int) -> list[str]:
    """Property names in file order for ``num_rest_coeffs = K - 1`` higher SH coefficients
    per channel (0, 3, 8 or 15)."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * num_rest_coeffs)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def _splats_to_array(splats: Mapping[str, np.ndarray]) -> np.ndarray:
    means = np.asarray(splats["means"], np.float32).reshape(-1, 3)
    n = len(means)
    sh0 = np.asarray(splats["sh0"], np.float32).reshape(n, 3)
    shN = splats.get("shN")
    shN = (np.zeros((n, 0, 3), np.float32) if shN is None
           else np.asarray(shN, np.float32).reshape(n, -1, 3))
    rest = shN.transpose(0, 2, 1).reshape(n, -1)  # [N, 3, K-1] -> channel-major
    cols = [means, np.zeros((n, 3), np.float32), sh0, rest,
            np.asarray(splats["opacities"], np.float32).reshape(n, 1),
            np.asarray(splats["scales"], np.float32).reshape(n, 3),
            np.asarray(splats["quats"], np.float32).reshape(n, 4)]
    flat = np.concatenate(cols, axis=1)
    names = inria_ply_properties(shN.shape[1])
    assert flat.shape[1] == len(names)
    out = np.empty(n, dtype=[(name, "<f4") for name in names])
    out_view = out.view("<f4").reshape(n, len(names))
    out_view[:] = flat
    return out


def write_ply(path: str | Path, splats: Mapping[str, np.ndarray]) -> Path:
    """Write splats as an INRIA ``point_cloud.ply``, atomically (temp file, then rename).

    Args:
        path: the file to write (folders are created).
        splats: raw parameters as numpy arrays: ``means [N, 3]``, ``scales [N, 3]`` (log),
            ``quats [N, 4]`` (wxyz), ``opacities [N]`` (logit), ``sh0 [N, 1, 3]`` or
            ``[N, 3]``, optional ``shN [N, K-1, 3]``; already in the frame to write (see
            :func:`splatforge.splats.splats_to_source_frame`).

    Returns:
        ``path``.

    Raises:
        KeyError: a required array is missing. ValueError: inconsistent lengths.
    """
    path = Path(path)
    data = encode_ply(splats)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def encode_ply(splats: Mapping[str, np.ndarray]) -> bytes:
    """The bytes of the INRIA ``point_cloud.ply`` :func:`write_ply` writes."""
    arr = _splats_to_array(splats)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(arr)}"]
    header += [f"property float {name}" for name in arr.dtype.names]
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii") + arr.tobytes()


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

#: SH band-0 constant, ``1 / (2 sqrt(pi))``: colour = 0.5 + SH_C0 * f_dc.
SH_C0 = 0.28209479177387814

#: Splats per chunk in the PlayCanvas compressed PLY.
COMPRESSED_CHUNK_SIZE = 256


def canonical_splats(splats: Mapping[str, np.ndarray], path: str | Path | None = None
                     ) -> dict[str, np.ndarray]:
    """Return ``splats`` as float32 arrays of the canonical shapes.

    ``means [N, 3]``, ``scales [N, 3]``, ``quats [N, 4]``, ``opacities [N]``,
    ``sh0 [N, 1, 3]``, ``shN [N, K-1, 3]`` (``[N, 0, 3]`` when absent).

    Raises:
        InputError: a required array is missing or the lengths disagree (``path`` names the
            source, when there is one).
    """
    missing = [k for k in ("means", "scales", "quats", "opacities", "sh0") if k not in splats]
    if missing:
        raise InputError(path, f"splats lack {', '.join(missing)}")
    try:
        means = np.asarray(splats["means"], np.float32).reshape(-1, 3)
        n = len(means)
        out = {
            "means": means,
            "scales": np.asarray(splats["scales"], np.float32).reshape(n, 3),
            "quats": np.asarray(splats["quats"], np.float32).reshape(n, 4),
            "opacities": np.asarray(splats["opacities"], np.float32).reshape(n),
            "sh0": np.asarray(splats["sh0"], np.float32).reshape(n, 1, 3),
        }
        shN = splats.get("shN")
        if shN is None:
            out["shN"] = np.zeros((n, 0, 3), np.float32)
        else:
            shN = np.asarray(shN, np.float32)
            k1 = (shN.shape[1] if shN.ndim == 3 else 0) if n == 0 else -1
            out["shN"] = shN.reshape(n, k1, 3)
    except ValueError as e:
        raise InputError(path, f"inconsistent splat array shapes ({e})") from None
    k = out["shN"].shape[1] + 1
    if math.isqrt(k) ** 2 != k:
        raise InputError(path, f"shN has {k - 1} coefficients per channel; expected "
                         "(d+1)^2-1 for an SH degree d (0, 3, 8 or 15)")
    return out


def sh_degree_of(splats: Mapping[str, np.ndarray]) -> int:
    """SH degree ``d`` of a splats dict: ``(d+1)^2 = 1 + shN.shape[1]``."""
    shN = splats.get("shN")
    if shN is None:
        return 0
    shN = np.asarray(shN)
    n = len(np.asarray(splats["means"]).reshape(-1, 3))
    k1 = (shN.shape[1] if shN.ndim == 3 else 0) if n == 0 else shN.reshape(n, -1, 3).shape[1]
    return math.isqrt(1 + k1) - 1


#: Bounds non-finite values are clamped to, per array (others: the array's finite range).
#: Opacity: logit(1 - 1e-6), the clamp splat-transform and Niantic's spz apply to alpha; log
#: scales: exp(-30) .. exp(10) scene units.
NONFINITE_BOUNDS = {"opacities": (-13.815510557964274, 13.815510557964274),
                    "scales": (-30.0, 10.0)}


def clamp_nonfinite(splats: dict[str, np.ndarray], path: str | Path | None,
                    events: EventCallback | None = None, stage: str = "export"
                    ) -> dict[str, np.ndarray]:
    """Replace NaN and +-Inf values so that every splat stays usable; report how many splats
    held one through ``events`` (one ``warning`` event naming the file).

    NaN becomes 0 (the midpoint for logits and SH, the origin for positions); +-Inf becomes
    the bound of :data:`NONFINITE_BOUNDS` for opacities and log scales (so a splat-transform
    ``opacity = +inf`` row becomes fully opaque, as its own reader decodes it), else the
    largest / smallest finite value of that array (0 when it has none).
    """
    n = len(splats["means"])
    bad_rows = np.zeros(n, bool)
    out = dict(splats)
    for k, v in splats.items():
        fin = np.isfinite(v)
        if fin.all():
            continue
        bad_rows |= ~fin.reshape(n, -1).all(axis=1)
        if k in NONFINITE_BOUNDS:
            lo, hi = NONFINITE_BOUNDS[k]
        elif fin.any():
            lo, hi = float(v[fin].min()), float(v[fin].max())
        else:
            lo = hi = 0.0
        out[k] = np.nan_to_num(v, nan=0.0, posinf=hi, neginf=lo).astype(v.dtype)
    bad = int(bad_rows.sum())
    if bad and events is not None:
        events(Event("warning", stage,
                     f"{path}: clamped NaN or Inf values in {bad} of {n} splats",
                     data={"path": str(path), "clamped": bad, "total": n}))
    return out


def _check_byte_count(path: Path, raw: bytes, ply) -> None:
    """Binary PLYs without list properties: the body must be exactly the declared size."""
    if ply.text:
        return
    size = 0
    for el in ply.elements:
        for prop in el.properties:
            if hasattr(prop, "len_dtype"):  # list property: size not fixed
                return
        size += el.count * np.dtype(el.dtype()).itemsize
    end = raw.find(b"end_header")
    nl = raw.find(b"\n", end)
    body = len(raw) - (nl + 1)
    if body != size:
        raise InputError(path, f"PLY body is {body} bytes but the header declares {size} bytes "
                         f"({', '.join(f'{e.name} x{e.count}' for e in ply.elements)})",
                         "the file is truncated or was written with a wrong header")


def read_ply(path: str | Path, events: EventCallback | None = None) -> dict[str, np.ndarray]:
    """Read a Gaussian splat PLY into a splats dict of raw parameters.

    Reads the INRIA layout (see the module docstring) as written by INRIA's
    ``save_ply``, gsplat's exporter (with or without normals), nerfstudio's ``ns-export
    gaussian-splat``, SuperSplat's uncompressed PLY and :func:`write_ply` -- properties are
    found by name, in any order, float or double -- and the PlayCanvas/SuperSplat compressed
    PLY (``*.compressed.ply``, see :func:`_decode_compressed`).

    Returns:
        ``means [N, 3]``, ``scales [N, 3]`` (log), ``quats [N, 4]`` (wxyz, as stored,
        unnormalised), ``opacities [N]`` (logit), ``sh0 [N, 1, 3]``, ``shN [N, K-1, 3]``
        (``[N, 0, 3]`` at degree 0), float32, in the file's frame (INRIA/COLMAP: x right,
        y down, z forward).

    NaN and Inf values are clamped (see :func:`clamp_nonfinite`); a ``warning`` event
    (through ``events``) says in how many splats.

    Raises:
        InputError: missing or unreadable file, not a PLY, malformed header, body shorter or
            longer than the header declares, no ``vertex`` element, zero vertices, missing
            properties, or an ``f_rest_*`` count that is not ``3 * ((d+1)^2 - 1)``.
    """
    from plyfile import PlyData

    path = Path(path)
    raw = read_input_bytes(path)
    if not raw.startswith(b"ply"):
        raise InputError(path, "not a PLY file (it does not start with 'ply')",
                         "splatforge reads .ply, .splat and .spz splat files")
    if b"end_header" not in raw[:1 << 20]:
        raise InputError(path, "malformed PLY header (no 'end_header' line)")
    try:
        ply = PlyData.read(io.BytesIO(raw))
    except Exception as e:  # noqa: BLE001  (plyfile raises several types for bad input)
        raise InputError(path, f"malformed or truncated PLY ({type(e).__name__}: {e})") from None
    _check_byte_count(path, raw, ply)
    names = [el.name for el in ply.elements]
    if "vertex" not in names:
        raise InputError(path, f"PLY has no 'vertex' element (elements: {', '.join(names)})")
    vertex = ply["vertex"]
    if vertex.count == 0:
        raise InputError(path, "the PLY holds no splats ('element vertex 0')",
                         "export the scene again; an empty splat file cannot be viewed")
    props = [p.name for p in vertex.properties]
    if "chunk" in names and "packed_position" in props:
        splats = _decode_compressed(path, ply)
    else:
        splats = _decode_inria(path, vertex.data, props)
    return clamp_nonfinite(splats, path, events)


def _decode_inria(path: Path, data: np.ndarray, props: list[str]) -> dict[str, np.ndarray]:
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [p for p in required if p not in props]
    if missing:
        raise InputError(path, f"not a Gaussian splat PLY: vertex lacks {', '.join(missing)}",
                         "expected the INRIA 3DGS layout (x y z f_dc_* f_rest_* opacity "
                         "scale_* rot_*) or a PlayCanvas compressed PLY")
    n_rest = sum(1 for p in props if p.startswith("f_rest_"))
    rest_names = [f"f_rest_{i}" for i in range(n_rest)]
    k = n_rest // 3 + 1
    if n_rest % 3 or math.isqrt(k) ** 2 != k or any(p not in props for p in rest_names):
        raise InputError(path, f"vertex has {n_rest} f_rest_* properties; expected "
                         "f_rest_0 .. f_rest_{3((d+1)^2-1)-1} (0, 9, 24 or 45 of them)")

    def cols(names: list[str]) -> np.ndarray:
        if not names:
            return np.zeros((len(data), 0), np.float32)
        return np.stack([np.asarray(data[p], np.float32) for p in names], axis=1)

    n = len(data)
    rest = cols(rest_names).reshape(n, 3, k - 1).transpose(0, 2, 1)  # channel-major -> [N,K-1,3]
    return {
        "means": cols(["x", "y", "z"]),
        "scales": cols(["scale_0", "scale_1", "scale_2"]),
        "quats": cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacities": cols(["opacity"]).reshape(n),
        "sh0": cols(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        "shN": np.ascontiguousarray(rest),
    }


def _unorm(v: np.ndarray, shift: int, bits: int) -> np.ndarray:
    return ((v >> np.uint32(shift)) & np.uint32((1 << bits) - 1)).astype(np.float32) / (
        (1 << bits) - 1)


def _decode_compressed(path: Path, ply) -> dict[str, np.ndarray]:
    """Decode the PlayCanvas/SuperSplat compressed PLY.

    Format (PlayCanvas engine ``gsplat-compressed-data`` and ``splat-transform``'s
    compressed-PLY reader/writer; SuperSplat "compressed PLY" docs): element ``chunk``, one row
    per 256 consecutive splats, with float ``min_x .. max_z`` (position bounds),
    ``min_scale_x .. max_scale_z`` (log-scale bounds) and optionally ``min_r .. max_b``
    (colour bounds; colour = 0.5 + SH_C0 * f_dc); element ``vertex`` with uint32
    ``packed_position`` (x 11 / y 10 / z 11 bits, from the high bits, unorm in the chunk's
    bounds), ``packed_rotation`` (2-bit index of the largest component, then the other three
    in ``rot_0..rot_3`` (wxyz) order as 10-bit unorms of ``q * sqrt(1/2) + 0.5``; the largest is non-negative and
    recovered from unit length), ``packed_scale`` (11/10/11 in the chunk's log-scale bounds)
    and ``packed_color`` (RGBA 8/8/8/8: colour in the chunk's colour bounds, A =
    sigmoid(opacity)); optional element ``sh`` with uint8 ``f_rest_*`` (channel-major as in
    the INRIA layout) decoded as ``(t - 0.5) * 8`` with ``t = (u + 0.5) / 256``, except
    ``t = 0`` for u = 0 and ``t = 1`` for u = 255 (the range -4..4).

    Opacity: an alpha byte of 0 or 255 would give an infinite logit; it is clamped to
    0.5/255 .. 254.5/255 first (PlayCanvas's own reader returns +-inf there).

    Quantisation: positions within (max - min) / 2047 (x, z) or / 1023 (y) / 2 of the true
    value, likewise log scales; colour within its chunk range / 510; opacity within 1/510 in
    sigmoid space (plus the clamp above); SH within 4/256 (+ the 1/256 rounding).
    """
    try:
        chunk = ply["chunk"].data
        vert = ply["vertex"].data
        n = len(vert)
        need_c = [f"{m}_{a}" for m in ("min", "max") for a in "xyz"] + [
            f"{m}_scale_{a}" for m in ("min", "max") for a in "xyz"]
        missing = [p for p in need_c if p not in chunk.dtype.names]
        missing += [p for p in ("packed_position", "packed_rotation", "packed_scale",
                                "packed_color") if p not in vert.dtype.names]
        if missing:
            raise InputError(path, f"compressed PLY lacks {', '.join(missing)}")
        nchunks = (n + COMPRESSED_CHUNK_SIZE - 1) // COMPRESSED_CHUNK_SIZE
        if len(chunk) < nchunks:
            raise InputError(path, f"compressed PLY has {len(chunk)} chunks for {n} splats; "
                             f"expected {nchunks} (one per {COMPRESSED_CHUNK_SIZE})")
        ci = np.arange(n) // COMPRESSED_CHUNK_SIZE

        def c(name: str) -> np.ndarray:
            return np.asarray(chunk[name], np.float32)[ci]

        def lerp(t: np.ndarray, lo: str, hi: str) -> np.ndarray:
            a, b = c(lo), c(hi)
            return a + t * (b - a)

        pp = np.asarray(vert["packed_position"], np.uint32)
        means = np.stack([lerp(_unorm(pp, 21, 11), "min_x", "max_x"),
                          lerp(_unorm(pp, 11, 10), "min_y", "max_y"),
                          lerp(_unorm(pp, 0, 11), "min_z", "max_z")], axis=1)
        ps = np.asarray(vert["packed_scale"], np.uint32)
        scales = np.stack([lerp(_unorm(ps, 21, 11), "min_scale_x", "max_scale_x"),
                           lerp(_unorm(ps, 11, 10), "min_scale_y", "max_scale_y"),
                           lerp(_unorm(ps, 0, 11), "min_scale_z", "max_scale_z")], axis=1)
        pc = np.asarray(vert["packed_color"], np.uint32)
        rgb = [_unorm(pc, 24, 8), _unorm(pc, 16, 8), _unorm(pc, 8, 8)]
        if all(f"{m}_{ch}" in chunk.dtype.names for m in ("min", "max") for ch in "rgb"):
            rgb = [lerp(t, f"min_{ch}", f"max_{ch}") for t, ch in zip(rgb, "rgb")]
        sh0 = ((np.stack(rgb, axis=1) - 0.5) / SH_C0).reshape(n, 1, 3)
        alpha = np.clip(_unorm(pc, 0, 8), 0.5 / 255, 1 - 0.5 / 255)
        opacities = -np.log(1.0 / alpha - 1.0)

        pr = np.asarray(vert["packed_rotation"], np.uint32)
        norm = np.float32(np.sqrt(2.0))
        small = [(_unorm(pr, s, 10) - 0.5) * norm for s in (20, 10, 0)]
        largest = (pr >> np.uint32(30)).astype(np.int64)
        m = np.sqrt(np.clip(1.0 - sum(t * t for t in small), 0.0, None))
        q = np.empty((n, 4), np.float32)
        rows = np.arange(n)
        # The three small components fill the slots other than ``largest``, in order.
        slots = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
        for j in range(3):
            q[rows, slots[:, j]] = small[j]
        q[rows, largest] = m
        quats = q  # slots are rot_0..rot_3, i.e. wxyz

        shN = np.zeros((n, 0, 3), np.float32)
        if "sh" in ply:
            sh = ply["sh"].data
            names = [f"f_rest_{i}" for i in range(len(sh.dtype.names))]
            k = len(names) // 3 + 1
            if (len(sh) != n or len(names) % 3 or math.isqrt(k) ** 2 != k
                    or list(sh.dtype.names) != names):
                raise InputError(path, f"compressed PLY 'sh' element has {len(sh)} rows and "
                                 f"{len(names)} properties; expected {n} rows of f_rest_0 .. "
                                 "f_rest_{3((d+1)^2-1)-1}")
            u = np.stack([np.asarray(sh[p], np.float32) for p in names], axis=1)
            t = np.where(u == 0, 0.0, np.where(u == 255, 1.0, (u + 0.5) / 256.0))
            shN = ((t - 0.5) * 8.0).astype(np.float32).reshape(n, 3, k - 1).transpose(0, 2, 1)
    except InputError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(path, f"malformed compressed PLY ({e})") from None
    return {"means": means.astype(np.float32), "scales": scales.astype(np.float32),
            "quats": quats.astype(np.float32), "opacities": opacities.astype(np.float32),
            "sh0": sh0.astype(np.float32), "shN": np.ascontiguousarray(shN, np.float32)}


# ---------------------------------------------------------------------------------------------
# Writing the PlayCanvas / SuperSplat compressed PLY
# ---------------------------------------------------------------------------------------------

#: Log-scale range the compressed PLY stores (wider values are clamped first).
COMPRESSED_SCALE_CLAMP = (-20.0, 20.0)


def _unorm_code(t: np.ndarray, bits: int) -> np.ndarray:
    m = (1 << bits) - 1
    return np.clip(np.rint(np.asarray(t, np.float64) * m), 0, m).astype(np.uint32)


def _chunk_lerp_code(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    span = hi - lo
    t = np.where(span > 0, (v - lo) / np.where(span > 0, span, 1.0), 0.0)
    return _unorm_code(t, bits)


def encode_compressed_ply(splats: Mapping[str, np.ndarray]) -> bytes:
    """Encode splats as the bytes of a PlayCanvas/SuperSplat compressed PLY.

    The layout is the one :func:`_decode_compressed` documents (PlayCanvas engine
    ``gsplat-compressed-data``, splat-transform's writer): splats sorted in Morton order
    (:func:`~splatforge.export.quant.morton_order`) so that each 256-splat chunk is compact,
    then per chunk the float bounds of positions, log scales (clamped to -20..20) and colours
    ``0.5 + SH_C0 * f_dc``, and per splat the packed uint32 position (11/10/11 bits), rotation
    (2-bit largest index + three 10-bit components of the unit wxyz quaternion made
    non-negative at the largest), log scale (11/10/11) and colour (RGBA 8888, A =
    sigmoid(opacity)); SH above degree 0 as uint8 ``f_rest_*`` in the range -4..4.

    Raises:
        InputError: missing arrays or inconsistent lengths.
    """
    from plyfile import PlyData, PlyElement

    from .quant import morton_order

    sp = canonical_splats(splats)
    order = morton_order(sp["means"])
    sp = {k: v[order] for k, v in sp.items()}
    n = len(sp["means"])
    nch = (n + COMPRESSED_CHUNK_SIZE - 1) // COMPRESSED_CHUNK_SIZE
    ci = np.arange(n) // COMPRESSED_CHUNK_SIZE
    means = sp["means"].astype(np.float64)
    scales = np.clip(sp["scales"].astype(np.float64), *COMPRESSED_SCALE_CLAMP)
    rgb = 0.5 + SH_C0 * sp["sh0"][:, 0].astype(np.float64)

    starts = np.arange(0, n, COMPRESSED_CHUNK_SIZE)

    def bounds(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.minimum.reduceat(v, starts, axis=0), np.maximum.reduceat(v, starts, axis=0)

    (plo, phi), (slo, shi), (clo, chi) = bounds(means), bounds(scales), bounds(rgb)
    chunk = np.empty(nch, [(nm, "<f4") for nm in
                           [f"{m}_{a}" for m in ("min", "max") for a in "xyz"]
                           + [f"{m}_scale_{a}" for m in ("min", "max") for a in "xyz"]
                           + [f"{m}_{c}" for m in ("min", "max") for c in "rgb"]])
    for j, a in enumerate("xyz"):
        chunk[f"min_{a}"], chunk[f"max_{a}"] = plo[:, j], phi[:, j]
        chunk[f"min_scale_{a}"], chunk[f"max_scale_{a}"] = slo[:, j], shi[:, j]
    for j, c in enumerate("rgb"):
        chunk[f"min_{c}"], chunk[f"max_{c}"] = clo[:, j], chi[:, j]
    # positions / scales / colours relative to the float32 bounds actually stored
    f = {k: np.asarray(chunk[k], np.float64)[ci] for k in chunk.dtype.names}

    def pack3(v: np.ndarray, lo: str, hi: str) -> np.ndarray:
        bits = (11, 10, 11)
        codes = [_chunk_lerp_code(v[:, j], f[lo.format(a)], f[hi.format(a)], bits[j])
                 for j, a in enumerate("xyz")]
        return (codes[0] << np.uint32(21)) | (codes[1] << np.uint32(11)) | codes[2]

    vert = np.empty(n, [("packed_position", "<u4"), ("packed_rotation", "<u4"),
                        ("packed_scale", "<u4"), ("packed_color", "<u4")])
    vert["packed_position"] = pack3(means, "min_{}", "max_{}")
    vert["packed_scale"] = pack3(scales, "min_scale_{}", "max_scale_{}")
    col = [_chunk_lerp_code(rgb[:, j], f[f"min_{c}"], f[f"max_{c}"], 8)
           for j, c in enumerate("rgb")]
    alpha = _unorm_code(1.0 / (1.0 + np.exp(-sp["opacities"].astype(np.float64))), 8)
    vert["packed_color"] = ((col[0] << np.uint32(24)) | (col[1] << np.uint32(16))
                            | (col[2] << np.uint32(8)) | alpha)
    others, largest, _ = smallest_three(sp["quats"])
    rot = largest.astype(np.uint32) << np.uint32(30)
    for j, shift in enumerate((20, 10, 0)):
        t = others[:, j] * np.sqrt(0.5) + 0.5
        rot |= _unorm_code(t, 10) << np.uint32(shift)
    vert["packed_rotation"] = rot
    elements = [PlyElement.describe(chunk, "chunk"), PlyElement.describe(vert, "vertex")]
    k1 = sp["shN"].shape[1]
    if k1:
        rest = sp["shN"].transpose(0, 2, 1).reshape(n, -1).astype(np.float64)
        u = np.clip(np.floor((rest / 8.0 + 0.5) * 256.0), 0, 255).astype(np.uint8)
        sh = np.empty(n, [(f"f_rest_{i}", "u1") for i in range(3 * k1)])
        for i in range(3 * k1):
            sh[f"f_rest_{i}"] = u[:, i]
        elements.append(PlyElement.describe(sh, "sh"))
    buf = io.BytesIO()
    PlyData(elements, byte_order="<", comments=["generated by splatforge"]).write(buf)
    return buf.getvalue()


def write_compressed_ply(path: str | Path, splats: Mapping[str, np.ndarray]) -> Path:
    """Write splats as a PlayCanvas/SuperSplat compressed PLY (see
    :func:`encode_compressed_ply`), atomically. Conventionally named ``*.compressed.ply``.

    Raises:
        InputError: missing arrays or inconsistent lengths.
    """
    path = Path(path)
    data = encode_compressed_ply(splats)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
