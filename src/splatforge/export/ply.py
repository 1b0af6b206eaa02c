"""The INRIA 3DGS ``point_cloud.ply`` layout (``scene/gaussian_model.py`` ``save_ply``).

One ``vertex`` element, binary little-endian, every property ``float`` (float32), in this
order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3(K-1)-1}
    opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

with ``K = (sh_degree + 1)^2``. Values are the raw parameters: opacity logits, log scales,
unnormalised wxyz quaternions; normals are zero. ``f_rest`` is channel-major, as INRIA's
``_features_rest.transpose(1, 2).flatten(1)``: the K-1 red coefficients, then green, then blue.
This is what the INRIA viewer, SuperSplat, gsplat's exporter and most tools read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..util import atomic_path


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
    arr = _splats_to_array(splats)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(arr)}"]
    header += [f"property float {name}" for name in arr.dtype.names]
    header.append("end_header")
    data = ("\n".join(header) + "\n").encode("ascii") + arr.tobytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
