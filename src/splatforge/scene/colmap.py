"""COLMAP sparse models: readers and writers for ``cameras``, ``images`` and ``points3D``.

Both the binary (``.bin``) and the text (``.txt``) forms are supported, written here with
``struct`` and numpy rather than through pycolmap, because file formats are the project's core.

Format source: COLMAP ``src/colmap/scene/reconstruction_io.cc`` (``ReadCamerasBinary``,
``ReadImagesBinary``, ``ReadPoints3DBinary`` and their text and write counterparts) and the
COLMAP documentation page "Output Format". All binary values are little-endian:

``cameras.bin``
    ``uint64 num_cameras``, then per camera ``uint32 camera_id, int32 model_id,
    uint64 width, uint64 height, float64 params[num_params(model)]``.
``images.bin``
    ``uint64 num_images``, then per image ``uint32 image_id, float64 qw qx qy qz,
    float64 tx ty tz, uint32 camera_id, char name[] (NUL-terminated), uint64 num_points2D``,
    then ``num_points2D`` records ``float64 x, float64 y, uint64 point3D_id`` (24 bytes; an
    unobserved point has id ``2**64 - 1``, read here as ``-1``).
``points3D.bin``
    ``uint64 num_points``, then per point ``uint64 point3D_id, float64 x y z, uint8 r g b,
    float64 error, uint64 track_length``, then ``track_length`` pairs
    ``uint32 image_id, uint32 point2D_idx``.

The pose ``(q, t)`` of an image is COLMAP's ``cam_from_world``: ``x_cam = R(q) @ x_world + t``
with OpenCV camera axes (x right, y down, z forward), i.e. exactly gsplat's ``viewmat``.

Newer COLMAP (3.12+, 4.x) also writes ``rigs.bin`` and ``frames.bin`` beside these files; for
the trivial one-camera rigs that single-camera captures produce, ``images.bin`` already holds
each image's full ``cam_from_world`` and those extra files are ignored here.

Every malformed file raises :class:`splatforge.errors.InputError` naming the file.
"""

from __future__ import annotations

import mmap
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from ..util import atomic_path

# --------------------------------------------------------------------------------------------
# Camera models (COLMAP src/colmap/sensor/models.h): id -> (name, number of parameters).
# --------------------------------------------------------------------------------------------

CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4),
    13: ("DIVISION", 5),
    14: ("SIMPLE_FISHEYE", 3),
    15: ("FISHEYE", 4),
    16: ("EUCM", 6),
    17: ("EQUIRECTANGULAR", 2),
}
CAMERA_MODEL_IDS: dict[str, int] = {name: i for i, (name, _) in CAMERA_MODELS.items()}
CAMERA_MODEL_NUM_PARAMS: dict[str, int] = {name: n for name, n in CAMERA_MODELS.values()}

INVALID_POINT3D_ID = -1  # COLMAP's kInvalidPoint3DId (2**64 - 1) read as a signed int64

_POINT2D_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])  # 24 bytes
# points3D.bin record header: id, xyz, rgb, error, track_length (51 bytes, packed).
_POINT3D_HEADER_DTYPE = np.dtype(
    [("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"),
     ("track_length", "<u8")]
)
_TRACK_DTYPE = np.dtype([("image_id", "<u4"), ("point2D_idx", "<u4")])


# --------------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------------

@dataclass
class ColmapCamera:
    """One COLMAP camera.

    Attributes:
        id: COLMAP ``camera_id``.
        model: model name, e.g. ``"PINHOLE"`` (see :data:`CAMERA_MODELS`).
        width, height: image size in pixels the parameters refer to.
        params: [num_params] float64 parameters in COLMAP's order (focal lengths and principal
            point in pixels, with COLMAP's convention that pixel centres lie at +0.5).
    """

    id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    def __post_init__(self) -> None:
        self.params = np.asarray(self.params, dtype=np.float64).reshape(-1)


