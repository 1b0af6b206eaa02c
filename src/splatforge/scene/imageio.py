"""Image files of a scene: decoding to RGB, header sizes, and the downsampling cache.

* :func:`load_image` decodes one :class:`~splatforge.scene.types.SceneImage` to an
  ``[H, W, 3]`` uint8 array, compositing alpha on the scene background (the NeRF-synthetic
  convention: ``rgb * a + background * (1 - a)``).
* :func:`downsample_cached` makes the ``data_factor`` copies of images that have no
  ``images_N/`` folder, into the cache, and reuses them while the source file is unchanged.

Every unreadable file raises :class:`splatforge.errors.InputError` naming it.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..util import atomic_path, atomic_write_text
from .types import SceneImage

_JPEG_EXTS = {".jpg", ".jpeg", ".jpe", ".jfif"}
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError,
                  Image.DecompressionBombError)


def num_workers() -> int:
    """Threads for image work: the CPU count, at most 8 (Pillow releases the GIL)."""
    return max(1, min(8, os.cpu_count() or 1))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) in pixels from the file header (no full decode).

    Raises:
        InputError: the file is missing or not a decodable image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except FileNotFoundError:
        raise InputError(path, "image file not found") from None
    except _DECODE_ERRORS as e:
        raise InputError(path, f"cannot be decoded as an image ({e})") from None


def has_alpha(im: Image.Image) -> bool:
    """Whether an opened image carries transparency: an alpha channel (``RGBA``, ``LA`` and
    their premultiplied forms, ``PA``) or a palette/colour-key ``transparency`` entry."""
    return im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info


def _open_rgb_or_rgba(path: Path) -> Image.Image:
    """Decode fully into mode ``RGB`` or ``RGBA`` (grey, palette and 16-bit handled)."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA"):
                return im.copy()
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                a = np.asarray(im, dtype=np.float64)
                hi = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
                a8 = np.clip(np.round(a * (255.0 / hi)), 0, 255).astype(np.uint8)
                return Image.fromarray(a8, "L").convert("RGB")
            if mode == "F":
                a8 = np.clip(np.round(np.asarray(im) * 255.0), 0, 255).astype(np.uint8)
                return Image.fromarray(a8, "L").convert("RGB")
            return im.convert("RGBA" if has_alpha(im) else "RGB")
    except FileNotFoundError:
        raise InputError(path, "image file not found") from None
    except _DECODE_ERRORS as e:
        raise InputError(path, f"cannot be decoded as an image ({e})") from None


def composite(rgba: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """Alpha-composite ``[H, W, 4]`` uint8 on an RGB ``background`` in [0, 1].

    ``out = rgb * a + 255 * background * (1 - a)`` with ``a = alpha / 255`` (straight alpha,
    as PNG stores it), rounded to uint8 ``[H, W, 3]``.
    """
    rgb = rgba[..., :3].astype(np.float32)
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3) * 255.0
    return np.clip(np.rint(rgb * a + bg * (1.0 - a)), 0, 255).astype(np.uint8)


