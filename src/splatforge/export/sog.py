"""PlayCanvas SOG ("Spatially Ordered Gaussians"), meta version 2.

Source: the SOG format specification (developer.playcanvas.com, user-manual/gaussian-splatting/
formats/sog, version 2) and PlayCanvas ``splat-transform``'s reader (``read-sog.ts``), read
to learn the layout; this is our own implementation. A SOG scene is a ``meta.json`` plus
lossless WebP images, either as a folder (``meta.json`` beside the images) or bundled as one
ZIP file ``*.sog`` holding the same files at its root.

Every per-splat image is ``W x H`` (``W = ceil(sqrt(N))``), splat ``i`` at pixel
``(i % W, i // W)``; splats are stored in Morton order
(:func:`~splatforge.export.quant.morton_order`). The frame is the 3DGS PLY frame (no axis
conversion). Per image::

    means_l / means_u  RGB   low / high byte of a 16-bit unorm per axis of
                             l = sign(x) ln(|x| + 1), lerped between meta means.mins/maxs
    quats              RGBA  the three components other than the largest |component| of the
                             unit wxyz quaternion (made non-negative there), each
                             round((c sqrt(2) + 1) / 2 * 255); A = 252 + index of the largest
    scales             RGB   indices into meta scales.codebook (256 log-scale values)
    sh0                RGBA  RGB: indices into meta sh0.codebook (256 f_dc values);
                             A = round(sigmoid(opacity) * 255)
    shN_labels         RG    16-bit index (R low byte) into the SH palette
    shN_centroids      RGB   the palette: width 64 * (K-1), palette entry c at row c // 64,
                             columns (c % 64) * (K-1) + j for coefficient j, RGB = indices into
                             meta shN.codebook for the three colour channels

Codebooks are 1D k-means (:func:`~splatforge.export.quant.kmeans_1d`); the SH palette is a
vector k-means (:func:`~splatforge.export.quant.kmeans`) of each splat's ``(K-1) x 3``
coefficients into ``shN.count`` entries (``sh_palette``).

Quantisation (the round-trip tolerances the tests assert): positions within half a 16-bit
step in log space (relative ~ (max - min) / 131070 of ``ln(|x| + 1)``); log scales and
``f_dc`` within half the gap between neighbouring codebook entries; ``sigmoid(opacity)``
within 0.5/255; quaternion components within ~sqrt(1/2)/255; SH: the palette error of the
k-means plus the codebook error (exact palette when ``sh_palette >= N``).
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..events import EventCallback
from ..util import atomic_path, read_input_bytes
from .ply import canonical_splats, clamp_nonfinite, sh_degree_of
from .quant import kmeans, kmeans_1d, morton_order, smallest_three

SOG_VERSION = 2
META_NAME = "meta.json"
#: Largest ``meta.json`` / image member read from a bundle or folder (bytes).
MAX_MEMBER_BYTES = 1 << 30
SQRT2 = math.sqrt(2.0)


def default_sh_palette(n: int) -> int:
    """SH palette entries for ``n`` splats: the power of two nearest ``n / 16``, within
    64 .. 65536 (the 16-bit label limit)."""
    k = 1 << max(0, round(math.log2(max(n, 1) / 16.0)))
    return int(min(65536, max(64, k)))


def _image_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    mode = {3: "RGB", 4: "RGBA"}[arr.shape[2]]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, np.uint8), mode).save(
        buf, "WEBP", lossless=True, quality=100, method=4, exact=True)
    return buf.getvalue()


def _grid(n: int) -> tuple[int, int]:
    w = max(1, math.ceil(math.sqrt(n)))
    return w, max(1, math.ceil(n / w))


def encode_sog(splats: Mapping[str, np.ndarray], *, sh_palette: int | None = None,
               iterations: int = 10, seed: int = 0) -> dict[str, bytes]:
    """Encode splats (PLY frame, raw parameters) as the files of a SOG scene.

    Args:
        sh_palette: SH palette entries (default :func:`default_sh_palette`; at most 65536).
        iterations: k-means iterations of the SH palette.

    Returns:
        file name -> bytes, ``meta.json`` included.

    Raises:
        InputError: no splats, missing arrays or inconsistent lengths.
    """
    sp = canonical_splats(splats)
    n = len(sp["means"])
    if n == 0:
        raise InputError(None, "SOG cannot store zero splats")
    order = morton_order(sp["means"])
    sp = {k: v[order] for k, v in sp.items()}
    w, h = _grid(n)
    pad = w * h - n

    def img(cols: np.ndarray) -> np.ndarray:
        cols = np.asarray(cols, np.uint8)
        cols = np.concatenate([cols, np.zeros((pad, cols.shape[1]), np.uint8)])
        return cols.reshape(h, w, cols.shape[1])

    files: dict[str, bytes] = {}
    m = sp["means"].astype(np.float64)
    lm = np.sign(m) * np.log1p(np.abs(m))
    mins, maxs = lm.min(0), lm.max(0)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    q16 = np.clip(np.rint((lm - mins) / span * 65535.0), 0, 65535).astype(np.uint32)
    files["means_l.webp"] = _image_bytes(img(q16 & 255))
    files["means_u.webp"] = _image_bytes(img(q16 >> 8))

    others, largest, _ = smallest_three(sp["quats"])
    qcols = [np.clip(np.rint((others[:, j] * SQRT2 + 1.0) * 0.5 * 255.0), 0, 255)
             for j in range(3)]
    files["quats.webp"] = _image_bytes(img(np.stack(qcols + [252 + largest], 1)))

    scb, slab = kmeans_1d(sp["scales"], 256)
    files["scales.webp"] = _image_bytes(img(slab))
    ccb, clab = kmeans_1d(sp["sh0"][:, 0], 256)
    alpha = np.clip(np.rint(255.0 / (1.0 + np.exp(-sp["opacities"].astype(np.float64)))),
                    0, 255)
    files["sh0.webp"] = _image_bytes(img(np.concatenate([clab, alpha[:, None]], 1)))

    meta: dict = {
        "version": SOG_VERSION, "asset": {"generator": "splatforge"}, "count": int(n),
        "antialias": False,
        "means": {"mins": [float(v) for v in mins], "maxs": [float(v) for v in maxs],
                  "files": ["means_l.webp", "means_u.webp"]},
        "scales": {"codebook": [float(v) for v in scb], "files": ["scales.webp"]},
        "quats": {"files": ["quats.webp"]},
        "sh0": {"codebook": [float(v) for v in ccb], "files": ["sh0.webp"]},
    }
    deg = sh_degree_of(sp)
    if deg:
        k1 = sp["shN"].shape[1]
        k = min(int(sh_palette or default_sh_palette(n)), 65536)
        cent, labels = kmeans(sp["shN"].reshape(n, k1 * 3), k, iterations, seed)
        kk = len(cent)
        ncb, nlab = kmeans_1d(cent, 256)  # [kk, k1*3] labels
        nlab = nlab.reshape(kk, k1, 3)
        ch = math.ceil(kk / 64)
        cimg = np.zeros((ch, 64 * k1, 3), np.uint8)
        idx = np.arange(kk)
        for j in range(k1):
            cimg[idx // 64, (idx % 64) * k1 + j] = nlab[:, j]
        files["shN_centroids.webp"] = _image_bytes(cimg)
        files["shN_labels.webp"] = _image_bytes(
            img(np.stack([labels & 255, labels >> 8, np.zeros(n, np.int64)], 1)))
        meta["shN"] = {"count": int(kk), "bands": int(deg),
                       "codebook": [float(v) for v in ncb],
                       "files": ["shN_centroids.webp", "shN_labels.webp"]}
    files[META_NAME] = (json.dumps(meta) + "\n").encode()
    return files


def bundle_sog(files: Mapping[str, bytes]) -> bytes:
    """The bytes of a bundled ``.sog``: a ZIP with ``files`` at its root (stored: WebP and
    the small JSON gain nothing from deflate)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name in [META_NAME] + [k for k in files if k != META_NAME]:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            z.writestr(info, files[name])
    return buf.getvalue()