@dataclass
class ColmapImage:
    """One registered COLMAP image.

    Attributes:
        id: COLMAP ``image_id``.
        qvec: [4] float64 rotation quaternion (w, x, y, z) of ``cam_from_world``.
        tvec: [3] float64 translation of ``cam_from_world`` (world units).
        camera_id: id of its camera.
        name: file name relative to the image folder.
        xys: [N, 2] float64 keypoint positions in pixels (may be empty).
        point3D_ids: [N] int64 id of the 3D point each keypoint observes, -1 for none.
    """

    id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))

    def __post_init__(self) -> None:
        self.qvec = np.asarray(self.qvec, dtype=np.float64).reshape(4)
        self.tvec = np.asarray(self.tvec, dtype=np.float64).reshape(3)
        self.xys = np.asarray(self.xys, dtype=np.float64).reshape(-1, 2)
        self.point3D_ids = np.asarray(self.point3D_ids, dtype=np.int64).reshape(-1)

    def rotation(self) -> np.ndarray:
        """[3, 3] rotation matrix of ``cam_from_world``."""
        return qvec_to_rotmat(self.qvec)

    def viewmat(self) -> np.ndarray:
        """[4, 4] world-to-camera matrix (OpenCV axes), gsplat's ``viewmat``."""
        m = np.eye(4)
        m[:3, :3] = self.rotation()
        m[:3, 3] = self.tvec
        return m


@dataclass
class ColmapPoints3D:
    """All 3D points of a model, as flat arrays (one row per point).

    Attributes:
        ids: [P] int64 ``point3D_id``.
        xyz: [P, 3] float64 positions in world units.
        rgb: [P, 3] uint8 colours.
        errors: [P] float64 mean reprojection error in pixels.
        track_offsets: [P + 1] int64; the track of point ``i`` is rows
            ``track_offsets[i]:track_offsets[i + 1]`` of the two track arrays.
        track_image_ids: [T] int64 image id of each observation.
        track_point2D_idxs: [T] int64 keypoint index (into ``ColmapImage.xys``).
    """

    ids: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray
    errors: np.ndarray
    track_offsets: np.ndarray
    track_image_ids: np.ndarray
    track_point2D_idxs: np.ndarray

    @classmethod
    def empty(cls) -> "ColmapPoints3D":
        return cls(
            ids=np.zeros((0,), np.int64), xyz=np.zeros((0, 3)), rgb=np.zeros((0, 3), np.uint8),
            errors=np.zeros((0,)), track_offsets=np.zeros((1,), np.int64),
            track_image_ids=np.zeros((0,), np.int64), track_point2D_idxs=np.zeros((0,), np.int64),
        )

    @classmethod
    def from_arrays(cls, xyz: np.ndarray, rgb: np.ndarray, ids: np.ndarray | None = None,
                    errors: np.ndarray | None = None) -> "ColmapPoints3D":
        """Points without tracks (e.g. to write a small model): ids default to 1..P."""
        xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
        n = len(xyz)
        return cls(
            ids=np.arange(1, n + 1, dtype=np.int64) if ids is None else np.asarray(ids, np.int64),
            xyz=xyz, rgb=np.asarray(rgb, np.uint8).reshape(-1, 3),
            errors=np.zeros(n) if errors is None else np.asarray(errors, np.float64),
            track_offsets=np.zeros(n + 1, np.int64),
            track_image_ids=np.zeros((0,), np.int64), track_point2D_idxs=np.zeros((0,), np.int64),
        )

    def __len__(self) -> int:
        return int(len(self.ids))

    def track(self, i: int) -> np.ndarray:
        """[L, 2] int64 (image_id, point2D_idx) observations of point row ``i``."""
        a, b = int(self.track_offsets[i]), int(self.track_offsets[i + 1])
        return np.stack([self.track_image_ids[a:b], self.track_point2D_idxs[a:b]], axis=1)