def load_image(image: SceneImage | str | Path,
               background: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Decode an image to ``[H, W, 3]`` uint8 RGB.

    RGBA / LA / palette-with-transparency images are composited on ``background`` (RGB in
    [0, 1], white by default), grey and palette images are expanded to RGB, 16-bit images are
    scaled to 8 bits. EXIF orientation is *not* applied: COLMAP poses and intrinsics refer to
    the stored pixel grid.

    Args:
        image: a :class:`SceneImage` (its size is checked) or a file path.
        background: RGB in [0, 1].

    Raises:
        InputError: the file is missing, cannot be decoded, or its size differs from the
            ``SceneImage``'s ``width`` x ``height``.
    """
    path = Path(image.path) if isinstance(image, SceneImage) else Path(image)
    im = _open_rgb_or_rgba(path)
    arr = np.asarray(im)
    if isinstance(image, SceneImage) and (im.width, im.height) != (image.width, image.height):
        raise InputError(path, f"image is {im.width}x{im.height} but the scene expects "
                               f"{image.width}x{image.height}",
                         "the image was replaced after loading, or the cache is stale")
    if arr.shape[-1] == 4:
        return composite(arr, background)
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------------
# Downsampling cache
# --------------------------------------------------------------------------------------------

def downsampled_size(width: int, height: int, factor: int) -> tuple[int, int]:
    """``(round(W / N), round(H / N))`` (Python rounding, as INRIA's and gsplat's loaders),
    at least 1 pixel."""
    return max(1, int(round(width / factor))), max(1, int(round(height / factor)))


def _save_atomic(im: Image.Image, dst: Path) -> None:
    """Save with the format of ``dst``'s extension (JPEG quality 95, 4:4:4), atomically."""
    ext = dst.suffix.lower()
    with atomic_path(dst) as tmp:
        if ext in _JPEG_EXTS:
            if im.mode not in ("RGB", "L"):
                im = im.convert("RGB")
            im.save(tmp, format="JPEG", quality=95, subsampling=0)
        elif ext == ".png":
            im.save(tmp, format="PNG", compress_level=1)
        else:
            im.save(tmp, format=Image.registered_extensions().get(ext))


def _resize_file(src: Path, dst: Path, factor: int) -> tuple[int, int]:
    """Downsample ``src`` by ``factor`` with Lanczos (Pillow premultiplies alpha for RGBA)."""
    im = _open_rgb_or_rgba(src)
    size = downsampled_size(im.width, im.height, factor)
    out = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    _save_atomic(out, dst)
    return size


def _read_manifest(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
        return data.get("files", {}) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json_atomic(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


def downsample_cached(
    sources: Sequence[Path],
    rel_names: Sequence[str],
    factor: int,
    out_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Path], list[tuple[int, int]], int]:
    """Downsample image files by ``factor`` into ``out_dir`` and reuse earlier results.

    ``out_dir/manifest.json`` records, per output, the source's byte size and mtime (ns) and
    the output's byte size and pixel size; an output is reused only when all of them still
    match, otherwise it is rebuilt (each output written atomically).

    Args:
        sources: [N] source image files.
        rel_names: [N] output paths relative to ``out_dir`` (unique).
        factor: downsampling factor N (output size ``round(W/N) x round(H/N)``).
        out_dir: cache folder for this factor.
        progress: called with (done, total) after each rebuilt image.

    Returns:
        (output paths, output (width, height) per image, number of images rebuilt).

    Raises:
        InputError: a source is missing or cannot be decoded.
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    manifest = _read_manifest(manifest_path)
    outs = [out_dir / r for r in rel_names]
    sizes: list[tuple[int, int] | None] = [None] * len(sources)
    todo: list[int] = []
    stats = []
    for i, (src, rel, dst) in enumerate(zip(sources, rel_names, outs)):
        try:
            st = os.stat(src)
        except FileNotFoundError:
            raise InputError(src, "image file not found") from None
        stats.append(st)
        e = manifest.get(rel)
        ok = False
        if isinstance(e, dict):
            try:
                ok = (e["src_size"] == st.st_size and e["src_mtime_ns"] == st.st_mtime_ns
                      and dst.is_file() and dst.stat().st_size == e["out_bytes"])
            except (KeyError, OSError):
                ok = False
        if ok:
            sizes[i] = (int(e["width"]), int(e["height"]))
        else:
            todo.append(i)
    if todo:
        done = 0

        def work(i: int) -> tuple[int, tuple[int, int]]:
            return i, _resize_file(Path(sources[i]), outs[i], factor)

        with ThreadPoolExecutor(num_workers()) as pool:
            for i, size in pool.map(work, todo):
                sizes[i] = size
                manifest[rel_names[i]] = dict(
                    src_size=stats[i].st_size, src_mtime_ns=stats[i].st_mtime_ns,
                    out_bytes=outs[i].stat().st_size, width=size[0], height=size[1])
                done += 1
                if progress:
                    progress(done, len(todo))
        _write_json_atomic(manifest_path, {"factor": factor, "files": manifest})
    return outs, [s for s in sizes if s is not None], len(todo)
