"""Rasterization of 3D Gaussians: one function, two backends.

:func:`rasterize` follows ``gsplat.rasterization`` (gsplat 1.5.3) argument for argument and
returns the same ``(colors, alphas, meta)``. Two backends implement it:

* ``"gsplat"`` - gsplat's fused CUDA kernels (:mod:`splatforge.raster.gsplat_backend`);
* ``"torch"`` - a pure-PyTorch tile rasterizer with the same mathematics, differentiable by
  autograd, for CPU / MPS (:mod:`splatforge.raster.torch_backend`; memory bounded by a
  chunk budget, see :mod:`splatforge.raster.composite`).

``backend="auto"`` picks gsplat for CUDA tensors when its kernels load and run, and the torch
backend otherwise; when CUDA tensors have to fall back, one warning says why.

Both backends fill the ``meta`` keys that ``gsplat.strategy.DefaultStrategy`` and
``MCMCStrategy`` read; for MCMC on CPU, :func:`install_torch_relocation` (called
automatically the first time the torch backend runs) supplies PyTorch versions of the two
CUDA ops ``gsplat.strategy.ops`` uses.
"""

from __future__ import annotations

import logging
import threading

import torch
from torch import Tensor

from ..errors import ConfigError
from .composite import (
    DEFAULT_CHUNK_BUDGET,
    DEFAULT_CHUNK_BUDGET_CUDA,
    default_chunk_budget,
)
from .gsplat_backend import (
    gsplat_available,
    gsplat_unavailable_reason,
    load_prebuilt_gsplat_extension,
)
from .mcmc import (
    compute_relocation_torch,
    install_torch_relocation,
    torch_relocation_installed,
    uninstall_torch_relocation,
)
from .torch_backend import RASTERIZE_MODES, RENDER_MODES

log = logging.getLogger("splatforge.raster")

BACKENDS = ("auto", "gsplat", "torch")


class BackendUnavailableError(ConfigError, RuntimeError):
    """The requested rasterization backend cannot run here (e.g. ``backend="gsplat"`` without a
    working CUDA build of gsplat, or with CPU tensors). A :class:`splatforge.errors.ConfigError`
    and a ``RuntimeError``."""


_warn_lock = threading.Lock()
_warned_fallback = False
_relocation_installed_once = False


def _warn_fallback_once(reason: str | None) -> None:
    global _warned_fallback
    with _warn_lock:
        if _warned_fallback:
            return
        _warned_fallback = True
    log.warning(
        "splatforge.raster: the gsplat CUDA backend is unavailable (%s); using the pure-PyTorch "
        "rasterizer instead, which is much slower. Pass backend='torch' to silence this "
        "warning, or fix the gsplat install to get the CUDA kernels.",
        reason or "unknown reason",
    )