@dataclass
class ColmapModel:
    """A sparse model: cameras and images keyed by id, and the 3D points."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points3D: ColmapPoints3D


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------

def qvec_to_rotmat(qvec: np.ndarray) -> np.ndarray:
    """[4] unit quaternion (w, x, y, z) -> [3, 3] rotation matrix (Hamilton convention, as
    COLMAP's ``Eigen::Quaterniond``). The quaternion is normalised first."""
    q = np.asarray(qvec, dtype=np.float64)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """[3, 3] rotation matrix -> [4] unit quaternion (w, x, y, z) with w >= 0.

    Shepperd's method (numerically stable branch on the largest diagonal term)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = np.array([0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s,
                      (R[1, 0] - R[0, 1]) / s])
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = np.array([(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s,
                      (R[0, 2] + R[2, 0]) / s])
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = np.array([(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s,
                      (R[1, 2] + R[2, 1]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = np.array([(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s,
                      (R[1, 2] + R[2, 1]) / s, 0.25 * s])
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


# --------------------------------------------------------------------------------------------
# Low-level file helpers
# --------------------------------------------------------------------------------------------

@contextmanager
def _mapped(path: Path) -> Iterator[memoryview | bytes]:
    """Map a file read-only (empty files give ``b""``); missing files raise InputError."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as e:
        raise InputError(path, f"cannot be read ({e.strerror or e})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            yield b""
            return
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield mm
        finally:
            try:
                mm.close()
            except BufferError:  # a view still refers to it; it is closed when collected
                pass


class _Reader:
    """Bounds-checked little-endian reader over a buffer; truncation raises InputError."""

    def __init__(self, buf, path: Path, what: str):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path
        self.what = what

    def truncated(self, detail: str) -> InputError:
        return InputError(
            self.path,
            f"truncated or corrupt {self.what} file: {detail} (at byte {self.pos} of "
            f"{self.size})",
            "re-export the model from COLMAP or check that the copy is complete",
        )

    def need(self, n: int, detail: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.truncated(f"expected {n} more bytes for {detail}")

    def unpack(self, fmt: struct.Struct, detail: str) -> tuple:
        self.need(fmt.size, detail)
        out = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return out

    def cstring(self, detail: str) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise self.truncated(f"unterminated {detail}")
        raw = bytes(self.buf[self.pos:end])
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def array(self, dtype: np.dtype, count: int, detail: str) -> np.ndarray:
        self.need(count * dtype.itemsize, detail)
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += count * dtype.itemsize
        return out

    def skip(self, n: int, detail: str) -> None:
        self.need(n, detail)
        self.pos += n

    def finish(self) -> None:
        if self.pos != self.size:
            raise InputError(
                self.path,
                f"corrupt {self.what} file: {self.size - self.pos} unexpected trailing bytes "
                f"after the last record",
            )


_U64 = struct.Struct("<Q")
_CAM_HEAD = struct.Struct("<IiQQ")
_IMG_HEAD = struct.Struct("<I4d3dI")


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(fileobj)`` into a temp file beside ``path``, then rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) of a text file, comments and blanks included."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as e:
        raise InputError(path, f"cannot be read ({e.strerror or e})") from None
    for i, line in enumerate(text.splitlines(), 1):
        yield i, line.strip()


def _fmt(x: float) -> str:
    """Shortest text that reads back to the same float64."""
    return repr(float(x))


# --------------------------------------------------------------------------------------------
# cameras
# --------------------------------------------------------------------------------------------

def read_cameras_binary(path: str | Path) -> dict[int, ColmapCamera]:
    """Read ``cameras.bin``.

    Returns:
        camera_id -> :class:`ColmapCamera`.

    Raises:
        InputError: missing, truncated or corrupt file, or an unknown camera model id.
    """
    path = Path(path)
    cameras: dict[int, ColmapCamera] = {}
    with _mapped(path) as buf:
        r = _Reader(buf, path, "cameras.bin")
        (n,) = r.unpack(_U64, "the camera count")
        if n > r.size:  # each record is at least 24 bytes: a huge count means garbage
            raise r.truncated(f"camera count {n} is larger than the file")
        for k in range(n):
            cam_id, model_id, width, height = r.unpack(_CAM_HEAD, f"camera record {k}")
            if model_id not in CAMERA_MODELS:
                raise InputError(
                    path, f"camera {cam_id} has unknown camera model id {model_id}",
                    f"known model ids: 0..{max(CAMERA_MODELS)} (COLMAP sensor/models.h)")
            name, nparams = CAMERA_MODELS[model_id]
            params = r.array(np.dtype("<f8"), nparams, f"the parameters of camera {cam_id}")
            cameras[cam_id] = ColmapCamera(cam_id, name, int(width), int(height), params)
        r.finish()
    return cameras


def read_cameras_text(path: str | Path) -> dict[int, ColmapCamera]:
    """Read ``cameras.txt`` (``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]`` per line).

    Raises:
        InputError: missing file, malformed line (line number given) or unknown model.
    """
    path = Path(path)
    cameras: dict[int, ColmapCamera] = {}
    for lineno, line in _text_lines(path):
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            cam_id, model, width, height = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = np.array([float(p) for p in parts[4:]], dtype=np.float64)
        except (IndexError, ValueError):
            raise InputError(path, f"line {lineno}: malformed camera line {line[:80]!r}",
                             "expected: CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]") from None
        if model not in CAMERA_MODEL_NUM_PARAMS:
            raise InputError(path, f"line {lineno}: camera {cam_id} has unknown camera model "
                                   f"{model!r}",
                             f"known models: {', '.join(CAMERA_MODEL_IDS)}")
        if len(params) != CAMERA_MODEL_NUM_PARAMS[model]:
            raise InputError(path, f"line {lineno}: camera model {model} needs "
                                   f"{CAMERA_MODEL_NUM_PARAMS[model]} parameters, got "
                                   f"{len(params)}")
        cameras[cam_id] = ColmapCamera(cam_id, model, width, height, params)
    return cameras


def write_cameras_binary(cameras: dict[int, ColmapCamera], path: str | Path) -> None:
    """Write ``cameras.bin`` atomically (temp file, then ``os.replace``)."""
    def write(f):
        f.write(_U64.pack(len(cameras)))
        for cam in cameras.values():
            model_id = CAMERA_MODEL_IDS[cam.model]
            if len(cam.params) != CAMERA_MODELS[model_id][1]:
                raise ValueError(f"camera {cam.id}: {cam.model} needs "
                                 f"{CAMERA_MODELS[model_id][1]} params, got {len(cam.params)}")
            f.write(_CAM_HEAD.pack(cam.id, model_id, cam.width, cam.height))
            f.write(np.asarray(cam.params, "<f8").tobytes())
    _atomic_write(Path(path), write)


def write_cameras_text(cameras: dict[int, ColmapCamera], path: str | Path) -> None:
    """Write ``cameras.txt`` atomically, in COLMAP's layout (full float64 precision)."""
    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(cameras)}",
    ]
    for cam in cameras.values():
        lines.append(" ".join([str(cam.id), cam.model, str(cam.width), str(cam.height)]
                              + [_fmt(p) for p in cam.params]))
    data = ("\n".join(lines) + "\n").encode()
    _atomic_write(Path(path), lambda f: f.write(data))


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------