def write_sog(path: str | Path, splats: Mapping[str, np.ndarray], *,
              sh_palette: int | None = None) -> Path:
    """Write splats as SOG: a bundled ``*.sog`` ZIP, or the folder form when ``path`` is a
    ``meta.json`` (images written beside it, ``meta.json`` last), each file atomically.

    Raises:
        InputError: see :func:`encode_sog`, or a path that is neither ``*.sog`` nor
            ``meta.json``.
    """
    path = Path(path)
    files = encode_sog(splats, sh_palette=sh_palette)
    if path.suffix.lower() == ".sog":
        with atomic_path(path) as tmp:
            tmp.write_bytes(bundle_sog(files))
        return path
    if path.name.lower() != META_NAME:
        raise InputError(path, "SOG is written as a bundled *.sog file or as a folder named "
                         "by its meta.json")
    for name, data in files.items():
        if name != META_NAME:
            with atomic_path(path.parent / name) as tmp:
                tmp.write_bytes(data)
    with atomic_path(path) as tmp:
        tmp.write_bytes(files[META_NAME])
    return path


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def is_sog_path(path: str | Path) -> bool:
    """True for ``*.sog``, a ``meta.json`` file, or a folder holding ``meta.json``."""
    p = Path(path)
    return (p.suffix.lower() == ".sog" or p.name.lower() == META_NAME
            or (p.is_dir() and (p / META_NAME).is_file()))


