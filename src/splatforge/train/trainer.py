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
import time
from collections.abc import Callable
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
from ..splats import splats_to_source_frame
from ..util import atomic_write_text, sigint_handler
from .checkpoint import (
    checkpoint_path,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .data import ImageCache
from .evaluate import camera_tensors, evaluate_splats, held_out_record, render_view
from .losses import GraphedPhotometricLoss, mcmc_regularization, photometric_loss
from .optim import fused_adam_step, supports_fused_adam_step
from .real_capture import CaptureExtras
from .res_schedule import ResolutionSchedule, downscale_view
from .schedule import expon_lr, sh_degree_at
from .selective_adam import SelectiveAdamStepper, visible_gaussians
from .state import SPARSE_GRAD_PARAMS, TrainState, build_train_state
from .strategies import TrainStrategy
from .triton_loss import fused_photometric_loss, triton_loss_available

STAGE = "train"

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


@dataclass
class TrainSession:
    """What a :class:`Trainer` derives from the config and the scene for one session (never
    saved; the state is :class:`~splatforge.train.state.TrainState`).

    Attributes:
        device, backend: torch device and rasterizer backend.
        scene: the loaded :class:`~splatforge.scene.Scene`; scene_scale its extent (world
            units).
        save_steps: steps whose PLY and checkpoint are written.
        use_sparse_grad: gsplat sparse gradients in use.
        cameras: training view -> ``(viewmat [4, 4], K [3, 3])`` on ``device``.
        background: ``[3]`` background colour in [0, 1].
        regularization: ``(opacity_reg, scale_reg)`` loss weights.
        start_step: the step this session started from.
        fast_adam: every optimiser can take the one-call fused Adam step.
        res_schedule: the coarse-to-fine resolution schedule, or None.
        adam_stepper: selective Adam / low-precision moments, or None.
        images: the decoded training images of this trainer's views.
        triton_loss: the photometric loss runs as Triton kernels.
        loss_fn: the photometric loss as CUDA graphs, or None.
    """

    device: torch.device
    backend: str
    scene: Any
    scene_scale: float
    save_steps: list[int]
    use_sparse_grad: bool
    cameras: dict[int, tuple[torch.Tensor, torch.Tensor]]
    background: torch.Tensor
    regularization: tuple[float, float]
    start_step: int = 0
    fast_adam: bool = False
    res_schedule: ResolutionSchedule | None = None
    adam_stepper: SelectiveAdamStepper | None = None
    images: ImageCache | None = None
    triton_loss: bool = False
    loss_fn: GraphedPhotometricLoss | None = None


# --------------------------------------------------------------------------------------------
# Devices, backends
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


class _SigintFlag:
    requested = False


def _deferred_sigint(flag: _SigintFlag):
    """In the main thread, make the first Ctrl-C set ``flag`` (the loop stops at the next step
    boundary, where the state is consistent); a second Ctrl-C interrupts at once."""

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    return sigint_handler(handler)


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
    """One training run over a scene into a model folder (see :func:`run_train`).

    The mutable training state is one :class:`~splatforge.train.state.TrainState`
    (:attr:`state`, built by :meth:`setup` through
    :func:`~splatforge.train.state.build_train_state`, saved and restored by checkpoints);
    the rest is derived from the config and the scene each session.

    Hook points (what :class:`~splatforge.train.distributed.DistributedTrainer` overrides;
    the loop calls nothing else of a subclass):

    * :meth:`check_setup`: refuse settings this trainer cannot run (after the scene loads);
    * :meth:`train_views`: the training views this trainer draws from;
    * :meth:`after_setup`: adjust the freshly built state (shard it, seed own streams);
    * :meth:`render_train_view`: render one training view for the loss and the strategy;
    * :meth:`after_step`: after each optimisation step (exchange sizes, rebalance);
    * :attr:`num_gaussians`: Gaussians of the whole model;
    * :meth:`full_params`: the whole model's parameters for outputs (None: not this
      process's to write), :meth:`checkpoint_payload`, :meth:`share` (a value computed by
      the writing process, for all) and :meth:`sync_point` (wait for the others).
    """

    #: seeds the view order and background generator (``seed + stream``); the rank
    stream: int = 0
    #: restore the checkpoint's view order and background generator on resume
    restore_streams: bool = True

    def __init__(self, config: TrainConfig, scene: Any, model_dir: str | Path,
                 events: EventCallback | None = None, scene_config: SceneConfig | None = None,
                 step_hook: StepHook | None = None,
                 should_stop: Callable[[], bool] | None = None, *,
                 score_held_out: bool = True):
        self.config = config
        self.step_hook = step_hook
        self.should_stop = should_stop
        #: score the held-out views at the end (False: a later stage scores them, as
        #: ``reconstruct``'s eval stage does; ``metrics.json``'s ``test`` is then None)
        self.score_held_out = score_held_out
        self.scene_config = scene_config or SceneConfig()
        self.model_dir = Path(model_dir)
        self.files = ModelDir(self.model_dir)
        self.rep = StageReporter(STAGE, events)
        self._scene_arg = scene
        #: the training state (None before :meth:`setup`)
        self.state: TrainState | None = None
        #: per-session setup (None before :meth:`setup`)
        self.session: TrainSession | None = None
        #: ``(width, height)`` of the latest training render (the resolution schedule
        #: lowers it)
        self.render_size: tuple[int, int] | None = None
        #: step -> checkpoint / PLY written in this session
        self.checkpoints: dict[int, Path] = {}
        self.ply_paths: dict[int, Path] = {}
        #: False while a step is half done (no checkpoint can be taken then)
        self._consistent = True

    # ---- the state and the session, by name --------------------------------------------------
    @property
    def params(self) -> dict[str, torch.nn.Parameter]:
        return self.state.params

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.state.optimizers

    @property
    def strategy(self) -> TrainStrategy:
        return self.state.strategy

    @property
    def strategy_state(self) -> dict[str, Any]:
        return self.state.strategy_state

    @property
    def extras(self) -> CaptureExtras:
        return self.state.extras

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def num_initial(self) -> int:
        return self.state.num_initial

    @property
    def scene(self) -> Any:
        return self.session.scene if self.session is not None else None

    @property
    def device(self) -> torch.device:
        return self.session.device

    @property
    def backend(self) -> str:
        return self.session.backend

    @property
    def triton_loss(self) -> bool:
        return self.session is not None and self.session.triton_loss

    @property
    def num_gaussians(self) -> int:
        """Gaussians of the whole model (a hook: the distributed trainer sums its shards)."""
        return len(self.params["means"])

    # ---- setup -----------------------------------------------------------------------------
    def _load_scene(self):
        from ..scene import Scene, load_scene

        if isinstance(self._scene_arg, Scene):
            return self._scene_arg
        return load_scene(self._scene_arg, self.scene_config, self.rep.events)

    def resolve_resume(self, resume: bool | str | Path | None) -> Path | None:
        """The checkpoint to continue from (see :func:`run_train`'s ``resume``).

        Raises:
            InputError: checkpoints in the model folder without ``resume``; a named
                checkpoint or folder without one.
        """
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

    def setup(self, ckpt_path: Path | None) -> None:
        """Load the scene, build :attr:`session` and :attr:`state` (fresh, or from
        ``ckpt_path``), then call :meth:`after_setup`.

        Raises:
            ConfigError: device/backend missing, an incompatible checkpoint, or what
                :meth:`check_setup` refuses.
            InputError: a scene without training images, an unreadable checkpoint.
        """
        cfg = self.config
        rep = self.rep
        device = resolve_device(cfg.device)
        backend = resolve_backend(cfg.backend, device)
        scene = self._load_scene()
        if not scene.train_indices:
            raise InputError(scene.root, "the scene has no training images")
        for note in cfg.notes():
            rep.info(f"note: {note}")
        use_sparse_grad = cfg.sparse_grad and backend == "gsplat"
        if cfg.sparse_grad and not use_sparse_grad:
            rep.warning("sparse_grad is a gsplat (CUDA) feature; the torch backend computes "
                        "dense gradients, so dense Adam is used")
        self.session = session = TrainSession(
            device=device, backend=backend, scene=scene, scene_scale=float(scene.extent()),
            save_steps=cfg.resolved_save_steps(), use_sparse_grad=use_sparse_grad,
            cameras={i: camera_tensors(scene, i, device) for i in scene.train_indices},
            background=torch.tensor(scene.background, dtype=torch.float32, device=device),
            regularization=cfg.regularization())
        self.check_setup()
        ckpt = None
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path, map_location="cpu")
            self._check_compatible(ckpt, ckpt_path)
        views = self.train_views()
        self.state = build_train_state(
            cfg, scene, self.scene_config, device, ckpt, rep, views=views,
            stream=self.stream, restore_streams=self.restore_streams,
            sparse_grad=use_sparse_grad, seen_fn=self._seen_fn(), score_fn=self._score_fn())
        session.start_step = self.state.step
        session.fast_adam = all(supports_fused_adam_step(o) for o in self.optimizers.values())
        session.res_schedule = (ResolutionSchedule(
            cfg.res_schedule_start, cfg.res_schedule_levels,
            max(1, int(round(cfg.res_schedule_until * cfg.max_steps))))
            if cfg.res_schedule else None)
        if (cfg.selective_adam or cfg.adam_moments_dtype != "float32") and not use_sparse_grad:
            session.adam_stepper = SelectiveAdamStepper(getattr(torch, cfg.adam_moments_dtype),
                                                        seed=cfg.seed)
        session.images = ImageCache(scene, views, int(cfg.image_cache_mb * 1024 * 1024), device,
                                    gpu_resident={"auto": None, "yes": True,
                                                  "no": False}[cfg.images_on_gpu])
        # (on a CPU only under Triton's interpreter, which tests use)
        session.triton_loss = (cfg.triton_loss and cfg.ssim_lambda > 0
                               and triton_loss_available(device))
        session.loss_fn = (GraphedPhotometricLoss(
                               cfg.ssim_lambda, max_graphs=4 + cfg.res_schedule_levels
                               if cfg.res_schedule else 4)
                           if cfg.graph_loss and cfg.fused_ssim and device.type == "cuda"
                           and cfg.ssim_lambda > 0 and not session.triton_loss else None)
        self.after_setup(ckpt)

    def _score_fn(self) -> Callable[[dict], torch.Tensor] | None:
        """mcmc significance pruning's score: the summed blend weight over the training
        views (:mod:`splatforge.train.significance`)."""
        cfg = self.config
        if not (cfg.prune_significance > 0 and cfg.strategy == "mcmc"):
            return None
        from .significance import blend_weight_significance

        session = self.session

        def score_fn(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return blend_weight_significance(params, session.scene,
                                             session.scene.train_indices, session.backend,
                                             session.cameras, antialiased=cfg.antialiased)

        return score_fn

    def _seen_fn(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The default strategy's ``seen_fn`` for prune_unseen / camera_clearance
        (:mod:`splatforge.train.visibility`), or None."""
        cfg = self.config
        if not ((cfg.prune_unseen or cfg.camera_clearance > 0) and cfg.strategy == "default"):
            return None
        from .visibility import (camera_centres, camera_clearance, camera_stack,
                                 in_any_frustum, near_cameras)

        scene, device = self.session.scene, self.session.device
        stack = camera_stack(scene, scene.train_indices, device)
        margin = cfg.unseen_margin
        centres = camera_centres(stack[0])
        pts = torch.as_tensor(np.asarray(scene.points, dtype=np.float32),
                              device=device).reshape(-1, 3)
        radii = camera_clearance(pts, *stack, cfg.camera_clearance)
        prune_unseen = cfg.prune_unseen

        def seen_fn(means: torch.Tensor) -> torch.Tensor:
            ok = (in_any_frustum(means, *stack, margin=margin) if prune_unseen
                  else torch.ones(len(means), dtype=torch.bool, device=means.device))
            if cfg.camera_clearance > 0:
                ok &= ~near_cameras(means, centres, radii)
            return ok

        return seen_fn

    # ---- hook points (defaults: one process) -------------------------------------------------
    def check_setup(self) -> None:
        """Refuse settings this trainer cannot run (hook; :attr:`session` is set).

        Raises:
            ConfigError: naming the setting.
        """

    def train_views(self) -> list[int]:
        """The training views this trainer draws from (hook): all of the scene's."""
        return list(self.scene.train_indices)

    def after_setup(self, ckpt: dict[str, Any] | None) -> None:
        """Called once the state is built, with the checkpoint it was built from (hook)."""

    def after_step(self, step: int) -> None:
        """Called after each optimisation step, before it is logged (hook)."""

    def full_params(self) -> dict[str, torch.Tensor] | None:
        """The whole model's splat parameters for outputs (PLY, evaluation), the mean
        appearance baked in; None where this process does not write (hook)."""
        return self.extras.export_params(self.params)

    def checkpoint_payload(self) -> dict[str, Any] | None:
        """What ``ckpts/step_N.pt`` holds: :meth:`TrainState.state_dict` plus the run's
        config, scene fingerprint and backend; None where this process does not write
        (hook)."""
        return {**self.state.state_dict(),
                "config": self.config.model_dump(mode="json"),
                "scene": _scene_fingerprint(self.scene, self.scene.train_indices),
                "backend": self.backend}

    def share(self, value: Any) -> Any:
        """``value`` as computed by the writing process, on every process (hook)."""
        return value

    def sync_point(self) -> None:
        """Wait until every process got here (hook; one process: nothing to wait for)."""

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
    def save_checkpoint(self) -> Path:
        """Write ``ckpts/step_<step>.pt`` for the current step (atomically; by the writing
        process, :meth:`checkpoint_payload`)."""
        payload = self.checkpoint_payload()
        path = checkpoint_path(self.model_dir, self.step)
        if payload is not None:
            save_checkpoint(path, payload)
        self.sync_point()
        self.checkpoints[self.step] = path
        return path

    def save_ply(self) -> Path:
        """Write ``point_cloud/iteration_<step>/point_cloud.ply`` in the source frame (by the
        writing process, :meth:`full_params`)."""
        from ..export.ply import write_ply

        path = self.files.point_cloud(self.step)
        params = self.full_params()
        if params is not None:
            write_ply(path, splats_to_source_frame(params, self.scene))
        self.sync_point()
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
    def render_train_view(self, idx: int, sh_degree: int, bg: torch.Tensor,
                           viewmat: torch.Tensor, K: torch.Tensor, size: dict[str, int]
                           ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """``(render [1, H, W, 3], alphas [1, H, W, 1], info)`` of training view ``idx`` for
        the loss and the strategy, with the per-image appearance and pose corrections applied
        (train/real_capture.py); ``size`` is ``{}`` or the resolution schedule's
        ``{"width", "height"}``. A hook: the distributed trainer renders across ranks.

        Args:
            idx: the view (scene image index).
            sh_degree: SH degree of this step.
            bg: ``[3]`` background colour in [0, 1].
            viewmat: ``[4, 4]`` world-to-camera; K: ``[3, 3]`` intrinsics, pixels.
            size: ``{}`` or the resolution schedule's ``{"width", "height"}``.
        """
        cfg = self.config
        render, alphas, info = render_view(
            self.extras.render_params(self.params, idx), self.scene, idx, sh_degree,
            self.backend, background=bg, antialiased=cfg.antialiased, packed=cfg.packed,
            viewmat=self.extras.viewmat(viewmat, idx), K=K, absgrad=cfg.absgrad,
            sparse_grad=self.session.use_sparse_grad, **size)
        return self.extras.post_render(render, idx), alphas, info

    def _train_step(self, k: int) -> dict[str, Any]:
        # record_function ranges name the parts of a step in torch.profiler traces
        # (benchmarks/train_gpu.py --profile); without a profiler they cost ~1 us each
        rf = torch.profiler.record_function
        cfg = self.config
        st, se = self.state, self.session
        with rf("sf.data"):
            idx = st.sampler.next()
            nxt = st.sampler.peek()
            if nxt is not None:
                se.images.prefetch(nxt)
            gt_u8 = se.images.get(idx)                          # [H, W, 3] uint8
            sh_degree = sh_degree_at(k, cfg.sh_degree, cfg.sh_degree_interval)
            means_lr = se.scene_scale * expon_lr(k, cfg.means_lr, cfg.means_lr_final,
                                                   cfg.max_steps)
            for group in self.optimizers["means"].param_groups:
                group["lr"] = means_lr
            if cfg.random_background:
                bg = torch.rand(3, generator=st.bg_generator).to(se.device)
            else:
                bg = se.background
            viewmat, K = se.cameras[idx]
            size = {}
            if se.res_schedule is not None:  # coarse-to-fine (res_schedule.py)
                gt_u8, K, w, h = downscale_view(gt_u8, K, se.res_schedule.factor(k))
                size = {"width": w, "height": h}
                st.strategy.set_budget_fraction(se.res_schedule.budget_fraction(k))
            self.render_size = (int(gt_u8.shape[1]), int(gt_u8.shape[0]))  # (W, H) rendered
        with rf("sf.render"):
            render, alphas, info = self.render_train_view(idx, sh_degree, bg, viewmat, K, size)
            st.strategy.pre_backward(st.params, st.optimizers, st.strategy_state, k, info)
        with rf("sf.loss"):
            render_in, gt_in = st.extras.loss_inputs(render[0], gt_u8, idx)  # masks
            if se.triton_loss:  # five Triton kernels, reading the uint8 image
                loss, l1, ssim_val = fused_photometric_loss(render_in, gt_in, cfg.ssim_lambda)
            else:
                gt = gt_in.float() / 255.0
                if se.loss_fn is not None:  # CUDA graphs of the same loss
                    loss, l1, ssim_val = se.loss_fn(render_in, gt)
                else:
                    loss, l1, ssim_val = photometric_loss(render_in, gt, cfg.ssim_lambda,
                                                          fused_ssim=cfg.fused_ssim)
            reg = mcmc_regularization(st.params, *se.regularization)
            total = loss + reg if reg is not None else loss
            extra = st.extras.loss_terms(alphas, idx)
            if extra is not None:
                total = total + extra
        with rf("sf.backward"):
            total.backward()
        with rf("sf.optimizer"):
            if se.use_sparse_grad:
                # gsplat's sparse_grad gives COO gradients for the projection's inputs, but a
                # dense one still reaches means through the SH view directions (and scales
                # through the MCMC regulariser): SparseAdam takes the rows that have one.
                for name in SPARSE_GRAD_PARAMS:
                    g = st.params[name].grad
                    if g is not None and not g.is_sparse:
                        st.params[name].grad = g.to_sparse(1)
            if se.adam_stepper is not None:  # selective_adam / adam_moments_dtype
                vis = (visible_gaussians(info, len(st.params["means"]))
                       if cfg.selective_adam else None)
                se.adam_stepper(st.optimizers.values(), vis)
            elif se.fast_adam:
                fused_adam_step(st.optimizers.values())
            else:
                for opt in st.optimizers.values():
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            st.extras.step()
        with rf("sf.densify"):
            st.strategy.post_backward(st.params, st.optimizers, st.strategy_state, k, info,
                                      lr=means_lr)
        return {"render": render.detach(), "gt": gt_u8, "loss": total.detach(),
                "l1": l1.detach(),
                "ssim": ssim_val.detach(), "sh_degree": sh_degree, "means_lr": means_lr,
                "index": idx}

    # ---- the run ---------------------------------------------------------------------------
    def run(self, resume: bool | str | Path | None = None) -> TrainResult:
        cfg = self.config
        rep = self.rep
        rep.started(f"training into {self.model_dir}", model_dir=str(self.model_dir))
        ckpt_path = self.resolve_resume(resume)
        self.setup(ckpt_path)
        se = self.session
        start = se.start_step
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints = {}
        self.ply_paths = {}
        if ckpt_path is not None:
            stale = [(s, p) for s, p in list_checkpoints(self.model_dir) if s > start]
            for _, p in stale:
                p.unlink(missing_ok=True)
            if stale:
                rep.warning(f"removed {len(stale)} checkpoint(s) after step {start} "
                            f"from an earlier run: "
                            + ", ".join(str(p.name) for _, p in stale))
            self._truncate_log(start)
            rep.info(f"resuming from {ckpt_path} at step {start} of {cfg.max_steps}",
                     checkpoint=str(ckpt_path), step=start)
        else:
            self.files.train_log.unlink(missing_ok=True)
        atomic_write_text(self.files.train_config, json.dumps({
            "train": cfg.model_dump(mode="json"),
            "scene": self.scene_config.model_dump(mode="json"),
            "scene_path": str(self.scene.root), "backend": self.backend,
            "device": str(self.device), "save_steps": se.save_steps}, indent=2) + "\n")
        rep.info(f"{self.num_gaussians} Gaussians, {len(self.scene.train_indices)} "
                 f"training / {len(self.scene.test_indices)} held-out views, backend "
                 f"{self.backend} on {self.device}, scene extent {se.scene_scale:.4g}",
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
            se.images.close()

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
        test = metrics["test"] or {}
        rep.finished(
            f"{self.step} steps, {metrics['num_gaussians']} Gaussians"
            + (f", test PSNR {test['psnr']:.2f} dB" if test.get("psnr") is not None else ""),
            step=self.step, num_gaussians=metrics["num_gaussians"],
            train_seconds=round(self.state.train_seconds, 3), psnr=test.get("psnr"),
            ssim=test.get("ssim"))
        return TrainResult(
            model_dir=self.model_dir, step=self.step,
            num_gaussians=self.num_gaussians, train_seconds=self.state.train_seconds,
            steps_per_second=speed, backend=self.backend, device=str(self.device),
            init=self.state.init_method, resumed_from=ckpt_path, ply_paths=dict(self.ply_paths),
            checkpoints=dict(self.checkpoints), metrics=metrics)

    def _loop(self, flag: _SigintFlag) -> tuple[int, float]:
        cfg = self.config
        n = cfg.max_steps
        st, se = self.state, self.session
        save = set(se.save_steps)
        self._consistent = True
        self.rep.start_steps("training", n)
        t_session = time.monotonic()
        session_steps = 0
        session_time = 0.0
        window_time = 0.0
        window_steps = 0
        last_event = 0.0
        for k in range(se.start_step + 1, n + 1):
            t0 = time.perf_counter()
            self._consistent = False
            out = self._train_step(k)
            self.after_step(k)
            st.step = k
            self._consistent = True
            logged = k % cfg.log_every == 0 or k == n
            if logged and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0
            st.train_seconds += dt
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
            done = k - se.start_step
            elapsed = time.monotonic() - t_session
            eta = elapsed / done * (n - k) if done else None
            if logged:
                rec = {"step": k, "max_steps": n, **data, "eta_s": eta,
                       "train_seconds": st.train_seconds, "time": time.time()}
                if st.strategy.counts:
                    rec["densification"] = dict(st.strategy.counts)
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
            if logged or k == se.start_step + 1 or wall - last_event >= 1.0:
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
        params = self.full_params()  # mean appearance baked in
        ev = None
        if params is not None:
            params = {k: v.to(self.device) for k, v in params.items()}
            ev = evaluate_splats(params, self.scene, self.scene.test_indices, sh, self.backend,
                                 antialiased=self.config.antialiased,
                                 masks=self.extras.mask_fn() if self.config.eval_masked
                                 else None)
        return self.share(ev)

    def _final_metrics(self, speed: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        ev = self._evaluate() if self.score_held_out else None
        metrics = {
            "step": self.step,
            "max_steps": self.config.max_steps,
            "num_gaussians": self.num_gaussians,
            "train_seconds": self.state.train_seconds,
            "steps_per_second": speed,
            "test": None if ev is None else held_out_record(ev),
            "appearance": self.config.appearance,
            "pose_opt": self.config.pose_opt,
            "eval_seconds": time.perf_counter() - t0,
            "backend": self.backend,
            "device": str(self.device),
            "strategy": self.config.strategy,
            "init": self.state.init_method,
            "image_cache": {"gpu_resident": self.session.images.gpu_resident,
                            "decodes": self.session.images.decodes,
                            "train_image_bytes": self.session.images.total_bytes},
        }
        if ev is not None and ev["num_images"]:
            self._log({"step": self.step, "kind": "eval", "psnr": ev["psnr"], "ssim": ev["ssim"],
                       "num_images": ev["num_images"], "time": time.time()})
        atomic_write_text(self.files.metrics,
                          json.dumps(metrics, indent=2, default=_json_default) + "\n")
        return metrics


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
