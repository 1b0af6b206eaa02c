"""``splatforge compress MODEL_DIR``: a smaller model at a measured cost.

Steps (each reported through ``events``, stage ``compress``):

1. **Global significance** of every Gaussian (LightGaussian, Fan et al. 2023, "LightGaussian:
   Unbounded 3D Gaussian Compression with 15x Reduction and 200+ FPS", Eq. 6): the sum over
   all training views and pixels of the Gaussian's opacity-weighted contribution. We use the
   alpha-blending weight ``w_i(p) = alpha_i(p) * T_i(p)`` (opacity times the 2D Gaussian
   falloff times the transmittance in front of it) as the per-pixel contribution, obtained
   exactly and for any rasterizer backend as the gradient of the rendered image of
   all-ones colours: ``d sum_p C(p) / d c_i = sum_p w_i(p)``.
2. **Prune** to the ``keep`` fraction (or the count whose ``point_cloud.ply`` fits
   ``target_mb``) with the highest significance.
3. Optionally lower the **SH degree** (the higher bands are dropped and the fine-tune refits
   the lower ones to the photos; LightGaussian instead distils from teacher renders of
   pseudo views).
4. **Fine-tune** the kept set for ``finetune_steps`` through the trainer's public API
   (:func:`splatforge.train.run_train` resumed from a checkpoint holding the pruned splats
   and their pruned Adam moments; densification off).
5. Write ``<model_dir>/point_cloud/iteration_<N>/point_cloud.ply`` (``N`` = the source
   iteration + ``finetune_steps``, + 1 without fine-tuning: the source is never overwritten)
   and ``<model_dir>/compress.json``: Gaussians, encoded file sizes per format (ply,
   compressed ply, splat, spz, sog) and held-out PSNR/SSIM before and
   after.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .errors import ConfigError, InputError
from .eval import open_model, sh_degree_of
from .events import EventCallback, StageReporter
from .export.model_dir import ModelDir
from .splats import splats_to_source_frame
from .train import evaluate_splats, run_train
from .train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .train.evaluate import render_view
from .util import atomic_write_text

STAGE = "compress"
COMPRESS_JSON = "compress.json"


def significance(params: dict[str, torch.Tensor], scene: Any, indices: list[int],
                 backend: str, antialiased: bool = False,
                 rep: StageReporter | None = None) -> torch.Tensor:
    """LightGaussian global significance ``[N]`` (float64, pixels): for each Gaussian the
    sum over the views ``indices`` and their pixels of its blending weight ``alpha * T``.

    Args:
        params: raw splats in the scene frame (``means [N, 3]`` ...), on one device.
        scene: the :class:`~splatforge.scene.Scene` the views come from.
        indices: image indices to sum over (the training views).
        backend: rasterizer backend (``gsplat`` / ``torch``).
    """
    n = len(params["means"])
    dev = params["means"].device
    total = torch.zeros(n, dtype=torch.float64, device=dev)
    # the torch backend's backward wants its geometry inputs to take gradients too; those
    # gradients are simply not used
    fixed = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    if rep is not None:
        rep.start_steps("significance", len(indices))
    for k, i in enumerate(indices):
        ones = torch.ones(n, 1, 3, device=dev, requires_grad=True)
        p = dict(fixed, sh0=ones, shN=torch.zeros(n, 0, 3, device=dev))
        # SH degree 0 maps colour c to max(SH_C0 * c + 0.5, 0), an affine map: its gradient
        # is SH_C0 * sum_p w_i(p) per channel. Black background: no extra term.
        render, _, _ = render_view(p, scene, i, 0, backend,
                                   background=torch.zeros(3, device=dev),
                                   antialiased=antialiased)
        render.sum().backward()
        total += ones.grad.sum(dim=(1, 2)).double() / (3.0 * 0.28209479177387814)
        if rep is not None:
            rep.step(k + 1)
    return total


def ply_bytes_per_gaussian(sh_degree: int) -> int:
    """Bytes per Gaussian of an INRIA ``point_cloud.ply`` (17 + 3 ((d+1)^2 - 1) float32)."""
    return 4 * (17 + 3 * ((sh_degree + 1) ** 2 - 1))


def keep_count(n: int, keep: float | None, target_mb: float | None, sh_degree: int) -> int:
    """Gaussians to keep: ``ceil(keep * n)``, or the most whose PLY fits ``target_mb``
    (10^6 bytes, less a 2 kB header allowance).

    Raises:
        ConfigError: neither or both given, keep outside (0, 1], target below one Gaussian.
    """
    if (keep is None) == (target_mb is None):
        raise ConfigError("compress: give exactly one of keep or target_mb")
    if keep is not None:
        if not 0.0 < keep <= 1.0:
            raise ConfigError(f"keep: {keep} is not in (0, 1]")
        return max(1, min(n, math.ceil(keep * n)))
    k = int((float(target_mb) * 1e6 - 2048) // ply_bytes_per_gaussian(sh_degree))
    if k < 1:
        raise ConfigError(f"target_mb: {target_mb} MB holds no Gaussian")
    return min(n, k)


def _prune_tensor(v: Any, idx: torch.Tensor, n: int) -> Any:
    if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n:
        return v[idx.to(v.device)].clone()
    return v


def _pruned_checkpoint(ckpt: dict[str, Any], idx: torch.Tensor, sh_degree: int,
                       config_json: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint ``ckpt`` with only the Gaussians ``idx``, SH truncated to
    ``sh_degree``, Adam moments pruned the same way, and ``config_json`` as its config."""
    n = len(ckpt["splats"]["means"])
    k1 = (sh_degree + 1) ** 2 - 1
    out = dict(ckpt)
    splats = {k: _prune_tensor(v, idx, n) for k, v in ckpt["splats"].items()}
    splats["shN"] = splats["shN"][:, :k1].contiguous()
    out["splats"] = splats
    opts = {}
    for name, sd in ckpt["optimizers"].items():
        sd = dict(sd)
        state = {}
        for pid, st in sd["state"].items():
            st = {k: _prune_tensor(v, idx, n) for k, v in st.items()}
            if name == "shN":
                st = {k: (v[:, :k1].contiguous() if isinstance(v, torch.Tensor)
                          and v.dim() == 3 else v) for k, v in st.items()}
            state[pid] = st
        sd["state"] = state
        opts[name] = sd
    out["optimizers"] = opts
    out["strategy_state"] = {k: _prune_tensor(v, idx, n)
                             for k, v in ckpt["strategy_state"].items()}
    out["config"] = config_json
    return out


