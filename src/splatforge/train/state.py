"""The trainer's state: :class:`TrainState`, built in one place (:func:`build_train_state`),
and exactly what a checkpoint saves (:meth:`TrainState.state_dict`) and restores
(:meth:`TrainState.load_state_dict`).

Everything that changes while training and decides how training continues lives here: the
splat parameters, their Adam optimisers, the densification strategy and its state, the
appearance / pose-refinement modules with their optimisers, the view order, the background
generator, the global random generators (captured at save time), the step and the training
time so far. What the trainer holds besides it is derived from the config and the scene
each session (device, image cache, camera tensors, loss function), never saved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import random

import numpy as np
import torch

from ..config import SceneConfig, TrainConfig
from ..events import StageReporter
from ..splats import PARAM_NAMES, init_splats
from .checkpoint import capture_rng_state, restore_rng_state
from .data import ViewSampler
from .real_capture import CaptureExtras
from .strategies import TrainStrategy, make_strategy

ADAM_EPS = 1e-15  # INRIA scene/gaussian_model.py training_setup

#: Parameters whose gradients gsplat makes sparse with ``sparse_grad`` (optimised with
#: ``torch.optim.SparseAdam``: only Gaussians with a gradient update their moments).
SPARSE_GRAD_PARAMS = ("means", "quats", "scales")

def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def background_seed(seed: int, stream: int = 0) -> int:
    """The seed of the random-background generator of stream ``stream`` (0 in a single
    process; the rank in a distributed run)."""
    return seed + 1 + 7919 * stream


@dataclass
class TrainState:
    """The whole mutable state of a training run (see the module docstring).

    Attributes:
        step: steps done (1-based steps: the next step is ``step + 1``).
        params: splat parameters, name -> ``torch.nn.Parameter`` (``means [N, 3]``,
            ``quats [N, 4]`` wxyz, ``scales [N, 3]`` log, ``opacities [N]`` logit,
            ``sh0 [N, 1, 3]``, ``shN [N, K, 3]``; plus per-Gaussian appearance features with
            ``appearance="embedding"``).
        optimizers: one ``torch.optim`` optimiser per entry of ``params``.
        strategy: the densification strategy (its counters and budget are state too).
        strategy_state: the strategy's running state (gradient accumulators, ...).
        extras: appearance model, pose corrections and masks, with their optimisers
            (:class:`~splatforge.train.real_capture.CaptureExtras`).
        sampler: the seeded epoch-by-epoch view order.
        bg_generator: the random-background generator (CPU).
        num_initial: Gaussians at initialisation (the automatic MCMC budget's base).
        train_seconds: optimisation wall time over all sessions so far, seconds.
        init_method: ``sfm``, ``random`` or ``checkpoint``.
    """

    step: int
    params: dict[str, torch.nn.Parameter]
    optimizers: dict[str, torch.optim.Optimizer]
    strategy: TrainStrategy
    strategy_state: dict[str, Any]
    extras: CaptureExtras
    sampler: ViewSampler
    bg_generator: torch.Generator
    num_initial: int
    train_seconds: float
    init_method: str

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries of this state, tensors on the CPU (see
        :mod:`splatforge.train.checkpoint`); includes the global generators' states now."""
        strat = self.strategy.state_dict()
        return {
            "step": self.step,
            "splats": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizers": {k: _optimizer_state_to_cpu(o.state_dict())
                           for k, o in self.optimizers.items()},
            "strategy_state": {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                               for k, v in self.strategy_state.items()},
            "strategy_counts": strat["counts"],
            "strategy_budget": strat["budget"],
            "num_initial": self.num_initial,
            "rng": capture_rng_state(),
            "sampler": self.sampler.state_dict(),
            "background_rng": self.bg_generator.get_state(),
            "train_seconds": self.train_seconds,
            "extras": self.extras.state_dict(),
        }

    def load_state_dict(self, ckpt: dict[str, Any], device: torch.device,
                        streams: bool = True) -> None:
        """Restore :meth:`state_dict` (the parameters themselves are read by
        :func:`build_train_state`). ``streams=False`` leaves the view order, the background
        generator alone (a distributed rank sets its own)."""
        for name, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][name])
        for k, v in ckpt["strategy_state"].items():
            self.strategy_state[k] = v.to(device) if isinstance(v, torch.Tensor) else v
        self.strategy.load_state_dict({"counts": ckpt.get("strategy_counts"),
                                       "budget": ckpt.get("strategy_budget")})
        self.extras.load_state_dict(ckpt.get("extras"))
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        if streams:
            self.sampler.load_state_dict(ckpt["sampler"])
            self.bg_generator.set_state(ckpt["background_rng"])
        restore_rng_state(ckpt["rng"])


