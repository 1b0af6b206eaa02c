"""Foreground masks (white = keep) for posed images.

Where masks come from:

* COLMAP datasets (and LLFF ones): a mask folder inside the dataset, ``SceneConfig.masks``, or
  by default a ``masks/`` folder beside the image folder (so an uploaded zip or an S3 input
  prefix that carries ``masks/`` next to ``images/`` is picked up as it is). The mask of
  ``images/a/b.jpg`` is ``masks/a/b.jpg`` or ``masks/a/b.jpg.png`` or ``masks/a/b.png``
  (the names gaussian-splatting-lightning accepts).
* transforms.json: each frame's ``mask_path`` (relative to the JSON file).

splatforge never downloads or runs a segmentation model: make masks with any tool (SAM,
rembg, a chroma key, by hand) and put them beside the images.

A mask is read as greyscale and thresholded at 128 (``True`` = keep). The loader resamples
masks exactly as their images (the same Lanczos downsampling for ``data_factor``, the same
pycolmap undistortion), so mask and image stay pixel-aligned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..paths import join_inside

#: The default mask folder name beside ``images/``.
DEFAULT_MASK_DIR = "masks"


def mask_candidates(mask_dir: Path, name: str) -> list[Path]:
    """The files that may hold the mask of the image called ``name`` (relative name)."""
    p = Path(name)
    return [mask_dir / p, mask_dir / (p.as_posix() + ".png"), mask_dir / p.with_suffix(".png")]


def find_mask_dir(root: Path, base: Path, option: str | None) -> Path | None:
    """The mask folder of a COLMAP/LLFF dataset, or None.

    Args:
        root: the dataset folder (the option is resolved inside it).
        base: the folder that holds the image folder (where ``masks/`` is looked for).
        option: ``SceneConfig.masks``: None = ``<base>/masks`` when it exists; ``"none"`` = no
            masks; else a folder inside the dataset.

    Raises:
        InputError: the option leads outside the dataset or is not a folder.
    """
    if option is not None and option.lower() == "none":
        return None
    if option is None:
        d = base / DEFAULT_MASK_DIR
        return d if d.is_dir() else None
    d = join_inside(root, option, "scene.masks")
    if not d.is_dir():
        raise InputError(None, f"scene.masks {option!r}: no such folder in the dataset")
    return d


def match_masks(mask_dir: Path, names: list[str]) -> list[Path | None]:
    """For each image name, its mask file in ``mask_dir`` (None when it has none).

    Raises:
        InputError: a name would lead outside ``mask_dir``.
    """
    out: list[Path | None] = []
    for n in names:
        found = None
        for c in mask_candidates(mask_dir, n):
            join_inside(mask_dir, c.relative_to(mask_dir).as_posix(), "mask for image")
            if c.is_file():
                found = c
                break
        out.append(found)
    return out


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """``[H, W]`` bool mask (True = keep) from a greyscale/RGB/RGBA file.

    RGBA masks use their alpha channel when the colour is constant; otherwise the luminance.

    Args:
        size: expected ``(width, height)``; a mask of another size is an error.

    Raises:
        InputError: unreadable file or wrong size.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA"):
                a = np.asarray(im.getchannel("A"))
                lum = np.asarray(im.convert("L"))
                arr = a if lum.min() == lum.max() else lum
            else:
                arr = np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise InputError(path, "mask file not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(path, f"cannot be read as a mask image ({e})") from None
    if size is not None and (arr.shape[1], arr.shape[0]) != tuple(size):
        raise InputError(path, f"mask is {arr.shape[1]}x{arr.shape[0]} but its image is "
                               f"{size[0]}x{size[1]}")
    return arr >= 128


def resample_masks(sources: list[Path], rel_names: list[str], sizes: list[tuple[int, int]],
                   out_dir: Path) -> list[Path]:
    """Masks at the given ``(width, height)`` sizes, as PNG files in ``out_dir`` (reused while
    the source's size and mtime are unchanged).

    A mask already of its size is used as it is. Otherwise it is resized with Lanczos (the
    filter the loader downsamples images with, so edges stay aligned) and thresholded again
    at 128 when loaded.

    Args:
        sources: mask files. rel_names: unique names for the outputs. sizes: target sizes.

    Returns:
        one file per source.

    Raises:
        InputError: a mask cannot be read, or its aspect ratio differs from its image's by
            more than a pixel.
    """
    import json

    from ..util import atomic_path, atomic_write_text

    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    changed = False
    outs: list[Path] = []
    for src, rel, (w, h) in zip(sources, rel_names, sizes):
        src = Path(src)
        try:
            with Image.open(src) as im:
                sw, sh = im.size
                if (sw, sh) == (w, h):
                    outs.append(src)
                    continue
                if abs(sh * w / sw - h) > 1.0 + 0.01 * h:
                    raise InputError(src, f"mask is {sw}x{sh}, its image {w}x{h} (another "
                                          "aspect ratio)")
                dst = out_dir / (rel + ".png")
                st = src.stat()
                key = f"{st.st_size}:{st.st_mtime_ns}:{w}x{h}"
                if manifest.get(rel) == key and dst.is_file():
                    outs.append(dst)
                    continue
                small = im.convert("L").resize((w, h), Image.Resampling.LANCZOS)
        except FileNotFoundError:
            raise InputError(src, "mask file not found") from None
        except (OSError, ValueError) as e:
            raise InputError(src, f"cannot be read as a mask image ({e})") from None
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            small.save(tmp, format="PNG")
        manifest[rel] = key
        changed = True
        outs.append(dst)
    if changed:
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
    return outs
