"""Quantisation helpers shared by the compressed formats (compressed PLY, SOG).

* :func:`morton_order`: splats sorted along a 3D Morton (Z-order) curve, so that neighbours in
  the file are neighbours in space (tight compressed-PLY chunk bounds, smooth SOG images that
  WebP compresses well). Morton, "A computer oriented geodetic data base", IBM 1966.
* :func:`kmeans_1d`: a scalar codebook (Lloyd's algorithm on sorted values; SOG's 256-entry
  codebooks for log scales, colours and SH coefficients).
* :func:`kmeans`: vector k-means in torch (Lloyd, k-means++-style seeding from a random
  sample), for SOG's SH palette.
* :func:`smallest_three`: the "smallest three" quaternion layout both compressed formats
  store (the largest component dropped, its sign made positive).
"""

from __future__ import annotations

import numpy as np


def _spread10(v: np.ndarray) -> np.ndarray:
    """Spread the low 10 bits of ``v`` so that bit i lands on bit 3i."""
    v = v.astype(np.uint64) & np.uint64(0x3FF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x030000FF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x0300F00F)
    v = (v | (v << np.uint64(4))) & np.uint64(0x030C30C3)
    v = (v | (v << np.uint64(2))) & np.uint64(0x09249249)
    return v


def smallest_three(quats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quaternions ``[N, 4]`` (wxyz, any norm) in the "smallest three" layout of the compressed
    PLY and SOG: unit length (zero rows become the identity), signed so that the
    largest-magnitude component is positive (``q`` and ``-q`` are the same rotation).

    Returns:
        ``(others [N, 3] float64, largest [N] int64, q [N, 4] float64)``: the three components
        kept, in index order, each in [-1/sqrt(2), 1/sqrt(2)]; the index of the dropped one;
        the signed unit quaternion.
    """
    q = np.asarray(quats, np.float64).reshape(-1, 4)
    qn = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(qn > 0, q / np.where(qn > 0, qn, 1), np.array([1.0, 0, 0, 0]))
    largest = np.abs(q).argmax(1)
    rows = np.arange(len(q))
    q = q * np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]
    slots = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    others = np.take_along_axis(q, slots, 1)
    return others, largest, q


def morton_order(means: np.ndarray) -> np.ndarray:
    """Indices ``[N]`` sorting ``means [N, 3]`` by their 30-bit Morton code (10 bits per axis
    over the bounding box; stable for ties)."""
    m = np.asarray(means, np.float64).reshape(-1, 3)
    if not len(m):
        return np.zeros(0, np.int64)
    lo, hi = m.min(0), m.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.clip(((m - lo) / span * 1023.0).astype(np.int64), 0, 1023)
    code = _spread10(q[:, 0]) | (_spread10(q[:, 1]) << np.uint64(1)) | (
        _spread10(q[:, 2]) << np.uint64(2))
    return np.argsort(code, kind="stable")


def kmeans_1d(values: np.ndarray, k: int = 256, iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """A ``k``-entry scalar codebook for ``values`` (any shape) and each value's label.

    Lloyd's algorithm in 1D: centroids start at quantiles, each value goes to its nearest
    centroid (a binary search between sorted centroids), centroids move to their members' mean;
    the first and last centroid stay pinned to the minimum and maximum, so every value lies
    within half the largest gap between neighbouring entries. With at most ``k`` distinct
    values the codebook holds them exactly.

    Returns:
        ``(codebook [k] float32 ascending, labels uint8/int64 like values)``.
    """
    v = np.asarray(values, np.float64).ravel()
    uniq = np.unique(v)
    if len(uniq) <= k:
        cb = np.concatenate([uniq, np.full(k - len(uniq), uniq[-1] if len(uniq) else 0.0)])
    else:
        cb = np.quantile(v, np.linspace(0.0, 1.0, k))
        for _ in range(iters):
            lab = _assign_1d(v, cb)
            sums = np.bincount(lab, v, k)
            cnt = np.bincount(lab, None, k)
            new = np.where(cnt > 0, sums / np.maximum(cnt, 1), cb)
            new = np.sort(new)
            new[0], new[-1] = uniq[0], uniq[-1]
            if np.allclose(new, cb, rtol=0, atol=1e-12):
                break
            cb = new
    cb = np.sort(cb).astype(np.float32)
    lab = _assign_1d(v, cb.astype(np.float64))
    return cb, lab.reshape(np.shape(values))


def _assign_1d(v: np.ndarray, cb: np.ndarray) -> np.ndarray:
    mid = (cb[1:] + cb[:-1]) / 2.0
    return np.searchsorted(mid, v, side="left").astype(np.int64)


def kmeans(x: np.ndarray, k: int, iters: int = 10, seed: int = 0,
           device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vector k-means of ``x [N, D]`` into ``k`` centroids (torch; CUDA when available).

    Seeds with ``k`` distinct random rows, then ``iters`` Lloyd steps (nearest centroid by
    squared distance, in chunks; an emptied centroid keeps its place). ``k >= N`` returns the
    rows themselves.

    Returns:
        ``(centroids [k', D] float32, labels [N] int64)``, ``k' = min(k, N)``.
    """
    import torch

    x = np.asarray(x, np.float32)
    n = len(x)
    if k >= n:
        return x.copy(), np.arange(n, dtype=np.int64)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    xt = torch.from_numpy(x).to(dev)
    g = torch.Generator().manual_seed(seed)
    c = xt[torch.randperm(n, generator=g)[:k].to(dev)].clone()
    chunk = max(1, int(2 ** 26 // max(k, 1)))
    lab = torch.empty(n, dtype=torch.int64, device=dev)
    for it in range(iters + 1):
        cn = (c * c).sum(1)
        for s in range(0, n, chunk):
            xs = xt[s:s + chunk]
            d = cn[None, :] - 2.0 * xs @ c.T
            lab[s:s + chunk] = d.argmin(1)
        if it == iters:
            break
        sums = torch.zeros_like(c).index_add_(0, lab, xt)
        cnt = torch.bincount(lab, minlength=k).to(c.dtype)
        keep = cnt > 0
        c[keep] = sums[keep] / cnt[keep, None]
    return c.cpu().numpy(), lab.cpu().numpy()


__all__ = ["kmeans", "kmeans_1d", "morton_order"]