def select_backend(requested: str, device: torch.device | str) -> str:
    """Resolve a backend request for tensors on ``device``.

    Args:
        requested: ``"auto"``, ``"gsplat"`` or ``"torch"``.
        device: device of the Gaussian tensors.

    Returns:
        ``"gsplat"`` or ``"torch"``. ``"auto"`` gives ``"gsplat"`` for CUDA tensors when
        :func:`gsplat_available`, else ``"torch"`` (with one warning per process when CUDA
        tensors fall back; silently for CPU/MPS tensors, where gsplat is never tried).

    Raises:
        BackendUnavailableError: ``"gsplat"`` requested for non-CUDA tensors or when gsplat's
            kernels cannot load/run here (the message says what failed).
        ConfigError: unknown backend name.
    """
    dev = torch.device(device)
    if requested == "torch":
        return "torch"
    if requested == "gsplat":
        if dev.type != "cuda":
            raise BackendUnavailableError(
                f"backend='gsplat' needs CUDA tensors, but the Gaussians are on '{dev}'. "
                "Use backend='torch' (or 'auto') for CPU/MPS rendering."
            )
        if not gsplat_available():
            raise BackendUnavailableError(
                f"backend='gsplat' was requested but gsplat's CUDA kernels cannot be used: "
                f"{gsplat_unavailable_reason()}. Use backend='torch' or 'auto' to render with "
                "the pure-PyTorch rasterizer."
            )
        return "gsplat"
    if requested == "auto":
        if dev.type == "cuda":
            if gsplat_available():
                return "gsplat"
            _warn_fallback_once(gsplat_unavailable_reason())
        return "torch"
    raise ConfigError(f"backend must be one of {BACKENDS}, got {requested!r}")


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    backend: str = "auto",
    chunk_budget: int | None = None,
) -> tuple[Tensor, Tensor, dict]:
    """Render N 3D Gaussians into C pinhole cameras (``gsplat.rasterization`` conventions).

    Args:
        means: ``[N, 3]`` centres, world frame, scene units.
        quats: ``[N, 4]`` rotations as wxyz quaternions (need not be normalised).
        scales: ``[N, 3]`` activated (positive) standard deviations, scene units.
        opacities: ``[N]`` activated opacities in [0, 1].
        colors: ``[N, D]`` (or per camera ``[C, N, D]``) features when ``sh_degree`` is None;
            else SH coefficients ``[N, K, 3]`` (or ``[C, N, K, 3]``), ``K >= (sh_degree+1)^2``,
            evaluated towards the camera centre and mapped to ``max(SH + 0.5, 0)``.
        viewmats: ``[C, 4, 4]`` world-to-camera transforms (OpenCV axes).
        Ks: ``[C, 3, 3]`` pinhole intrinsics, pixels.
        width, height: image size, pixels.
        near_plane, far_plane: Gaussians with camera z outside ``[near, far]`` are culled
            (scene units).
        radius_clip: Gaussians whose pixel radii are both ``<= radius_clip`` are culled.
        eps2d: variance (px^2) added to the projected 2D covariance (anti-aliasing low-pass).
        sh_degree: SH degree 0..3 to evaluate, or None for plain colours.
        packed: meta per-Gaussian tensors in packed ``[nnz, ...]`` layout (with
            ``camera_ids`` / ``gaussian_ids``) instead of dense ``[C, N, ...]``.
        tile_size: tile side in pixels (16 as in gsplat).
        backgrounds: optional ``[C, D]`` background colours (composited with ``T``).
        render_mode: ``"RGB"`` (D channels), ``"D"`` (accumulated camera z, 1 channel),
            ``"ED"`` (expected depth = D / alpha), ``"RGB+D"``, ``"RGB+ED"`` (D+1 channels,
            depth last).
        sparse_grad: gsplat backend: COO gradients for means/quats/scales (packed mode only);
            ignored by the torch backend.
        absgrad: also compute ``meta["means2d"].absgrad`` in the backward pass (AbsGS).
        rasterize_mode: ``"classic"`` or ``"antialiased"`` (Mip-Splatting opacity
            compensation ``sqrt(det(S) / det(S + eps2d I))``).
        backend: ``"auto"``, ``"gsplat"`` or ``"torch"`` (see :func:`select_backend`).
        chunk_budget: torch backend only: Gaussian-pixel pairs evaluated per compositing step,
            which bounds its transient memory (about 100-150 bytes per pair in float32); default
            :func:`default_chunk_budget`: ``$SPLATFORGE_RASTER_CHUNK_BUDGET`` if set, else
            2^18 on CPU/MPS and 2^22 on CUDA. Results do not depend on it (up to float
            summation order).

    Returns:
        ``(render_colors [C, H, W, D'], render_alphas [C, H, W, 1], meta)`` where ``D'`` is D
        (RGB), 1 (D/ED) or D+1 (RGB+D/RGB+ED). ``meta`` holds, like gsplat: ``means2d``
        (``[C, N, 2]`` or packed ``[nnz, 2]``, pixels; part of the autograd graph, so
        ``meta["means2d"].retain_grad()`` before backward gives the 2D-mean gradient, and
        ``.absgrad`` when ``absgrad=True``), ``radii`` (int32 ``[C, N, 2]`` / ``[nnz, 2]``,
        per-axis pixel radii, 0 = culled), ``depths``, ``conics``, ``opacities`` (after the
        antialiasing compensation), ``camera_ids``, ``gaussian_ids``, ``batch_ids`` (packed
        only, else None), ``tiles_per_gauss``, ``isect_ids``, ``flatten_ids``,
        ``isect_offsets`` (``[C, tile_height, tile_width]``), ``tile_width``,
        ``tile_height``, ``tile_size``, ``width``, ``height``, ``n_cameras``, ``n_batches``,
        and ``backend`` (``"gsplat"`` or ``"torch"``).

    Raises:
        ValueError: wrong tensor shapes (torch backend; gsplat asserts its own).
        ConfigError: invalid ``render_mode``, ``rasterize_mode``, ``sh_degree``,
            ``backend``...
        BackendUnavailableError: ``backend="gsplat"`` cannot run here.
    """
    global _relocation_installed_once
    which = select_backend(backend, means.device)
    if which == "gsplat":
        from .gsplat_backend import rasterize_gsplat

        return rasterize_gsplat(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
            sh_degree=sh_degree, packed=packed, tile_size=tile_size, backgrounds=backgrounds,
            render_mode=render_mode, sparse_grad=sparse_grad, absgrad=absgrad,
            rasterize_mode=rasterize_mode,
        )
    from .torch_backend import rasterize_torch

    if not _relocation_installed_once:
        _relocation_installed_once = True
        try:
            install_torch_relocation()
        except Exception as e:  # noqa: BLE001  (pragma: no cover - gsplat missing or changed)
            log.debug("could not install the torch MCMC relocation: %s", e)
    return rasterize_torch(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
        sh_degree=sh_degree, packed=packed, tile_size=tile_size, backgrounds=backgrounds,
        render_mode=render_mode, sparse_grad=sparse_grad, absgrad=absgrad,
        rasterize_mode=rasterize_mode, chunk_budget=chunk_budget,
    )


__all__ = [
    "BACKENDS",
    "DEFAULT_CHUNK_BUDGET",
    "DEFAULT_CHUNK_BUDGET_CUDA",
    "RASTERIZE_MODES",
    "RENDER_MODES",
    "BackendUnavailableError",
    "compute_relocation_torch",
    "default_chunk_budget",
    "gsplat_available",
    "gsplat_unavailable_reason",
    "install_torch_relocation",
    "load_prebuilt_gsplat_extension",
    "rasterize",
    "select_backend",
    "torch_relocation_installed",
    "uninstall_torch_relocation",
]