class _Source:
    """Files of a SOG scene: ZIP members or files of a folder, size-bounded."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.suffix.lower() == ".sog":
            data = read_input_bytes(path)
            try:
                self.zip = zipfile.ZipFile(io.BytesIO(data))
            except (zipfile.BadZipFile, ValueError, OSError) as e:
                raise InputError(path, f"not a bundled SOG file (not a ZIP archive: {e})",
                                 "a .sog file is a ZIP of meta.json and WebP images") from None
            self.folder = None
        else:
            self.folder = path if path.is_dir() else path.parent
            if not (self.folder / META_NAME).is_file() and not path.is_file():
                raise InputError(path, "file not found")

    def read(self, name: str) -> bytes:
        if self.zip is not None:
            try:
                info = self.zip.getinfo(name)
            except KeyError:
                raise InputError(self.path, f"the SOG bundle has no member {name!r}") from None
            if info.file_size > MAX_MEMBER_BYTES:
                raise InputError(self.path, f"SOG member {name!r} declares {info.file_size} "
                                 "bytes, more than splatforge reads")
            try:
                with self.zip.open(info) as f:
                    data = f.read(MAX_MEMBER_BYTES + 1)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError,
                    NotImplementedError) as e:
                raise InputError(self.path, f"corrupt SOG member {name!r} ({e})") from None
            except Exception as e:  # noqa: BLE001  (zlib.error and friends from inflate)
                raise InputError(self.path, f"corrupt SOG member {name!r} ({e})") from None
            return data
        from ..paths import resolve_inside

        p = resolve_inside(self.folder, name, f"SOG file name in {META_NAME}")
        return read_input_bytes(p)


def _decode_image(src: _Source, name: str, count: int, exact_width: int | None = None
                  ) -> np.ndarray:
    """``[H*W, 4]`` uint8 RGBA of image ``name``, which must hold at least ``count`` pixels
    (and not vastly more: its size is checked before decoding)."""
    from PIL import Image

    data = src.read(name)
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if exact_width is not None and w != exact_width:
            raise InputError(src.path, f"SOG image {name!r} is {w} pixels wide; expected "
                             f"{exact_width}")
        if w * h < count or w * h > 4 * count + 65536:
            raise InputError(src.path, f"SOG image {name!r} is {w}x{h} pixels for {count} "
                             "entries", "the image does not match meta.json's count")
        arr = np.asarray(im.convert("RGBA"), np.uint8).reshape(-1, 4)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001  (Pillow raises many types for corrupt images)
        raise InputError(src.path, f"cannot decode SOG image {name!r} ({type(e).__name__}: "
                         f"{e})") from None
    return arr


def _meta_field(path: Path, meta: dict, key: str, sub: str, length: int | None = None
                ) -> list:
    try:
        v = meta[key][sub]
        if not isinstance(v, list) or (length is not None and len(v) != length):
            raise TypeError
        return v
    except (KeyError, TypeError):
        want = f" of {length} entries" if length else ""
        raise InputError(path, f"meta.json lacks a list {key}.{sub}{want}") from None


def read_sog(path: str | Path, events: EventCallback | None = None) -> dict[str, np.ndarray]:
    """Read a SOG scene (version 2): a bundled ``*.sog``, a ``meta.json`` or a folder holding
    one, into a splats dict (PLY frame, raw parameters).

    Returns:
        ``means [N, 3]``, ``scales [N, 3]`` (log), ``quats [N, 4]`` (wxyz, unit),
        ``opacities [N]`` (logit; alpha clamped to 0.5..254.5 / 255), ``sh0 [N, 1, 3]``,
        ``shN [N, K-1, 3]``, float32, in the file's order. Non-finite values are clamped with
        a ``warning`` event.

    Raises:
        InputError: missing/unreadable file, not a ZIP, malformed ``meta.json`` (other
            version, zero count, missing fields, codebooks not of 256 numbers), missing or
            undecodable images, images whose size does not match the count, or a file name
            in ``meta.json`` outside the folder.
    """
    path = Path(path)
    src = _Source(path)
    raw = src.read(META_NAME)
    try:
        meta = json.loads(raw.decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(path, f"malformed SOG meta.json ({e})") from None
    ver = meta.get("version")
    if ver != SOG_VERSION:
        raise InputError(path, f"unsupported SOG meta version {ver!r} (reads version 2)",
                         "convert it with a current splat-transform first")
    n = meta.get("count")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InputError(path, f"SOG meta.json count {n!r} is not a non-negative integer")
    if n == 0:
        raise InputError(path, "the SOG scene holds no splats (count 0)",
                         "export the scene again; an empty splat file cannot be viewed")
    try:
        mins = np.asarray(_meta_field(path, meta, "means", "mins", 3), np.float64)
        maxs = np.asarray(_meta_field(path, meta, "means", "maxs", 3), np.float64)
        scb = np.asarray(_meta_field(path, meta, "scales", "codebook", 256), np.float32)
        ccb = np.asarray(_meta_field(path, meta, "sh0", "codebook", 256), np.float32)
    except (TypeError, ValueError):
        raise InputError(path, "SOG meta.json bounds and codebooks must be numbers") from None
    mfiles = _meta_field(path, meta, "means", "files", 2)
    qfiles = _meta_field(path, meta, "quats", "files", 1)
    sfiles = _meta_field(path, meta, "scales", "files", 1)
    cfiles = _meta_field(path, meta, "sh0", "files", 1)
    names = [*mfiles, *qfiles, *sfiles, *cfiles]
    if not all(isinstance(x, str) for x in names):
        raise InputError(path, "SOG meta.json file names must be strings")

    lo = _decode_image(src, mfiles[0], n)[:n].astype(np.uint32)
    hi = _decode_image(src, mfiles[1], n)[:n].astype(np.uint32)
    q16 = (lo[:, :3] | (hi[:, :3] << 8)).astype(np.float64)
    span = np.where(maxs - mins != 0, maxs - mins, 1.0)
    lm = mins + span * (q16 / 65535.0)
    with np.errstate(over="ignore", invalid="ignore"):
        means = (np.sign(lm) * np.expm1(np.abs(lm))).astype(np.float32)

    qi = _decode_image(src, qfiles[0], n)[:n]
    tag = qi[:, 3].astype(np.int64)
    valid = (tag >= 252) & (tag <= 255)
    largest = np.where(valid, tag - 252, 0)
    small = (qi[:, :3].astype(np.float64) / 255.0 * 2.0 - 1.0) / SQRT2
    quats = np.zeros((n, 4), np.float64)
    rows = np.arange(n)
    slots = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    for j in range(3):
        quats[rows, slots[:, j]] = small[:, j]
    quats[rows, largest] = np.sqrt(np.clip(1.0 - (quats * quats).sum(1), 0.0, None))
    quats[~valid] = [1.0, 0.0, 0.0, 0.0]

    si = _decode_image(src, sfiles[0], n)[:n]
    scales = scb[si[:, :3]]
    ci = _decode_image(src, cfiles[0], n)[:n]
    sh0 = ccb[ci[:, :3]].reshape(n, 1, 3)
    a = np.clip(ci[:, 3].astype(np.float64) / 255.0, 0.5 / 255, 1 - 0.5 / 255)
    opacities = (-np.log(1.0 / a - 1.0)).astype(np.float32)

    shN = np.zeros((n, 0, 3), np.float32)
    if meta.get("shN") is not None:
        sh = meta["shN"]
        bands, count = (sh.get("bands"), sh.get("count")) if isinstance(sh, dict) else (0, 0)
        if bands not in (1, 2, 3) or not isinstance(count, int) or not 0 < count <= 65536:
            raise InputError(path, f"SOG meta.json shN has bands {bands!r} and count "
                             f"{count!r}; expected bands 1..3 and count 1..65536")
        try:
            ncb = np.asarray(_meta_field(path, meta, "shN", "codebook", 256), np.float32)
        except (TypeError, ValueError):
            raise InputError(path, "SOG meta.json shN.codebook must be numbers") from None
        nfiles = _meta_field(path, meta, "shN", "files", 2)
        if not all(isinstance(x, str) for x in nfiles):
            raise InputError(path, "SOG meta.json file names must be strings")
        k1 = (bands + 1) ** 2 - 1
        cent = _decode_image(src, nfiles[0], count * k1, exact_width=64 * k1)
        labels_img = _decode_image(src, nfiles[1], n)[:n].astype(np.int64)
        labels = labels_img[:, 0] | (labels_img[:, 1] << 8)
        if labels.max() >= count:
            raise InputError(path, f"SOG SH label {int(labels.max())} is beyond the palette "
                             f"of {count} entries")
        width = 64 * k1
        c = np.arange(count)
        palette = np.empty((count, k1, 3), np.float32)
        for j in range(k1):
            palette[:, j] = ncb[cent[(c // 64) * width + (c % 64) * k1 + j, :3]]
        shN = palette[labels]
    return clamp_nonfinite({"means": means, "scales": scales.astype(np.float32),
                            "quats": quats.astype(np.float32), "opacities": opacities,
                            "sh0": sh0.astype(np.float32),
                            "shN": np.ascontiguousarray(shN, np.float32)}, path, events)


__all__ = ["META_NAME", "SOG_VERSION", "bundle_sog", "default_sh_palette", "encode_sog",
           "is_sog_path", "read_sog", "write_sog"]
