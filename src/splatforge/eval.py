"""``splatforge eval <model_dir>``: score a trained model on its held-out views.

Reads the model folder the trainer wrote (``train_config.json`` for the dataset path and the
scene options, else INRIA's ``cfg_args``), the splats of the latest (or a chosen)
``point_cloud/iteration_N/point_cloud.ply`` (through :func:`splatforge.export.read_ply`; the
trainer's checkpoint ``ckpts/step_N.pt`` when no PLY reader is available), renders every
held-out view (every 8th image by name, or the dataset's own split: the views the trainer never
trained on) and writes::

    <model_dir>/eval/metrics.csv        name, psnr, ssim, cc_psnr, cc_ssim (and lpips with
                                        weights), per image; cc_* after a per-image colour
                                        fit (gsplat's cc_psnr protocol, for appearance models)
    <model_dir>/eval/<name>.png         ground truth | render | absolute error x 4, side by side
    <model_dir>/metrics.json            merged: "eval" (per image and means, the iteration) and
                                        top-level "psnr", "ssim", "lpips", "lpips_skipped";
                                        the trainer's keys are kept, and its "test" filled
                                        with these scores when the trainer left it to this
                                        stage (reconstruct: the views are scored once)

PSNR is per image, then averaged (INRIA ``metrics.py``); SSIM is
:func:`splatforge.metrics.ssim` (Gaussian window 11, sigma 1.5). Renders use the torch
rasterizer on CPU and gsplat on CUDA (``backend="auto"``). LPIPS (:class:`splatforge.metrics.LPIPS`,
AlexNet v0.1) is computed per image when a local weights file is given (its format is in that
class's docstring); otherwise ``"lpips": null`` and the reason in ``"lpips_skipped"``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import SceneConfig
from .errors import InputError
from .events import EventCallback, StageReporter
from .export.model_dir import ModelDir, parse_cfg_args
from .metrics import LPIPS
from .scene import load_scene
from .train.checkpoint import checkpoint_path, load_checkpoint
from .train.evaluate import evaluate_splats, held_out_record
from .train.real_capture import MaskCache
from .train.trainer import resolve_backend, resolve_device
from .util import atomic_path, atomic_write_text

LPIPS_SKIPPED = "no weights given (--lpips-weights); weights cannot be downloaded here"


@dataclass
class ModelInfo:
    """What a model folder says about itself.

    Attributes:
        model_dir: the folder. scene_path: the dataset it was trained on.
        scene_config: how that dataset was read. iteration: the PLY/checkpoint step used.
        ply: the PLY file (None when only a checkpoint exists).
    """

    model_dir: Path
    scene_path: Path
    scene_config: SceneConfig
    iteration: int
    ply: Path | None
    device: str = "auto"
    antialiased: bool = False


def read_model_info(model_dir: str | Path, iteration: int | None = None) -> ModelInfo:
    """Find the dataset and splats of a model folder.

    Raises:
        InputError: no such folder, no ``point_cloud/iteration_N``, or no
            ``train_config.json``/``cfg_args`` naming an existing dataset.
    """
    model_dir = Path(model_dir)
    files = ModelDir(model_dir)
    if not model_dir.is_dir():
        raise InputError(model_dir, "model folder not found")
    iters = files.iterations()
    if not iters:
        raise InputError(model_dir, "no point_cloud/iteration_N/point_cloud.ply here",
                         "train first: splatforge train <dataset> -o <model_dir>")
    if iteration is None:
        iteration = iters[-1]
    elif iteration not in iters:
        raise InputError(model_dir / "point_cloud", f"no iteration_{iteration} "
                         f"(have {', '.join(map(str, iters))})")
    tc = files.train_config
    device = "auto"
    if tc.is_file():
        data = json.loads(tc.read_text())
        scene_path = Path(data["scene_path"])
        scene_cfg = SceneConfig.model_validate(data.get("scene") or {})
    elif files.cfg_args.is_file():
        args = parse_cfg_args(files.cfg_args)
        scene_path = Path(args["source_path"])
        res = int(args.get("resolution", -1))
        scene_cfg = SceneConfig(data_factor=res if res in (2, 4, 8) else 1,
                                test_every=8 if args.get("eval", True) else 0,
                                background=(1.0, 1.0, 1.0) if args.get("white_background")
                                else (0.0, 0.0, 0.0))
    else:
        raise InputError(model_dir, "neither train_config.json nor cfg_args: cannot tell which "
                                    "dataset the model was trained on")
    if not scene_path.exists():
        raise InputError(scene_path, f"the dataset of model {model_dir} is missing")
    antialiased = bool(files.train_options().get("antialiased", False))
    return ModelInfo(model_dir, scene_path, scene_cfg, iteration,
                     files.point_cloud(iteration), device, antialiased)


def _read_ply_fn():
    try:
        from .export import read_ply  # type: ignore[attr-defined]
    except ImportError:
        return None
    return read_ply


def load_model_splats(info: ModelInfo, scene: Any) -> dict[str, torch.Tensor]:
    """The model's raw splats in the SCENE frame of ``scene`` (normalised as trained).

    The PLY holds them in the source frame (``x_source``); the scene's similarity
    ``x_scene = s x_source + b`` is applied to the means and ``log s`` added to the log scales.
    Falls back to ``ckpts/step_N.pt`` (already in the scene frame) without a PLY reader.

    Returns:
        ``means [N, 3]``, ``scales [N, 3]`` (log), ``quats [N, 4]``, ``opacities [N]``
        (logit), ``sh0 [N, 1, 3]``, ``shN [N, K-1, 3]`` float32 CPU tensors.
    """
    read_ply = _read_ply_fn()
    if read_ply is not None and info.ply is not None and info.ply.is_file():
        sp = read_ply(info.ply)
        get = (lambda k: sp[k]) if isinstance(sp, dict) else (lambda k: getattr(sp, k))
        means = np.asarray(get("means"), np.float64).reshape(-1, 3)
        n = len(means)
        T = np.asarray(scene.transform, np.float64)
        s = scene.scale
        try:
            shN = get("shN")
        except (KeyError, AttributeError):
            shN = None
        shN = np.zeros((n, 0, 3), np.float32) if shN is None else np.asarray(shN, np.float32)
        out = {
            "means": (means @ T[:3, :3].T + T[:3, 3]).astype(np.float32),
            "scales": (np.asarray(get("scales"), np.float64).reshape(n, 3) + math.log(s)
                       ).astype(np.float32),
            "quats": np.asarray(get("quats"), np.float32).reshape(n, 4),
            "opacities": np.asarray(get("opacities"), np.float32).reshape(n),
            "sh0": np.asarray(get("sh0"), np.float32).reshape(n, 1, 3),
            "shN": shN.reshape(n, -1, 3),
        }
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
    ck = checkpoint_path(info.model_dir, info.iteration)
    if not ck.is_file():
        raise InputError(info.ply, "no PLY reader (splatforge.export.read_ply) available and no "
                                   f"checkpoint {ck} to read the splats from")
    data = load_checkpoint(ck, map_location="cpu")
    return {k: v.detach().float().cpu().contiguous() for k, v in data["splats"].items()}


def sh_degree_of(params: dict[str, torch.Tensor]) -> int:
    """SH degree held by ``shN [N, K-1, 3]``: ``sqrt(K) - 1``."""
    k = params["shN"].shape[1] + 1
    return int(round(math.sqrt(k))) - 1


def _device_backend(device: str) -> tuple[torch.device, str]:
    dev = resolve_device(device)
    return dev, resolve_backend("auto", dev)


def open_model(model_dir: str | Path, iteration: int | None = None,
               events: EventCallback | None = None, device: str = "auto",
               scene: Any = None
               ) -> tuple[ModelInfo, Any, dict[str, torch.Tensor], torch.device, str]:
    """Read a model folder for rendering.

    ``scene``: the dataset as loaded for training (``splatforge reconstruct`` passes the one
    it trained on); None reads it again from the model's ``train_config.json``.

    Returns:
        ``(info, scene, params, device, backend)``: the scene read as it was for training
        (normalised), the splats in its frame on ``device``, and the rasterizer backend
        (``gsplat`` on CUDA, ``torch`` elsewhere).
    """
    info = read_model_info(model_dir, iteration)
    if scene is None:
        scene = load_scene(info.scene_path, info.scene_config, events)
    dev, backend = _device_backend(device)
    params = {k: v.to(dev) for k, v in load_model_splats(info, scene).items()}
    return info, scene, params, dev, backend


def _side_by_side(gt: np.ndarray, render: np.ndarray) -> np.ndarray:
    """[H, 3W, 3] uint8: ground truth | render | mean absolute error x 4 (grey)."""
    err = np.abs(gt.astype(np.float32) - render.astype(np.float32)).mean(-1, keepdims=True)
    err = np.clip(err * 4.0, 0, 255).astype(np.uint8).repeat(3, -1)
    return np.concatenate([gt, render, err], axis=1)


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


@torch.no_grad()
def run_eval(model_dir: str | Path, events: EventCallback | None = None, *,
             iteration: int | None = None, lpips_weights: str | Path | None = None,
             device: str = "auto", save_images: bool = True,
             scene: Any = None, masked: bool = False) -> dict[str, Any]:
    """Evaluate ``model_dir`` on its held-out views (see the module docstring for outputs).

    Args:
        model_dir: a model folder (``point_cloud/iteration_N``, ``train_config.json``).
        events: progress callback (stage ``eval``, counter "views").
        iteration: the saved step to evaluate (default: the latest).
        lpips_weights: local LPIPS weights (see :class:`splatforge.metrics.LPIPS` for the
            format); without them LPIPS is skipped and said so.
        device: ``auto`` | ``cpu`` | ``cuda[:N]`` | ``mps``.
        save_images: write the side-by-side PNGs.
        scene: the dataset as loaded for training (not read again); None reads it.
        masked: score only the pixels inside each view's mask where the dataset has masks
            (``TrainConfig.eval_masked``; see :func:`splatforge.train.evaluate.evaluate_splats`).

    Returns:
        the ``eval`` record merged into ``metrics.json``: ``iteration``, ``psnr`` (dB),
        ``ssim``, ``lpips`` (mean, or None without weights), ``lpips_skipped`` (the reason, or
        None when computed), ``num_images``, ``images`` (per view ``name``, ``psnr``, ``ssim``
        and ``lpips`` with weights), ``seconds``.

    Raises:
        InputError: see :func:`read_model_info`; a missing or malformed LPIPS weights file.
    """
    import time


    # A bad weights file fails before any scene loading.
    lp_model = LPIPS.from_file(lpips_weights) if lpips_weights else None
    rep = StageReporter("eval", events)
    t0 = time.monotonic()
    model_dir = Path(model_dir)
    rep.started(f"evaluating {model_dir}")
    info, scene, params, dev, backend = open_model(model_dir, iteration, events, device, scene)
    sh = sh_degree_of(params)
    if lp_model is not None:
        lp_model = lp_model.to(dev)
    idx = list(scene.test_indices)
    if not idx:
        rep.warning("the dataset has no held-out views (test_every 0): nothing to evaluate")
    out_dir = ModelDir(model_dir).eval_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    masks = None
    if masked:
        mc = MaskCache(scene, dev)
        if mc.has_masks():
            masks = mc.keep
    rep.start_steps("views", len(idx))

    def on_view(k: int, row: dict[str, Any], r: torch.Tensor, gt: torch.Tensor) -> None:
        if lp_model is not None:
            row["lpips"] = float(lp_model(r, gt))
        if save_images:
            gt_u8 = (gt.cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
            r_u8 = (r.cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
            stem = Path(row["name"]).with_suffix("").as_posix().replace("/", "_")
            _save_png(out_dir / f"{stem}.png", _side_by_side(gt_u8, r_u8))
        rep.step(k, psnr=row["psnr"], ssim=row["ssim"])

    ev = evaluate_splats(params, scene, idx, sh, backend, antialiased=info.antialiased,
                         masks=masks, on_view=on_view)
    rows = ev["images"]
    n = len(rows)
    record = {
        "iteration": info.iteration,
        "psnr": ev["psnr"],
        "ssim": ev["ssim"],
        "cc_psnr": ev["cc_psnr"],
        "cc_ssim": ev["cc_ssim"],
        "masked": ev["masked"],
        "lpips": (sum(r["lpips"] for r in rows) / n if n and lp_model is not None
                  else None),
        "lpips_skipped": None if lp_model is not None else LPIPS_SKIPPED,
        "num_images": n,
        "backend": backend,
        "images": rows,
        "seconds": round(time.monotonic() - t0, 3),
    }
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["name", "psnr", "ssim", "cc_psnr", "cc_ssim"]
               + (["lpips"] if lp_model is not None else []))
    for r in rows:
        w.writerow([r["name"], f"{r['psnr']:.4f}", f"{r['ssim']:.6f}", f"{r['cc_psnr']:.4f}",
                    f"{r['cc_ssim']:.6f}"]
                   + ([f"{r['lpips']:.6f}"] if lp_model is not None else []))
    atomic_write_text(out_dir / "metrics.csv", buf.getvalue())
    mpath = ModelDir(model_dir).metrics
    metrics: dict[str, Any] = {}
    if mpath.is_file():
        try:
            metrics = json.loads(mpath.read_text())
        except json.JSONDecodeError:
            metrics = {}
    metrics["eval"] = record
    for key in ("psnr", "ssim", "lpips", "lpips_skipped"):
        metrics[key] = record[key]
    if "test" in metrics and metrics["test"] is None:
        # the trainer left the held-out scores to this stage (reconstruct): they are these
        metrics["test"] = held_out_record(ev)
    atomic_write_text(mpath, json.dumps(metrics, indent=2) + "\n")
    if lp_model is None:
        rep.info(f"LPIPS skipped: {LPIPS_SKIPPED}")
    rep.finished(f"{n} held-out views" + (f": PSNR {record['psnr']:.2f} dB, SSIM "
                                          f"{record['ssim']:.4f}" if n else "")
                 + (f", LPIPS {record['lpips']:.4f}" if record["lpips"] is not None else ""),
                 psnr=record["psnr"], ssim=record["ssim"], lpips=record["lpips"],
                 num_images=n)
    return record