def read_images_binary(path: str | Path, read_points2D: bool = True) -> dict[int, ColmapImage]:
    """Read ``images.bin``.

    The keypoint block of each image is decoded with one ``numpy.frombuffer`` call (or skipped
    when ``read_points2D`` is False, which is what scene loading does: that block holds every
    2D keypoint and dominates the file size). The file is memory-mapped, so skipped blocks
    are never read from disk.

    Returns:
        image_id -> :class:`ColmapImage`.

    Raises:
        InputError: missing, truncated or corrupt file.
    """
    path = Path(path)
    images: dict[int, ColmapImage] = {}
    with _mapped(path) as buf:
        r = _Reader(buf, path, "images.bin")
        (n,) = r.unpack(_U64, "the image count")
        if n > r.size:
            raise r.truncated(f"image count {n} is larger than the file")
        for k in range(n):
            head = r.unpack(_IMG_HEAD, f"image record {k}")
            image_id, qvec, tvec, cam_id = head[0], head[1:5], head[5:8], head[8]
            name = r.cstring(f"name of image {image_id}")
            (npts,) = r.unpack(_U64, f"the keypoint count of image {name!r}")
            if read_points2D:
                pts = r.array(_POINT2D_DTYPE, npts, f"the keypoints of image {name!r}")
                xys = np.stack([pts["x"], pts["y"]], axis=1)
                ids = pts["id"].astype(np.int64)
            else:
                r.skip(npts * _POINT2D_DTYPE.itemsize, f"the keypoints of image {name!r}")
                xys, ids = np.zeros((0, 2)), np.zeros((0,), np.int64)
            images[image_id] = ColmapImage(image_id, np.array(qvec), np.array(tvec), cam_id,
                                           name, xys, ids)
        r.finish()
    return images


