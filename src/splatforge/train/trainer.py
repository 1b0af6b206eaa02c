"""The 3DGS trainer: ``run_train(config, scene, model_dir, events) -> TrainResult``.

The recipe is Kerbl et al. 2023, "3D Gaussian Splatting for Real-Time Radiance Field
Rendering" (INRIA ``train.py`` and ``arguments/__init__.py``), with densification by gsplat's
``MCMCStrategy`` (Kheradmand et al. 2024; the default, with a Gaussian budget, see
``TrainConfig.cap_max``) or ``DefaultStrategy`` (INRIA's clone/split/prune/opacity-reset), used
as gsplat 1.5.3 ``examples/simple_trainer.py`` uses them:

* one image per step, drawn epoch by epoch in a seeded random order;
* loss ``(1 - 0.2) L1 + 0.2 (1 - SSIM)`` (+ MCMC opacity/scale regularisers);
* one Adam per parameter (eps 1e-15): means ``1.6e-4 -> 1.6e-6`` times the scene extent with
  INRIA's log-linear decay over the run, sh0 ``2.5e-3``, shN ``2.5e-3 / 20``, opacities
  ``5e-2``, scales ``5e-3``, quats ``1e-3``;
* SH degree raised every 1000 steps up to ``sh_degree``;
* steps are 1-based as INRIA's iterations: step ``k`` renders with SH degree
  ``min(k // 1000, sh_degree)``, uses the means learning rate ``lr(k)``, and the strategies
  see ``step=k`` (refine when ``densify_from_iter < k < densify_until_iter`` and
  ``k % densification_interval == 0``, opacity reset when ``k % opacity_reset_interval == 0``).

Model folder files the trainer writes (names: :class:`splatforge.export.model_dir.ModelDir`)::

    <model_dir>/ckpts/step_N.pt                           checkpoints (save steps, Ctrl-C)
    <model_dir>/point_cloud/iteration_N/point_cloud.ply   splats in the source frame (INRIA)
    <model_dir>/train_log.jsonl                           one JSON object per logged step
    <model_dir>/train_config.json                         the configuration used
    <model_dir>/metrics.json                              held-out PSNR/SSIM at the end
    <model_dir>/cameras.json, cfg_args, input.ply         INRIA companions (refined poses
                                                          with pose_opt)
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import SceneConfig, TrainConfig
from ..errors import ConfigError, InputError
from ..events import Event, EventCallback, StageReporter
from ..export.model_dir import ModelDir
from ..metrics import psnr as psnr_fn
from ..splats import PARAM_NAMES, init_splats, splats_to_source_frame
from ..util import atomic_write_text
from .checkpoint import (
    capture_rng_state,
    checkpoint_path,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .data import ImageCache, ViewSampler
from .evaluate import camera_tensors, evaluate_splats, render_view
from .losses import GraphedPhotometricLoss, mcmc_regularization, photometric_loss
from .optim import fused_adam_step, supports_fused_adam_step
from .real_capture import CaptureExtras
from .res_schedule import ResolutionSchedule, downscale_view
from .schedule import expon_lr, sh_degree_at
from .selective_adam import SelectiveAdamStepper, visible_gaussians
from .triton_loss import fused_photometric_loss, triton_loss_available

STAGE = "train"
ADAM_EPS = 1e-15  # INRIA scene/gaussian_model.py training_setup

#: Config fields that change the shape of the parameters or the optimiser: a checkpoint made
#: with other values cannot be resumed.
_INCOMPATIBLE = ("sh_degree", "strategy", "appearance", "pose_opt")

#: Config fields that do not change the optimisation (no warning when they differ on resume).
_NO_EFFECT = ("log_every", "eval_every", "image_cache_mb", "save_steps", "fused_adam",
              "images_on_gpu", "fused_ssim", "fused_mcmc_noise", "graph_loss",
              "triton_loss")

#: ``step_hook(trainer, step)``: called after every completed step (parameters consistent, in
#: the training thread). It may block (the loop really pauses while it does), read
#: ``trainer.params`` (detach before use), or raise ``KeyboardInterrupt`` to stop training with
#: a checkpoint. Used by the live viewer (pause/resume, splat refresh).
StepHook = Callable[["Trainer", int], None]

#: The numbers of a logged step that progress events carry (train_log.jsonl has more).
PROGRESS_KEYS = ("loss", "psnr", "num_gaussians", "steps_per_second")

#: Parameters whose gradients gsplat makes sparse with ``sparse_grad`` (optimised with
#: ``torch.optim.SparseAdam``: only Gaussians with a gradient update their moments).
SPARSE_GRAD_PARAMS = ("means", "quats", "scales")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a KeyboardInterrupt from an events callback) stopped training.

    Attributes:
        step: the last completed step.
        checkpoint: the checkpoint written at ``step`` (None when none could be written).
    """

    def __init__(self, step: int, checkpoint: Path | None):
        self.step = step
        self.checkpoint = checkpoint
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        super().__init__(f"training interrupted after step {step}{where}")