def make_optimizers(config: TrainConfig, params: dict[str, torch.nn.Parameter],
                    scene_scale: float, device: torch.device, sparse_grad: bool
                    ) -> dict[str, torch.optim.Optimizer]:
    """One Adam per splat parameter (eps 1e-15, betas 0.9/0.999); ``SparseAdam`` for
    :data:`SPARSE_GRAD_PARAMS` with ``sparse_grad``; fused Adam on CUDA with ``fused_adam``.
    The means' rate is ``means_lr * scene_scale``."""
    lrs = {"means": config.means_lr * scene_scale, "scales": config.scales_lr,
           "quats": config.quats_lr, "opacities": config.opacities_lr,
           "sh0": config.sh0_lr, "shN": config.shN_lr}
    sparse = set(SPARSE_GRAD_PARAMS) if sparse_grad else set()
    fused = {"fused": True} if config.fused_adam and device.type == "cuda" else {}
    out: dict[str, torch.optim.Optimizer] = {}
    for name in PARAM_NAMES:
        group = [{"params": [params[name]], "lr": lrs[name], "name": name}]
        out[name] = (torch.optim.SparseAdam(group, eps=ADAM_EPS, betas=(0.9, 0.999))
                     if name in sparse else
                     torch.optim.Adam(group, eps=ADAM_EPS, betas=(0.9, 0.999), **fused))
    return out


def build_train_state(config: TrainConfig, scene: Any, scene_config: SceneConfig,
                      device: torch.device, ckpt: dict[str, Any] | None,
                      rep: StageReporter, *, views: list[int], stream: int = 0,
                      restore_streams: bool = True,
                      sparse_grad: bool = False,
                      seen_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      score_fn: Callable[[dict], torch.Tensor] | None = None) -> TrainState:
    """The one place a :class:`TrainState` is made: fresh (initialised splats, step 0) or
    from a loaded checkpoint ``ckpt`` (:func:`~splatforge.train.checkpoint.load_checkpoint`,
    already checked to be compatible).

    The global generators are seeded with ``config.seed`` first, so the same seed gives the
    same run.

    Args:
        config, scene, scene_config: what to train (``scene`` a loaded
            :class:`~splatforge.scene.Scene`).
        device: where the tensors live.
        ckpt: the checkpoint to continue from, or None.
        rep: reports the initialisation.
        views: the training views this state draws from (a rank's share when distributed).
        stream: 0, or the rank: the view order is seeded ``seed + stream`` and the background
            ``seed + 1 + 7919 * stream``.
        restore_streams: False: the checkpoint's view order and background generator are not
            restored (a distributed rank restores its own).
        sparse_grad: gsplat sparse gradients (``SparseAdam`` for means, quats, scales).
        seen_fn, score_fn: the strategy's visibility / significance functions
            (:func:`~splatforge.train.strategies.make_strategy`).

    Raises:
        InputError: the scene cannot be initialised (:func:`~splatforge.splats.init_splats`).
    """
    seed_everything(config.seed)
    if ckpt is None:
        init = init_splats(scene, config.sh_degree, config.init_type, scene_config.min_points,
                           config.init_num_pts, config.init_extent, config.initial_opacity(),
                           config.initial_scale(), seed=config.seed, device=device)
        rep.info(f"initialised {len(init.params['means'])} Gaussians from {init.reason}",
                 init=init.method, num_gaussians=len(init.params["means"]))
        tensors, init_method, step = init.params, init.method, 0
        num_initial = len(init.params["means"])
    else:
        tensors, init_method, step = ckpt["splats"], "checkpoint", int(ckpt["step"])
        num_initial = int(ckpt.get("num_initial") or len(tensors["means"]))
    params = {name: torch.nn.Parameter(tensors[name].to(device).contiguous())
              for name in PARAM_NAMES}
    optimizers = make_optimizers(config, params, float(scene.extent()), device, sparse_grad)
    # appearance model, pose refinement, masks (train/real_capture.py)
    extras = CaptureExtras(config, scene, device)
    extras.add_gaussian_params(params, optimizers,
                               ckpt["splats"] if ckpt is not None else None, config.seed)
    strategy, strategy_state = make_strategy(config, float(scene.extent()), num_initial,
                                             seen_fn=seen_fn, score_fn=score_fn)
    if config.strategy == "mcmc":
        rep.info(f"MCMC budget: at most {strategy.cap_max} Gaussians",
                 cap_max=strategy.cap_max)
    strategy.check_sanity(params, optimizers)
    state = TrainState(
        step=step, params=params, optimizers=optimizers, strategy=strategy,
        strategy_state=strategy_state, extras=extras,
        sampler=ViewSampler(list(views), config.seed + stream),
        bg_generator=torch.Generator().manual_seed(background_seed(config.seed, stream)),
        num_initial=num_initial, train_seconds=0.0, init_method=init_method)
    if ckpt is not None:
        state.load_state_dict(ckpt, device, streams=restore_streams)
    return state


def _optimizer_state_to_cpu(sd: dict[str, Any]) -> dict[str, Any]:
    state = {k: {kk: (vv.detach().cpu() if isinstance(vv, torch.Tensor) else vv)
                 for kk, vv in v.items()} for k, v in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


__all__ = ["ADAM_EPS", "SPARSE_GRAD_PARAMS", "TrainState", "background_seed",
           "build_train_state", "make_optimizers", "seed_everything"]