def read_images_text(path: str | Path, read_points2D: bool = True) -> dict[int, ColmapImage]:
    """Read ``images.txt``: two lines per image,
    ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then ``(X Y POINT3D_ID)*`` (the second
    line may be empty). Blank and ``#`` lines before a record are skipped, as COLMAP does.

    Raises:
        InputError: missing file or malformed line (line number given).
    """
    path = Path(path)
    images: dict[int, ColmapImage] = {}
    lines = list(_text_lines(path))
    i = 0
    while i < len(lines):
        lineno, line = lines[i]
        i += 1
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=9)
        try:
            image_id = int(parts[0])
            qvec = [float(v) for v in parts[1:5]]
            tvec = [float(v) for v in parts[5:8]]
            cam_id = int(parts[8])
            name = parts[9]
        except (IndexError, ValueError):
            raise InputError(path, f"line {lineno}: malformed image line {line[:80]!r}",
                             "expected: IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME") from None
        pts_line = lines[i][1] if i < len(lines) else ""
        pts_lineno = lines[i][0] if i < len(lines) else lineno + 1
        i += 1
        xys, ids = np.zeros((0, 2)), np.zeros((0,), np.int64)
        if pts_line and (len(pts_line.split()) % 3 or pts_line.startswith("#")):
            # e.g. the next image's header: a writer left out the (possibly empty) keypoint line
            raise InputError(path, f"line {pts_lineno}: expected the keypoint line of image "
                                   f"{name!r} (X Y POINT3D_ID triples, possibly empty)",
                             "images.txt has two lines per image")
        if read_points2D and pts_line:
            try:
                vals = np.array(pts_line.split(), dtype=np.float64).reshape(-1, 3)
            except ValueError:
                raise InputError(path, f"line {pts_lineno}: malformed keypoint line of image "
                                       f"{name!r}", "expected triples: X Y POINT3D_ID") from None
            xys, ids = vals[:, :2].copy(), vals[:, 2].astype(np.int64)
        images[image_id] = ColmapImage(image_id, np.array(qvec), np.array(tvec), cam_id, name,
                                       xys, ids)
    return images


def write_images_binary(images: dict[int, ColmapImage], path: str | Path) -> None:
    """Write ``images.bin`` atomically (temp file, then ``os.replace``)."""
    def write(f):
        f.write(_U64.pack(len(images)))
        for im in images.values():
            f.write(_IMG_HEAD.pack(im.id, *im.qvec.tolist(), *im.tvec.tolist(), im.camera_id))
            f.write(im.name.encode("utf-8") + b"\0")
            pts = np.empty(len(im.xys), dtype=_POINT2D_DTYPE)
            pts["x"], pts["y"], pts["id"] = im.xys[:, 0], im.xys[:, 1], im.point3D_ids
            f.write(_U64.pack(len(pts)))
            f.write(pts.tobytes())
    _atomic_write(Path(path), write)


def write_images_text(images: dict[int, ColmapImage], path: str | Path) -> None:
    """Write ``images.txt`` atomically, in COLMAP's layout (full float64 precision)."""
    n_obs = sum(int((im.point3D_ids >= 0).sum()) for im in images.values())
    mean_obs = n_obs / len(images) if images else 0.0
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(images)}, mean observations per image: {mean_obs}",
    ]
    for im in images.values():
        lines.append(" ".join([str(im.id)] + [_fmt(v) for v in im.qvec] + [_fmt(v) for v in im.tvec]
                              + [str(im.camera_id), im.name]))
        xy = im.xys.tolist()
        ids = im.point3D_ids.tolist()
        lines.append(" ".join(f"{x!r} {y!r} {p}" for (x, y), p in zip(xy, ids)))
    data = ("\n".join(lines) + "\n").encode()
    _atomic_write(Path(path), lambda f: f.write(data))


# --------------------------------------------------------------------------------------------
# points3D
# --------------------------------------------------------------------------------------------