@dataclass
class TrainResult:
    """What :func:`run_train` produced.

    Attributes:
        model_dir: the model folder.
        step: steps done (== ``config.max_steps`` after a complete run).
        num_gaussians: Gaussians at the end.
        train_seconds: optimisation wall time over all sessions (resumes add up), seconds;
            excludes saving and evaluation.
        steps_per_second: mean speed of this session's steps.
        backend, device: the rasterizer backend and torch device used.
        init: ``sfm``, ``random`` or ``checkpoint``.
        resumed_from: the checkpoint this session started from, if any.
        ply_paths: step -> ``point_cloud/iteration_N/point_cloud.ply`` written in this session.
        checkpoints: step -> checkpoint written in this session.
        metrics: the content of ``metrics.json``.
    """

    model_dir: Path
    step: int
    num_gaussians: int
    train_seconds: float
    steps_per_second: float
    backend: str
    device: str
    init: str
    resumed_from: Path | None = None
    ply_paths: dict[int, Path] = field(default_factory=dict)
    checkpoints: dict[int, Path] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return ModelDir(self.model_dir).train_log

    @property
    def metrics_path(self) -> Path:
        return ModelDir(self.model_dir).metrics


# --------------------------------------------------------------------------------------------
# Devices, backends, strategies
# --------------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names are checked.

    Raises:
        ConfigError: the device does not exist on this machine.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} requested but CUDA is not available on this "
                              f"machine (torch {torch.__version__}); use device 'cpu' or 'auto'")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name!r} does not exist; this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
        return dev
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError("device: 'mps' requested but Metal is not available here")
        return torch.device("mps")
    return torch.device(name)


def resolve_backend(requested: str, device: torch.device) -> str:
    """The rasterizer backend for ``device`` (:func:`splatforge.raster.select_backend`).

    Raises:
        ConfigError: the backend cannot run on ``device`` (gsplat needs CUDA).
    """
    from ..errors import SplatforgeError
    from ..raster import select_backend

    try:
        return str(select_backend(requested, device))
    except SplatforgeError:
        raise
    except (ValueError, RuntimeError, ImportError) as e:
        raise ConfigError(f"backend: {e}") from None


def _install_cpu_mcmc_ops() -> None:
    """Let gsplat's MCMC relocation and position-noise ops run on non-CUDA tensors
    (:func:`splatforge.raster.mcmc.install_torch_relocation`: CUDA tensors keep gsplat's
    kernels, others use the PyTorch versions)."""
    from ..raster.mcmc import install_torch_relocation

    install_torch_relocation()


def make_strategy(config: TrainConfig, scene_scale: float, num_initial: int | None = None):
    """gsplat strategy for ``config`` and its initial state.

    Args:
        config: the training config (``strategy``, ``cap_max``, refinement window, ...).
        scene_scale: the scene extent (world units; the default strategy's size thresholds).
        num_initial: Gaussians at initialisation, for the automatic MCMC budget
            (:meth:`TrainConfig.resolved_cap_max`; default ``config.init_num_pts``).

    Returns:
        (strategy, state).
    """
    from .strategies import InriaDefaultStrategy, SplatforgeMCMCStrategy

    if config.strategy == "mcmc":
        n0 = config.init_num_pts if num_initial is None else num_initial
        strat = SplatforgeMCMCStrategy(
            cap_max=config.resolved_cap_max(n0), refine_start_iter=config.densify_from_iter,
            refine_stop_iter=config.densify_until_iter,
            refine_every=config.densification_interval, min_opacity=0.005,
            fused_noise=config.fused_mcmc_noise,
            noise_stop_iter=None if config.noise_after_refine else config.densify_until_iter,
            prune_steps=tuple(config.resolved_prune_steps()),
            prune_ratio=config.prune_significance)
        return strat, strat.initialize_state()
    strat = InriaDefaultStrategy(
        prune_opa=0.005, grow_grad2d=config.grow_grad2d(), grow_scale3d=0.01,
        prune_scale3d=0.1, refine_start_iter=config.densify_from_iter,
        refine_stop_iter=config.densify_until_iter, reset_every=config.opacity_reset_interval,
        refine_every=config.densification_interval, absgrad=config.absgrad,
        refine_scale2d_stop_iter=config.densify_until_iter if config.prune_scale2d > 0 else 0,
        prune_scale2d=config.prune_scale2d or 0.15,
        grow_scale2d=(config.prune_scale2d or 0.15) / 3.0)
    return strat, strat.initialize_state(scene_scale=scene_scale)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class _SigintFlag:
    requested = False