def _sizes(splats: dict[str, np.ndarray]) -> dict[str, int]:
    """Encoded size in bytes of ``splats`` in every format splatforge writes."""
    from .export import encode_format

    return {fmt: len(encode_format(fmt, splats))
            for fmt in ("ply", "compressed.ply", "splat", "spz", "sog")}


def run_compress(model_dir: str | Path, *, keep: float | None = 0.5,
                 target_mb: float | None = None, finetune_steps: int = 3000,
                 sh_degree: int | None = None, iteration: int | None = None,
                 device: str = "auto", events: EventCallback | None = None
                 ) -> dict[str, Any]:
    """Prune a trained model by global significance, fine-tune it, write it as a new
    iteration and score it (see the module docstring).

    Args:
        model_dir: a model folder of ``splatforge train`` / ``reconstruct`` (with
            ``train_config.json`` and, for fine-tuning, ``ckpts/step_N.pt`` at the iteration).
        keep: fraction of Gaussians to keep (``target_mb`` None), in (0, 1].
        target_mb: instead, the size of the output ``point_cloud.ply`` in MB (10^6 bytes).
        finetune_steps: trainer steps after pruning (0: prune only).
        sh_degree: lower SH degree for the output (default: keep the model's).
        iteration: source iteration (default: the latest).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.

    Returns:
        the ``compress.json`` record: ``source_iteration``, ``iteration``, ``sh_degree``
        (before/after), ``num_gaussians`` (before/after), ``bytes`` per format (before/after),
        ``heldout`` (``psnr`` dB, ``ssim``, ``num_images``, before/after), ``finetune_steps``,
        ``ply`` (the new file).

    Raises:
        InputError: unreadable model folder, or fine-tuning without a checkpoint.
        ConfigError: bad ``keep`` / ``target_mb`` / ``sh_degree`` / ``finetune_steps``.
    """

    rep = StageReporter(STAGE, events)
    model_dir = Path(model_dir)
    if finetune_steps < 0:
        raise ConfigError(f"finetune_steps: {finetune_steps} < 0")
    info, scene, params, dev, backend = open_model(model_dir, iteration, events, device)
    deg_in = sh_degree_of(params)
    deg_out = deg_in if sh_degree is None else int(sh_degree)
    if not 0 <= deg_out <= deg_in:
        raise ConfigError(f"sh_degree: {deg_out} is not in 0..{deg_in} (the model's degree)")
    src_iter = info.iteration
    ckpt_file = checkpoint_path(model_dir, src_iter)
    if finetune_steps and not ckpt_file.is_file():
        raise InputError(ckpt_file, "fine-tuning resumes from the trainer's checkpoint at the "
                         "source iteration, and there is none",
                         "pick an --iteration that has ckpts/step_N.pt, or --finetune-steps 0")
    rep.started(f"compressing {model_dir} iteration {src_iter}: {len(params['means'])} "
                "Gaussians")
    heldout = list(scene.test_indices)

    def score(p: dict[str, torch.Tensor], deg: int) -> dict[str, Any]:
        if not heldout:
            return {"psnr": None, "ssim": None, "num_images": 0}
        r = evaluate_splats(p, scene, heldout, deg, backend, antialiased=info.antialiased)
        return {"psnr": r["psnr"], "ssim": r["ssim"], "num_images": r["num_images"]}

    before = score(params, deg_in)
    n = len(params["means"])
    k = keep_count(n, keep if target_mb is None else None, target_mb, deg_out)
    sig = significance(params, scene, list(scene.train_indices), backend, info.antialiased,
                       rep)
    order = torch.argsort(sig, descending=True, stable=True)
    idx = torch.sort(order[:k]).values.cpu()
    rep.info(f"kept {k} of {n} Gaussians by global significance", kept=k, total=n)
    k1 = (deg_out + 1) ** 2 - 1
    pruned = {kk: v[idx.to(v.device)] for kk, v in params.items()}
    pruned["shN"] = pruned["shN"][:, :k1].contiguous()

    out_iter = src_iter + max(finetune_steps, 1)  # never the source iteration itself
    work = model_dir / "compress_work"
    if finetune_steps:
        ckpt = load_checkpoint(ckpt_file, map_location="cpu")
        if len(ckpt["splats"]["means"]) != n:
            raise InputError(ckpt_file, f"holds {len(ckpt['splats']['means'])} Gaussians but "
                             f"the PLY of iteration {src_iter} holds {n}")
        old = TrainConfig.model_validate(ckpt["config"])
        stop = min(old.densify_until_iter, src_iter)
        cfg = TrainConfig.model_validate(old.model_dump() | {
            "max_steps": out_iter, "save_steps": [out_iter], "sh_degree": deg_out,
            "densify_until_iter": stop, "densify_from_iter": min(old.densify_from_iter, stop),
            "eval_every": 0, "device": str(dev)})
        if work.exists():
            shutil.rmtree(work)
        start = save_checkpoint(work / "start" / "step.pt",
                                _pruned_checkpoint(ckpt, idx, deg_out,
                                                   cfg.model_dump(mode="json")))
        res = run_train(cfg, scene, work / "run", events, scene_config=info.scene_config,
                        resume=start)
        ft = {kk: v.to(dev) for kk, v in load_checkpoint(
            res.checkpoints[out_iter], map_location="cpu")["splats"].items()}
    else:
        ft = pruned
    after = score(ft, deg_out)
    src_splats = splats_to_source_frame(params, scene)
    out_splats = splats_to_source_frame(ft, scene)
    from .export import write_ply

    ply = write_ply(ModelDir(model_dir).point_cloud(out_iter), out_splats)
    if work.exists():
        shutil.rmtree(work)
    rec = {
        "source_iteration": src_iter, "iteration": out_iter,
        "keep": None if target_mb is not None else keep, "target_mb": target_mb,
        "finetune_steps": finetune_steps, "criterion": "LightGaussian global significance "
        "(sum of alpha*T over training views)",
        "sh_degree": {"before": deg_in, "after": deg_out},
        "num_gaussians": {"before": n, "after": int(len(ft["means"]))},
        "bytes": {"before": _sizes(src_splats), "after": _sizes(out_splats)},
        "heldout": {"before": before, "after": after},
        "ply": str(ply.relative_to(model_dir)),
    }
    atomic_write_text(model_dir / COMPRESS_JSON, json.dumps(rec, indent=2) + "\n")
    rep.finished(f"{n} -> {rec['num_gaussians']['after']} Gaussians; held-out PSNR "
                 f"{before['psnr']} -> {after['psnr']}", **{"iteration": out_iter})
    return rec


__all__ = ["COMPRESS_JSON", "keep_count", "ply_bytes_per_gaussian", "run_compress",
           "significance"]