def read_points3D_binary(path: str | Path) -> ColmapPoints3D:
    """Read ``points3D.bin``.

    One Python step per point finds the record boundaries (records are variable-length); the
    fields and tracks are then gathered with numpy in bulk.

    Raises:
        InputError: missing, truncated or corrupt file.
    """
    path = Path(path)
    with _mapped(path) as buf:
        r = _Reader(buf, path, "points3D.bin")
        (n,) = r.unpack(_U64, "the point count")
        hsize = _POINT3D_HEADER_DTYPE.itemsize
        if n * hsize > r.size:
            raise r.truncated(f"point count {n} is larger than the file")
        starts = np.empty(n, dtype=np.int64)
        lengths = np.empty(n, dtype=np.int64)
        pos, size = r.pos, r.size
        unpack = _U64.unpack_from
        for k in range(n):
            if pos + hsize > size:
                r.pos = pos
                raise r.truncated(f"expected {hsize} bytes for point record {k}")
            (tl,) = unpack(buf, pos + hsize - 8)
            starts[k] = pos
            lengths[k] = tl
            pos += hsize + 8 * tl
            if pos > size:
                r.pos = starts[k]
                raise r.truncated(f"track of point record {k} ({tl} observations) runs past "
                                  "the end")
        r.pos = pos
        r.finish()
        raw = np.frombuffer(buf, dtype=np.uint8)
        try:
            heads = raw[starts[:, None] + np.arange(hsize)].copy().view(_POINT3D_HEADER_DTYPE)[:, 0]
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            total = int(offsets[-1])
            if total:
                # byte index of every track entry: start of its point's track + 8 * j
                first = np.repeat(starts + hsize, lengths)
                j = np.arange(total) - np.repeat(offsets[:-1], lengths)
                idx = (first + 8 * j)[:, None] + np.arange(8)
                tracks = raw[idx].copy().view(_TRACK_DTYPE)[:, 0]
            else:
                tracks = np.zeros(0, dtype=_TRACK_DTYPE)
        finally:
            del raw
        return ColmapPoints3D(
            ids=heads["id"].astype(np.int64), xyz=heads["xyz"].astype(np.float64),
            rgb=heads["rgb"].astype(np.uint8), errors=heads["error"].astype(np.float64),
            track_offsets=offsets, track_image_ids=tracks["image_id"].astype(np.int64),
            track_point2D_idxs=tracks["point2D_idx"].astype(np.int64),
        )


def read_points3D_text(path: str | Path) -> ColmapPoints3D:
    """Read ``points3D.txt``:
    ``POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)*`` per line.

    Raises:
        InputError: missing file or malformed line (line number given).
    """
    path = Path(path)
    ids, xyz, rgb, err, lens, tracks = [], [], [], [], [], []
    for lineno, line in _text_lines(path):
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            if len(parts) < 8 or (len(parts) - 8) % 2:
                raise ValueError
            ids.append(int(parts[0]))
            xyz.append([float(v) for v in parts[1:4]])
            rgb.append([int(v) for v in parts[4:7]])
            err.append(float(parts[7]))
            t = [int(v) for v in parts[8:]]
        except ValueError:
            raise InputError(path, f"line {lineno}: malformed point line {line[:80]!r}",
                             "expected: POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)*"
                             ) from None
        lens.append(len(t) // 2)
        tracks.extend(t)
    n = len(ids)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.array(lens, dtype=np.int64), out=offsets[1:])
    tr = np.array(tracks, dtype=np.int64).reshape(-1, 2)
    return ColmapPoints3D(
        ids=np.array(ids, dtype=np.int64), xyz=np.array(xyz, dtype=np.float64).reshape(-1, 3),
        rgb=np.array(rgb, dtype=np.uint8).reshape(-1, 3), errors=np.array(err, dtype=np.float64),
        track_offsets=offsets, track_image_ids=tr[:, 0].copy(),
        track_point2D_idxs=tr[:, 1].copy(),
    )


def write_points3D_binary(points: ColmapPoints3D, path: str | Path) -> None:
    """Write ``points3D.bin`` atomically (temp file, then ``os.replace``)."""
    def write(f):
        n = len(points)
        f.write(_U64.pack(n))
        heads = np.empty(n, dtype=_POINT3D_HEADER_DTYPE)
        heads["id"], heads["xyz"], heads["rgb"] = points.ids, points.xyz, points.rgb
        heads["error"] = points.errors
        heads["track_length"] = np.diff(points.track_offsets)
        tracks = np.empty(len(points.track_image_ids), dtype=_TRACK_DTYPE)
        tracks["image_id"] = points.track_image_ids
        tracks["point2D_idx"] = points.track_point2D_idxs
        hb = heads.tobytes()
        tb = tracks.tobytes()
        hs = _POINT3D_HEADER_DTYPE.itemsize
        off = points.track_offsets
        f.write(b"".join(hb[i * hs:(i + 1) * hs] + tb[8 * off[i]:8 * off[i + 1]]
                         for i in range(n)))
    _atomic_write(Path(path), write)