@contextmanager
def _deferred_sigint(flag: _SigintFlag) -> Iterator[None]:
    """In the main thread, make the first Ctrl-C set ``flag`` (the loop stops at the next step
    boundary, where the state is consistent); a second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.requested:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag.requested = True

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not allowed here (embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _scene_fingerprint(scene, train_indices: list[int]) -> dict[str, Any]:
    names = "\n".join(im.name for im in scene.images)
    return {"num_images": len(scene.images),
            "names_sha1": hashlib.sha1(names.encode()).hexdigest(),
            "train_indices": list(train_indices),
            "extent": float(scene.extent())}


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------

class Trainer:
    """One training run over a scene into a model folder (see :func:`run_train`)."""

    #: the photometric loss as CUDA graphs (set in :meth:`run` when ``graph_loss`` applies)
    loss_fn: GraphedPhotometricLoss | None = None
    #: the photometric loss by :func:`~splatforge.train.triton_loss.fused_photometric_loss`
    triton_loss: bool = False
    #: ``(width, height)`` of the latest training render (the resolution schedule lowers it)
    render_size: tuple[int, int] | None = None

    def __init__(self, config: TrainConfig, scene: Any, model_dir: str | Path,
                 events: EventCallback | None = None, scene_config: SceneConfig | None = None,
                 step_hook: StepHook | None = None,
                 should_stop: Callable[[], bool] | None = None):
        self.config = config
        self.step_hook = step_hook
        self.should_stop = should_stop
        self.scene_config = scene_config or SceneConfig()
        self.model_dir = Path(model_dir)
        self.files = ModelDir(self.model_dir)
        self.rep = StageReporter(STAGE, events)
        self._scene_arg = scene
        self.scene = None

    # ---- setup -----------------------------------------------------------------------------
    def _load_scene(self):
        from ..scene import Scene, load_scene

        if isinstance(self._scene_arg, Scene):
            return self._scene_arg
        return load_scene(self._scene_arg, self.scene_config, self.rep.events)

    def _resume_checkpoint(self, resume: bool | str | Path | None) -> Path | None:
        existing = list_checkpoints(self.model_dir)
        if resume is None or resume is False:
            if existing:
                raise InputError(
                    self.model_dir,
                    f"already holds training checkpoints (latest: step {existing[-1][0]})",
                    "resume with --resume (run_train(..., resume=True)), or train into an "
                    "empty folder")
            return None
        if resume is True:
            latest = find_latest_checkpoint(self.model_dir)
            if latest is None:
                self.rep.info(f"no checkpoint in {self.files.checkpoints_dir}; starting from "
                              "scratch")
            return latest
        path = Path(resume)
        if path.is_dir():
            latest = find_latest_checkpoint(path)
            if latest is None:
                raise InputError(path, "no checkpoint (ckpts/step_N.pt) in this folder")
            return latest
        if not path.is_file():
            raise InputError(path, "checkpoint not found")
        return path

    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        lrs = {"means": cfg.means_lr * self.scene_scale, "scales": cfg.scales_lr,
               "quats": cfg.quats_lr, "opacities": cfg.opacities_lr, "sh0": cfg.sh0_lr,
               "shN": cfg.shN_lr}
        # gsplat's sparse_grad makes only the means/quats/scales gradients sparse (COO); the
        # torch backend ignores it (dense gradients everywhere).
        sparse = set(SPARSE_GRAD_PARAMS) if self.use_sparse_grad else set()
        # fused Adam: one kernel per step instead of a dozen per parameter (same update rule)
        fused = {"fused": True} if cfg.fused_adam and self.device.type == "cuda" else {}
        return {name: (torch.optim.SparseAdam(
                    [{"params": [self.params[name]], "lr": lrs[name], "name": name}],
                    eps=ADAM_EPS, betas=(0.9, 0.999)) if name in sparse else torch.optim.Adam(
                    [{"params": [self.params[name]], "lr": lrs[name], "name": name}],
                    eps=ADAM_EPS, betas=(0.9, 0.999), **fused))
                for name in PARAM_NAMES}

    def _setup(self, ckpt_path: Path | None) -> None:
        cfg = self.config
        rep = self.rep
        self.device = resolve_device(cfg.device)
        self.backend = resolve_backend(cfg.backend, self.device)
        scene = self.scene = self._load_scene()
        if not scene.train_indices:
            raise InputError(scene.root, "the scene has no training images")
        self.scene_scale = float(scene.extent())
        for note in cfg.notes():
            rep.info(f"note: {note}")
        self.save_steps = cfg.resolved_save_steps()
        self.use_sparse_grad = cfg.sparse_grad and self.backend == "gsplat"
        if cfg.sparse_grad and not self.use_sparse_grad:
            rep.warning("sparse_grad is a gsplat (CUDA) feature; the torch backend computes "
                        "dense gradients, so dense Adam is used")
        if cfg.strategy == "mcmc":
            _install_cpu_mcmc_ops()

        ckpt = None
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path, map_location="cpu")
            self._check_compatible(ckpt, ckpt_path)
        seed_everything(cfg.seed)
        if ckpt is None:
            init = init_splats(scene, cfg.sh_degree, cfg.init_type, self.scene_config.min_points,
                               cfg.init_num_pts, cfg.init_extent, cfg.initial_opacity(),
                               cfg.initial_scale(), seed=cfg.seed, device=self.device)
            self.init_method = init.method
            rep.info(f"initialised {len(init.params['means'])} Gaussians from {init.reason}",
                     init=init.method, num_gaussians=len(init.params["means"]))
            tensors = init.params
            self.num_initial = len(init.params["means"])
            self.start_step = 0
        else:
            self.init_method = "checkpoint"
            tensors = ckpt["splats"]
            self.num_initial = int(ckpt.get("num_initial") or len(tensors["means"]))
            self.start_step = int(ckpt["step"])
        self.params = {name: torch.nn.Parameter(tensors[name].to(self.device).contiguous())
                       for name in PARAM_NAMES}
        self.optimizers = self._make_optimizers()
        # appearance model, pose refinement, masks (train/real_capture.py)
        self.extras = CaptureExtras(cfg, scene, self.device)
        self.extras.add_gaussian_params(self.params, self.optimizers,
                                        ckpt["splats"] if ckpt is not None else None, cfg.seed)
        self.fast_adam = all(supports_fused_adam_step(o) for o in self.optimizers.values())
        self.strategy, self.strategy_state = make_strategy(cfg, self.scene_scale,
                                                           self.num_initial)
        if cfg.strategy == "mcmc":
            rep.info(f"MCMC budget: at most {self.strategy.cap_max} Gaussians",
                     cap_max=self.strategy.cap_max)
        self.strategy.check_sanity(self.params, self.optimizers)
        self._setup_speed_levers()
        if (cfg.prune_unseen or cfg.camera_clearance > 0) and cfg.strategy == "default":
            from .visibility import (camera_centres, camera_clearance, camera_stack,
                                     in_any_frustum, near_cameras)

            stack = camera_stack(scene, scene.train_indices, self.device)
            margin = cfg.unseen_margin
            centres = camera_centres(stack[0])
            pts = torch.as_tensor(np.asarray(scene.points, dtype=np.float32),
                                  device=self.device).reshape(-1, 3)
            radii = camera_clearance(pts, *stack, cfg.camera_clearance)
            prune_unseen = cfg.prune_unseen

            def seen_fn(means: torch.Tensor) -> torch.Tensor:
                ok = (in_any_frustum(means, *stack, margin=margin) if prune_unseen
                      else torch.ones(len(means), dtype=torch.bool, device=means.device))
                if cfg.camera_clearance > 0:
                    ok &= ~near_cameras(means, centres, radii)
                return ok

            self.strategy.seen_fn = seen_fn
        self.sampler = ViewSampler(scene.train_indices, cfg.seed)
        self.bg_generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.train_seconds = 0.0
        if ckpt is not None:
            for name, opt in self.optimizers.items():
                opt.load_state_dict(ckpt["optimizers"][name])
            st = ckpt["strategy_state"]
            for k, v in st.items():
                self.strategy_state[k] = v.to(self.device) if isinstance(v, torch.Tensor) else v
            if hasattr(self.strategy, "counts") and ckpt.get("strategy_counts"):
                self.strategy.counts.update(ckpt["strategy_counts"])
            if hasattr(self.strategy, "load_budget_state"):  # the budget after pruning
                self.strategy.load_budget_state(ckpt.get("strategy_budget"))
            self.sampler.load_state_dict(ckpt["sampler"])
            self.extras.load_state_dict(ckpt.get("extras"))
            self.bg_generator.set_state(ckpt["background_rng"])
            self.train_seconds = float(ckpt.get("train_seconds", 0.0))
            restore_rng_state(ckpt["rng"])
        self.step = self.start_step
        budget = int(cfg.image_cache_mb * 1024 * 1024)
        self.images = ImageCache(scene, scene.train_indices, budget, self.device,
                                 gpu_resident={"auto": None, "yes": True,
                                               "no": False}[cfg.images_on_gpu])
        self.cameras = {i: camera_tensors(scene, i, self.device) for i in scene.train_indices}
        self.background = torch.tensor(scene.background, dtype=torch.float32, device=self.device)

    def _setup_speed_levers(self) -> None:
        """Issue 16's opt-in levers: the resolution schedule, selective Adam / bfloat16
        moments, significance pruning (see their modules)."""
        cfg = self.config
        self.res_schedule = (ResolutionSchedule(
            cfg.res_schedule_start, cfg.res_schedule_levels,
            max(1, int(round(cfg.res_schedule_until * cfg.max_steps))))
            if cfg.res_schedule else None)
        self.adam_stepper = None
        if (cfg.selective_adam or cfg.adam_moments_dtype != "float32") \
                and not self.use_sparse_grad:
            self.adam_stepper = SelectiveAdamStepper(getattr(torch, cfg.adam_moments_dtype),
                                                     seed=cfg.seed)
        if cfg.prune_significance > 0 and cfg.strategy == "mcmc":
            from .significance import blend_weight_significance

            def score_fn(params: dict[str, torch.Tensor]) -> torch.Tensor:
                return blend_weight_significance(params, self.scene, self.scene.train_indices,
                                                 self.backend, self.cameras,
                                                 antialiased=cfg.antialiased)

            self.strategy.score_fn = score_fn

    def _check_compatible(self, ckpt: dict[str, Any], path: Path) -> None:
        cfg = self.config
        old = ckpt.get("config") or {}
        new = cfg.model_dump(mode="json")
        bad = [k for k in _INCOMPATIBLE if k in old and old[k] != new[k]]
        if bad:
            raise ConfigError(f"cannot resume from {path}: it was trained with "
                              + ", ".join(f"{k}={old[k]!r}" for k in bad)
                              + " and this run asks for "
                              + ", ".join(f"{k}={new[k]!r}" for k in bad))
        changed = [k for k in new if k in old and old[k] != new[k] and k not in _NO_EFFECT]
        if changed:
            self.rep.warning("resuming with changed settings (the run will differ from an "
                             "uninterrupted one): "
                             + ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in changed))
        fp_old = ckpt.get("scene") or {}
        fp_new = _scene_fingerprint(self.scene, self.scene.train_indices)
        for key, what in (("names_sha1", "images"), ("train_indices", "training views")):
            if key in fp_old and fp_old[key] != fp_new[key]:
                raise InputError(path, f"was trained on other {what} than this scene has "
                                       f"({self.scene.root})",
                                 "resume with the same dataset and scene options "
                                 "(data_factor, test_every, images)")
        step = int(ckpt["step"])
        if step > cfg.max_steps:
            raise ConfigError(f"max_steps: the checkpoint {path} is at step {step}, beyond "
                              f"max_steps ({cfg.max_steps})")

    # ---- outputs ---------------------------------------------------------------------------
    def _checkpoint_payload(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "splats": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizers": {k: _state_to_cpu(o.state_dict()) for k, o in self.optimizers.items()},
            "strategy_state": {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                               for k, v in self.strategy_state.items()},
            "strategy_counts": dict(getattr(self.strategy, "counts", {}) or {}),
            "strategy_budget": (self.strategy.budget_state()
                                if hasattr(self.strategy, "budget_state") else None),
            "num_initial": self.num_initial,
            "rng": capture_rng_state(),
            "sampler": self.sampler.state_dict(),
            "background_rng": self.bg_generator.get_state(),
            "config": self.config.model_dump(mode="json"),
            "scene": _scene_fingerprint(self.scene, self.scene.train_indices),
            "train_seconds": self.train_seconds,
            "backend": self.backend,
            "extras": self.extras.state_dict(),
        }

    def save_checkpoint(self) -> Path:
        """Write ``ckpts/step_<step>.pt`` for the current step (atomically)."""
        path = save_checkpoint(checkpoint_path(self.model_dir, self.step),
                               self._checkpoint_payload())
        self.checkpoints[self.step] = path
        return path

    def save_ply(self) -> Path:
        """Write ``point_cloud/iteration_<step>/point_cloud.ply`` in the source frame."""
        from ..export.ply import write_ply

        path = self.files.point_cloud(self.step)
        write_ply(path, splats_to_source_frame(self.extras.export_params(self.params),
                                               self.scene))
        self.ply_paths[self.step] = path
        return path

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.files.train_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=False, default=_json_default) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Keep only log records of steps <= ``step`` (a resumed run rewrites the rest)."""
        path = self.files.train_log
        if not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line).get("step", 0)) <= step:
                    keep.append(line)
            except (ValueError, AttributeError):
                continue
        atomic_write_text(path, "".join(k + "\n" for k in keep))

    # ---- one step --------------------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        """Gaussians of the whole model (a hook: the distributed trainer sums its shards)."""
        return len(self.params["means"])

    def _render_train_view(self, idx: int, sh_degree: int, bg: torch.Tensor,
                           viewmat: torch.Tensor, K: torch.Tensor, size: dict[str, int]
                           ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """``(render [1, H, W, 3], alphas [1, H, W, 1], info)`` of training view ``idx`` for
        the loss and the strategy, with the per-image appearance and pose corrections applied
        (train/real_capture.py); ``size`` is ``{}`` or the resolution schedule's
        ``{"width", "height"}``. A hook: the distributed trainer renders across ranks."""
        cfg = self.config
        render, alphas, info = render_view(
            self.extras.render_params(self.params, idx), self.scene, idx, sh_degree,
            self.backend, background=bg, antialiased=cfg.antialiased, packed=cfg.packed,
            viewmat=self.extras.viewmat(viewmat, idx), K=K, absgrad=cfg.absgrad,
            sparse_grad=self.use_sparse_grad, **size)
        return self.extras.post_render(render, idx), alphas, info

    def _train_step(self, k: int) -> dict[str, Any]:
        # record_function ranges name the parts of a step in torch.profiler traces
        # (benchmarks/train_gpu.py --profile); without a profiler they cost ~1 us each
        rf = torch.profiler.record_function
        cfg = self.config
        with rf("sf.data"):
            idx = self.sampler.next()
            nxt = self.sampler.peek()
            if nxt is not None:
                self.images.prefetch(nxt)
            gt_u8 = self.images.get(idx)                          # [H, W, 3] uint8
            sh_degree = sh_degree_at(k, cfg.sh_degree, cfg.sh_degree_interval)
            means_lr = self.scene_scale * expon_lr(k, cfg.means_lr, cfg.means_lr_final,
                                                   cfg.max_steps)
            for group in self.optimizers["means"].param_groups:
                group["lr"] = means_lr
            if cfg.random_background:
                bg = torch.rand(3, generator=self.bg_generator).to(self.device)
            else:
                bg = self.background
            viewmat, K = self.cameras[idx]
            size = {}
            if self.res_schedule is not None:  # coarse-to-fine (res_schedule.py)
                gt_u8, K, w, h = downscale_view(gt_u8, K, self.res_schedule.factor(k))
                size = {"width": w, "height": h}
                if hasattr(self.strategy, "set_budget_fraction"):
                    self.strategy.set_budget_fraction(self.res_schedule.budget_fraction(k))
            self.render_size = (int(gt_u8.shape[1]), int(gt_u8.shape[0]))  # (W, H) rendered
        with rf("sf.render"):
            render, alphas, info = self._render_train_view(idx, sh_degree, bg, viewmat, K, size)
            if cfg.strategy == "default":
                self.strategy.step_pre_backward(self.params, self.optimizers,
                                                self.strategy_state, k, info)
        with rf("sf.loss"):
            render_in, gt_in = self.extras.loss_inputs(render[0], gt_u8, idx)  # masks
            if self.triton_loss:  # five Triton kernels, reading the uint8 image
                loss, l1, ssim_val = fused_photometric_loss(render_in, gt_in, cfg.ssim_lambda)
            else:
                gt = gt_in.float() / 255.0
                if self.loss_fn is not None:  # CUDA graphs of the same loss
                    loss, l1, ssim_val = self.loss_fn(render_in, gt)
                else:
                    loss, l1, ssim_val = photometric_loss(render_in, gt, cfg.ssim_lambda,
                                                          fused_ssim=cfg.fused_ssim)
            reg = mcmc_regularization(self.params, *self.regularization)
            total = loss + reg if reg is not None else loss
            extra = self.extras.loss_terms(alphas, idx)
            if extra is not None:
                total = total + extra
        with rf("sf.backward"):
            total.backward()
        with rf("sf.optimizer"):
            if self.use_sparse_grad:
                # gsplat's sparse_grad gives COO gradients for the projection's inputs, but a
                # dense one still reaches means through the SH view directions (and scales
                # through the MCMC regulariser): SparseAdam takes the rows that have one.
                for name in SPARSE_GRAD_PARAMS:
                    g = self.params[name].grad
                    if g is not None and not g.is_sparse:
                        self.params[name].grad = g.to_sparse(1)
            if self.adam_stepper is not None:  # selective_adam / adam_moments_dtype
                vis = (visible_gaussians(info, len(self.params["means"]))
                       if cfg.selective_adam else None)
                self.adam_stepper(self.optimizers.values(), vis)
            elif self.fast_adam:
                fused_adam_step(self.optimizers.values())
            else:
                for opt in self.optimizers.values():
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            self.extras.step()
        with rf("sf.densify"):
            if cfg.strategy == "default":
                self.strategy.step_post_backward(self.params, self.optimizers,
                                                 self.strategy_state, k, info,
                                                 packed=cfg.packed)
            else:
                self.strategy.step_post_backward(self.params, self.optimizers,
                                                 self.strategy_state, k, info, lr=means_lr)
        return {"render": render.detach(), "gt": gt_u8, "loss": total.detach(),
                "l1": l1.detach(),
                "ssim": ssim_val.detach(), "sh_degree": sh_degree, "means_lr": means_lr,
                "index": idx}

    # ---- the run ---------------------------------------------------------------------------
    def run(self, resume: bool | str | Path | None = None) -> TrainResult:
        cfg = self.config
        rep = self.rep
        rep.started(f"training into {self.model_dir}", model_dir=str(self.model_dir))
        ckpt_path = self._resume_checkpoint(resume)
        self._setup(ckpt_path)
        self.regularization = cfg.regularization()
        # (on a CPU only under Triton's interpreter, which tests use)
        self.triton_loss = (cfg.triton_loss and cfg.ssim_lambda > 0
                            and triton_loss_available(self.device))
        self.loss_fn = (GraphedPhotometricLoss(
                            cfg.ssim_lambda, max_graphs=4 + cfg.res_schedule_levels
                            if cfg.res_schedule else 4)
                        if cfg.graph_loss and cfg.fused_ssim and self.device.type == "cuda"
                        and cfg.ssim_lambda > 0 and not self.triton_loss else None)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints: dict[int, Path] = {}
        self.ply_paths: dict[int, Path] = {}
        if ckpt_path is not None:
            stale = [(s, p) for s, p in list_checkpoints(self.model_dir) if s > self.start_step]
            for _, p in stale:
                p.unlink(missing_ok=True)
            if stale:
                rep.warning(f"removed {len(stale)} checkpoint(s) after step {self.start_step} "
                            f"from an earlier run: "
                            + ", ".join(str(p.name) for _, p in stale))
            self._truncate_log(self.start_step)
            rep.info(f"resuming from {ckpt_path} at step {self.start_step} of {cfg.max_steps}",
                     checkpoint=str(ckpt_path), step=self.start_step)
        else:
            self.files.train_log.unlink(missing_ok=True)
        atomic_write_text(self.files.train_config, json.dumps({
            "train": cfg.model_dump(mode="json"),
            "scene": self.scene_config.model_dump(mode="json"),
            "scene_path": str(self.scene.root), "backend": self.backend,
            "device": str(self.device), "save_steps": self.save_steps}, indent=2) + "\n")
        rep.info(f"{self.num_gaussians} Gaussians, {len(self.scene.train_indices)} "
                 f"training / {len(self.scene.test_indices)} held-out views, backend "
                 f"{self.backend} on {self.device}, scene extent {self.scene_scale:.4g}",
                 backend=self.backend, device=str(self.device))

        flag = _SigintFlag()
        session_steps = 0
        session_time = 0.0
        try:
            with _deferred_sigint(flag):
                session_steps, session_time = self._loop(flag)
        except KeyboardInterrupt:
            path = None
            if self._consistent:
                path = self.checkpoints.get(self.step) or self.save_checkpoint()
            rep.warning(f"interrupted after step {self.step} of {cfg.max_steps}"
                        + (f"; checkpoint {path} (resume with --resume)" if path else ""),
                        step=self.step, checkpoint=str(path) if path else None)
            raise TrainingInterrupted(self.step, path) from None
        finally:
            self.images.close()

        if self.step == cfg.max_steps and self.step not in self.ply_paths:
            if not self.files.point_cloud(self.step).is_file():
                self.save_ply()
        speed = session_steps / session_time if session_time > 0 else 0.0
        metrics = self._final_metrics(speed)
        # INRIA model-folder companions, source frame; only the trainer writes them, since
        # only it holds the refined poses (pose_opt)
        self.files.write_inria_files(self.extras.refined_scene(),
                                     source_path=self.scene.root,
                                     sh_degree=cfg.sh_degree,
                                     data_factor=self.scene_config.data_factor,
                                     device=str(self.device))
        self.extras.write_outputs(self.model_dir)  # sparse_refined/ with pose_opt
        rep.finished(
            f"{self.step} steps, {metrics['num_gaussians']} Gaussians"
            + (f", test PSNR {metrics['test']['psnr']:.2f} dB" if metrics["test"]["psnr"]
               is not None else ""),
            step=self.step, num_gaussians=metrics["num_gaussians"],
            train_seconds=round(self.train_seconds, 3), psnr=metrics["test"]["psnr"],
            ssim=metrics["test"]["ssim"])
        return TrainResult(
            model_dir=self.model_dir, step=self.step,
            num_gaussians=self.num_gaussians, train_seconds=self.train_seconds,
            steps_per_second=speed, backend=self.backend, device=str(self.device),
            init=self.init_method, resumed_from=ckpt_path, ply_paths=dict(self.ply_paths),
            checkpoints=dict(self.checkpoints), metrics=metrics)

    def _loop(self, flag: _SigintFlag) -> tuple[int, float]:
        cfg = self.config
        n = cfg.max_steps
        save = set(self.save_steps)
        self._consistent = True
        self.rep.start_steps("training", n)
        t_session = time.monotonic()
        session_steps = 0
        session_time = 0.0
        window_time = 0.0
        window_steps = 0
        last_event = 0.0
        for k in range(self.start_step + 1, n + 1):
            t0 = time.perf_counter()
            self._consistent = False
            out = self._train_step(k)
            self.step = k
            self._consistent = True
            logged = k % cfg.log_every == 0 or k == n
            if logged and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            session_time += dt
            session_steps += 1
            window_time += dt
            window_steps += 1
            data: dict[str, Any] = {}
            if logged:
                sps = window_steps / max(window_time, 1e-9)
                window_time, window_steps = 0.0, 0
                with torch.no_grad():
                    p = float(psnr_fn(out["render"][0].clamp(0, 1), out["gt"].float() / 255.0))
                data = {"loss": float(out["loss"]), "l1": float(out["l1"]),
                        "ssim": float(out["ssim"]), "psnr": p,
                        "num_gaussians": self.num_gaussians,
                        "sh_degree": out["sh_degree"], "means_lr": out["means_lr"],
                        "steps_per_second": sps}
            done = k - self.start_step
            elapsed = time.monotonic() - t_session
            eta = elapsed / done * (n - k) if done else None
            if logged:
                rec = {"step": k, "max_steps": n, **data, "eta_s": eta,
                       "train_seconds": self.train_seconds, "time": time.time()}
                counts = getattr(self.strategy, "counts", None)
                if counts:
                    rec["densification"] = dict(counts)
                self._log(rec)
            if k in save:
                self.save_ply()
                self.save_checkpoint()
            if cfg.eval_every and k % cfg.eval_every == 0 and k != n and self.scene.test_indices:
                ev = self._evaluate()
                self._log({"step": k, "kind": "eval", "psnr": ev["psnr"], "ssim": ev["ssim"],
                           "num_images": ev["num_images"], "time": time.time()})
                self.rep.info(f"step {k}: held-out PSNR {ev['psnr']:.2f} dB, "
                              f"SSIM {ev['ssim']:.4f}", step=k, psnr=ev["psnr"],
                              ssim=ev["ssim"])
            wall = time.monotonic()
            if logged or k == self.start_step + 1 or wall - last_event >= 1.0:
                last_event = wall
                if not data:
                    data = {"num_gaussians": self.num_gaussians}
                shown = {key: data[key] for key in PROGRESS_KEYS if key in data}
                self.rep.events(Event("progress", STAGE, "training", step=k, total=n,
                                      eta_s=eta, data=shown))
            if self.step_hook is not None:
                self.step_hook(self, k)
            if flag.requested or (self.should_stop is not None and self.should_stop()):
                raise KeyboardInterrupt
        return session_steps, session_time

    def _evaluate(self) -> dict[str, Any]:
        sh = sh_degree_at(self.step, self.config.sh_degree, self.config.sh_degree_interval)
        params = self.extras.export_params(self.params)  # mean appearance baked in
        return evaluate_splats(params, self.scene, self.scene.test_indices, sh, self.backend,
                               antialiased=self.config.antialiased,
                               masks=self.extras.mask_fn() if self.config.eval_masked else None)

    def _final_metrics(self, speed: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        ev = self._evaluate()
        metrics = {
            "step": self.step,
            "max_steps": self.config.max_steps,
            "num_gaussians": self.num_gaussians,
            "train_seconds": self.train_seconds,
            "steps_per_second": speed,
            "test": {"psnr": ev["psnr"], "ssim": ev["ssim"], "cc_psnr": ev["cc_psnr"],
                     "cc_ssim": ev["cc_ssim"], "masked": ev["masked"],
                     "num_images": ev["num_images"], "images": ev["images"]},
            "appearance": self.config.appearance,
            "pose_opt": self.config.pose_opt,
            "eval_seconds": time.perf_counter() - t0,
            "backend": self.backend,
            "device": str(self.device),
            "strategy": self.config.strategy,
            "init": self.init_method,
            "image_cache": {"gpu_resident": self.images.gpu_resident,
                            "decodes": self.images.decodes,
                            "train_image_bytes": self.images.total_bytes},
        }
        if ev["num_images"]:
            self._log({"step": self.step, "kind": "eval", "psnr": ev["psnr"], "ssim": ev["ssim"],
                       "num_images": ev["num_images"], "time": time.time()})
        atomic_write_text(self.files.metrics,
                          json.dumps(metrics, indent=2, default=_json_default) + "\n")
        return metrics


def _state_to_cpu(sd: dict[str, Any]) -> dict[str, Any]:
    state = {k: {kk: (vv.detach().cpu() if isinstance(vv, torch.Tensor) else vv)
                 for kk, vv in v.items()} for k, v in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
