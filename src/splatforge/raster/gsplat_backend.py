"""The CUDA backend: gsplat's fused kernels, and the check that they can be used here.

gsplat 1.5.3 loads its CUDA extension lazily (``gsplat.cuda._backend``): a prebuilt
``gsplat.csrc`` module if one is installed, otherwise a JIT compile with nvcc against the
local torch (about a minute the first time; cached under ``~/.cache/torch_extensions``).
Without a GPU, without nvcc, or with a CUDA/torch mismatch this fails, sometimes only at the
first kernel call and with an unhelpful message. :func:`gsplat_available` performs the load
plus one tiny kernel call once per process and remembers the outcome and the reason.

A prebuilt extension can be supplied with the environment variable ``SPLATFORGE_GSPLAT_SO``
(path to a ``gsplat_cuda.so`` built by gsplat's JIT for the same torch build): it is loaded
and registered as ``gsplat.csrc`` before gsplat's backend is imported, which skips the
compile (see ``shared/NOTES.md``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading

import torch
from torch import Tensor

log = logging.getLogger("splatforge.raster")

_lock = threading.Lock()
_state: dict = {"checked": False, "ok": False, "reason": None}


def load_prebuilt_gsplat_extension(path: str | None = None) -> bool:
    """Register a prebuilt gsplat CUDA extension as ``gsplat.csrc`` (so gsplat skips its JIT).

    Args:
        path: the ``gsplat_cuda.so``; default ``$SPLATFORGE_GSPLAT_SO``.

    Returns:
        True if an extension is registered (now or before), False if no path was given.

    Raises:
        ImportError: the file cannot be loaded (missing, or built for another torch/CUDA).
    """
    if "gsplat.csrc" in sys.modules:
        return True
    path = path or os.environ.get("SPLATFORGE_GSPLAT_SO")
    if not path:
        return False
    if not os.path.isfile(path):
        raise ImportError(f"SPLATFORGE_GSPLAT_SO={path}: no such file")
    spec = importlib.util.spec_from_file_location("gsplat_cuda", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a loadable Python extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["gsplat.csrc"] = module
    log.debug("registered prebuilt gsplat extension %s as gsplat.csrc", path)
    return True


def _probe() -> tuple[bool, str | None]:
    # Every failure mode of loading/compiling/running gsplat's extension must turn into a
    # reason string here (never an exception), hence the broad excepts.
    if not torch.cuda.is_available():
        return False, "no CUDA device is available to PyTorch (torch.cuda.is_available() is False)"
    try:
        import gsplat  # noqa: F401
    except Exception as e:  # noqa: BLE001  (pragma: no cover - gsplat is a dependency)
        return False, f"gsplat cannot be imported: {type(e).__name__}: {e}"
    try:
        load_prebuilt_gsplat_extension()
    except Exception as e:  # noqa: BLE001
        return False, f"the prebuilt gsplat extension could not be loaded ({type(e).__name__}: {e})"
    try:
        from gsplat.cuda._backend import _C
    except Exception as e:  # noqa: BLE001
        return False, (
            f"gsplat's CUDA extension could not be loaded or JIT-compiled "
            f"({type(e).__name__}: {str(e).strip()[:500]})"
        )
    if _C is None:
        return False, (
            "gsplat's CUDA extension is not built and no CUDA toolkit (nvcc) was found to "
            "JIT-compile it"
        )
    try:
        from gsplat import quat_scale_to_covar_preci

        q = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device="cuda")
        s = torch.ones((1, 3), device="cuda")
        cov, _ = quat_scale_to_covar_preci(q, s, compute_preci=False)
        torch.cuda.synchronize()
        if not torch.allclose(cov[0].cpu(), torch.eye(3), atol=1e-5):
            return False, "gsplat's CUDA kernels returned wrong values in a self-test"
    except Exception as e:  # noqa: BLE001
        return False, f"gsplat's CUDA kernels fail to run ({type(e).__name__}: {str(e).strip()[:500]})"
    return True, None


def gsplat_available() -> bool:
    """Whether gsplat's CUDA kernels load and run in this process (checked once, cached).

    The first call may take about a minute if gsplat has to JIT-compile its extension.
    Never raises; see :func:`gsplat_unavailable_reason` for why it returned False.
    """
    with _lock:
        if not _state["checked"]:
            ok, reason = _probe()
            _state.update(checked=True, ok=ok, reason=reason)
            if not ok:
                log.debug("gsplat CUDA backend unavailable: %s", reason)
        return bool(_state["ok"])


def gsplat_unavailable_reason() -> str | None:
    """Why :func:`gsplat_available` is False (None when available or not checked yet)."""
    return _state["reason"] if _state["checked"] else None


def rasterize_gsplat(
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
) -> tuple[Tensor, Tensor, dict]:
    """``gsplat.rasterization`` with the same arguments (``packed``, ``absgrad`` and
    ``sparse_grad`` passed through). Tensors must be on a CUDA device.

    Returns gsplat's ``(render_colors, render_alphas, meta)`` with ``meta["backend"] =
    "gsplat"`` added.
    """
    from gsplat import rasterization

    colors_out, alphas, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height),
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
        sh_degree=sh_degree, packed=packed, tile_size=tile_size, backgrounds=backgrounds,
        render_mode=render_mode, sparse_grad=sparse_grad, absgrad=absgrad,
        rasterize_mode=rasterize_mode,
    )
    meta["backend"] = "gsplat"
    return colors_out, alphas, meta


__all__ = [
    "gsplat_available",
    "gsplat_unavailable_reason",
    "load_prebuilt_gsplat_extension",
    "rasterize_gsplat",
]