def write_points3D_text(points: ColmapPoints3D, path: str | Path) -> None:
    """Write ``points3D.txt`` atomically, in COLMAP's layout (full float64 precision)."""
    n = len(points)
    lens = np.diff(points.track_offsets)
    lines = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {n}, mean track length: {float(lens.mean()) if n else 0.0}",
    ]
    xyz, rgb, err = points.xyz.tolist(), points.rgb.tolist(), points.errors.tolist()
    ti, tp = points.track_image_ids.tolist(), points.track_point2D_idxs.tolist()
    off = points.track_offsets.tolist()
    for i, pid in enumerate(points.ids.tolist()):
        track = " ".join(f"{ti[j]} {tp[j]}" for j in range(off[i], off[i + 1]))
        lines.append(" ".join([str(pid)] + [repr(v) for v in xyz[i]] + [str(v) for v in rgb[i]]
                              + [repr(err[i])]) + (" " + track if track else ""))
    data = ("\n".join(lines) + "\n").encode()
    _atomic_write(Path(path), lambda f: f.write(data))


# --------------------------------------------------------------------------------------------
# Whole models
# --------------------------------------------------------------------------------------------

MODEL_FILES = ("cameras", "images", "points3D")


def model_format(folder: str | Path) -> str | None:
    """``".bin"`` or ``".txt"`` when ``folder`` holds a COLMAP model (cameras and images;
    binary preferred, as COLMAP's ``Reconstruction::Read`` does), else None."""
    folder = Path(folder)
    for ext in (".bin", ".txt"):
        if (folder / f"cameras{ext}").is_file() and (folder / f"images{ext}").is_file():
            return ext
    return None


def read_model(folder: str | Path, ext: str | None = None, read_points2D: bool = True,
               require_points: bool = False) -> ColmapModel:
    """Read ``cameras``, ``images`` and ``points3D`` from ``folder`` (``.bin`` or ``.txt``,
    auto-detected when ``ext`` is None). A missing ``points3D`` file gives no points unless
    ``require_points``. ``rigs``/``frames`` files are ignored.

    Raises:
        InputError: no model in ``folder``, or a malformed file; an image naming a camera id
            that ``cameras`` lacks.
    """
    folder = Path(folder)
    ext = ext or model_format(folder)
    if ext is None:
        raise InputError(folder, "no COLMAP model here",
                         "expected cameras.bin + images.bin (+ points3D.bin) or the .txt forms")
    if ext == ".bin":
        cameras = read_cameras_binary(folder / "cameras.bin")
        images = read_images_binary(folder / "images.bin", read_points2D=read_points2D)
        pts_path = folder / "points3D.bin"
        reader = read_points3D_binary
    elif ext == ".txt":
        cameras = read_cameras_text(folder / "cameras.txt")
        images = read_images_text(folder / "images.txt", read_points2D=read_points2D)
        pts_path = folder / "points3D.txt"
        reader = read_points3D_text
    else:
        raise ValueError(f"ext must be '.bin' or '.txt', got {ext!r}")
    for im in images.values():
        if im.camera_id not in cameras:
            raise InputError(folder / f"images{ext}",
                             f"image {im.name!r} refers to camera {im.camera_id}, which "
                             f"{folder / ('cameras' + ext)} does not define")
    if pts_path.is_file():
        points = reader(pts_path)
    elif require_points:
        raise InputError(pts_path, "file not found")
    else:
        points = ColmapPoints3D.empty()
    return ColmapModel(cameras, images, points)


def write_model(folder: str | Path, model: ColmapModel, ext: str = ".bin") -> None:
    """Write ``cameras``, ``images`` and ``points3D`` into ``folder`` (created if needed),
    each file atomically. ``ext`` is ``".bin"`` or ``".txt"``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if ext == ".bin":
        write_cameras_binary(model.cameras, folder / "cameras.bin")
        write_images_binary(model.images, folder / "images.bin")
        write_points3D_binary(model.points3D, folder / "points3D.bin")
    elif ext == ".txt":
        write_cameras_text(model.cameras, folder / "cameras.txt")
        write_images_text(model.images, folder / "images.txt")
        write_points3D_text(model.points3D, folder / "points3D.txt")
    else:
        raise ValueError(f"ext must be '.bin' or '.txt', got {ext!r}")
