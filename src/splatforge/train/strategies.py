"""Densification strategies with explicit hooks, and the code that relies on gsplat's
strategy internals (``gsplat.strategy`` and its ``ops``, private ``_grow_gs`` / ``_prune_gs`` /
``_relocate_gs`` / ``_add_new_gs``, the names of its state entries), kept in this one module.

Every strategy is a :class:`TrainStrategy`: the trainer calls its hooks and nothing else, the
same way for each (no ``hasattr`` probes, no functions assigned onto it):

* :meth:`TrainStrategy.pre_backward` after the render, before ``loss.backward()``;
* :meth:`TrainStrategy.post_backward` after the optimiser step (refinement, noise);
* :meth:`TrainStrategy.set_budget_fraction` when the resolution schedule changes the image
  size; :meth:`TrainStrategy.split_budget` on each rank of a distributed run;
* :meth:`TrainStrategy.state_dict` / :meth:`TrainStrategy.load_state_dict`: what a checkpoint
  keeps of the strategy object itself (its per-Gaussian tensors are the ``state`` dict);
* :meth:`TrainStrategy.per_gaussian_state`: the entries of ``state`` with one row per Gaussian.

:func:`make_strategy` builds one from its typed config
(:class:`~splatforge.config.DefaultStrategyConfig` | :class:`~splatforge.config.MCMCStrategyConfig`):

* :class:`SplatforgeMCMCStrategy`: gsplat 1.5.3 ``MCMCStrategy`` (Kheradmand et al. 2024) with
  the fused position noise, an adjustable budget (the resolution schedule grows it,
  :mod:`splatforge.train.res_schedule`) and optional significance pruning (Speedy-Splat,
  Hanson et al. 2024; LightGaussian, Fan et al. 2023: remove the Gaussians that contribute
  least to the training views, and shrink the budget with them).
* :class:`InriaDefaultStrategy`: gsplat 1.5.3 ``DefaultStrategy`` with INRIA's opacity reset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy
from gsplat.strategy.ops import remove, reset_opa

from ..config import DefaultStrategyConfig, MCMCStrategyConfig, TrainConfig
from .mcmc_noise import inject_position_noise_

Params = dict[str, torch.nn.Parameter]
Optimizers = dict[str, torch.optim.Optimizer]


class TrainStrategy:
    """The hooks the trainer calls on a densification strategy (see the module docstring).

    ``params`` are the splat parameters (name -> ``[N, ...]``), ``optimizers`` one
    ``torch.optim`` optimiser per parameter, ``state`` the strategy's running state (built by
    ``initialize_state``, kept in checkpoints), ``step`` the 1-based step, ``info`` the
    rasterizer's ``info`` dict of this step's render, ``lr`` the means learning rate of the
    step (scene units).
    """

    #: refinement counters (``train_log.jsonl``'s ``densification``, checkpoints)
    counts: dict[str, int]

    def pre_backward(self, params: Params, optimizers: Optimizers, state: dict[str, Any],
                     step: int, info: dict[str, Any]) -> None:
        """Before ``loss.backward()`` (default: nothing)."""

    def post_backward(self, params: Params, optimizers: Optimizers, state: dict[str, Any],
                      step: int, info: dict[str, Any], lr: float) -> None:
        """After the optimiser step: refine (may change ``N``)."""
        raise NotImplementedError

    def set_budget_fraction(self, fraction: float) -> None:
        """The resolution schedule's budget fraction in (0, 1] (default: no budget)."""

    def split_budget(self, rank: int, world: int) -> None:
        """Keep rank ``rank`` of ``world``'s share of any budget (default: no budget)."""

    def per_gaussian_state(self, state: dict[str, Any], n: int) -> dict[str, torch.Tensor]:
        """The entries of ``state`` with one row per Gaussian (``n`` rows)."""
        return {k: v for k, v in state.items() if k in self.PER_GAUSSIAN
                and isinstance(v, torch.Tensor) and v.shape[:1] == (n,)}

    #: names of the per-Gaussian ``state`` entries
    PER_GAUSSIAN: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this object: ``{"counts": ..., "budget": ...}``."""
        return {"counts": dict(self.counts), "budget": None}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.counts.update(sd.get("counts") or {})


def remove_gaussians(params, optimizers, state, mask: torch.Tensor) -> int:
    """Remove the Gaussians where ``mask [N] bool`` is True from the parameters, their Adam
    moments and the strategy's per-Gaussian state (gsplat's ``strategy.ops.remove``).

    ``state`` entries that are not per-Gaussian (MCMC's ``binoms [n_max, n_max]``, scalars)
    are left alone: gsplat's ``remove`` would index every tensor in it with the mask.

    Returns:
        the number removed.
    """
    n = int(mask.sum())
    if n:
        total = len(mask)
        per_gaussian = {k: v for k, v in state.items()
                        if isinstance(v, torch.Tensor) and v.dim() > 0 and len(v) == total
                        and k != "binoms"}
        remove(params=params, optimizers=optimizers, state=per_gaussian, mask=mask)
        state.update(per_gaussian)
    return n


@dataclass
class SplatforgeMCMCStrategy(MCMCStrategy, TrainStrategy):
    """gsplat 1.5.3 ``MCMCStrategy`` with the per-step position noise in one fused kernel
    (:mod:`splatforge.train.mcmc_noise`, same formula), no ``torch.cuda.empty_cache()``
    after each refinement (it only returns cached blocks to the driver, at the cost of a
    device synchronisation), refinement counts recorded, and two additions:

    * ``budget_fraction``: :meth:`set_budget_fraction` sets ``cap_max`` to that fraction of
      the full budget ``cap_full`` (the resolution schedule grows the budget with the image
      size, DashGaussian, Chen et al. 2025);
    * significance pruning: at each step of ``prune_steps`` (inside the refinement window)
      ``score_fn(params) -> [N]`` scores every Gaussian (its summed blend weight over the
      training views, :func:`splatforge.train.significance.blend_weight_significance`) and
      the lowest ``prune_ratio`` of them are removed; ``cap_full`` shrinks by the same
      fraction, so relocation does not grow them back.
    """

    fused_noise: bool = True
    #: no position noise from this step on (None: every step, as gsplat)
    noise_stop_iter: int | None = None
    #: steps at which to prune by significance (empty: never)
    prune_steps: tuple[int, ...] = ()
    #: fraction of the Gaussians removed at each pruning step
    prune_ratio: float = 0.0
    #: ``score_fn(params) -> [N]`` significance (higher = keep); needed when pruning
    score_fn: Callable[[dict], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        self.counts = {"relocated": 0, "added": 0, "refines": 0, "pruned_significance": 0}
        #: the budget as configured (full resolution, before any pruning)
        self.cap_configured = int(self.cap_max)
        #: product of (1 - removed / N) over the pruning steps; kept in the checkpoint
        self.budget_scale = 1.0

    @property
    def cap_full(self) -> int:
        """The budget at full resolution after any pruning:
        ``max(1, round(cap_configured * budget_scale))``."""
        return max(1, int(round(self.cap_configured * self.budget_scale)))

    def set_budget_fraction(self, fraction: float) -> None:
        """``cap_max = max(1, round(fraction * cap_full))`` (fraction in (0, 1])."""
        self.cap_max = max(1, int(round(min(max(fraction, 0.0), 1.0) * self.cap_full)))

    def split_budget(self, rank: int, world: int) -> None:
        """``cap_max`` becomes rank ``rank``'s share of an even split over ``world`` ranks
        (the first ranks get one more when it does not divide)."""
        total = int(self.cap_max)
        self.cap_max = total // world + (1 if rank < total % world else 0)

    def state_dict(self) -> dict[str, Any]:
        """Counts and the budget after pruning (``{"budget_scale": ...}``)."""
        return {"counts": dict(self.counts), "budget": {"budget_scale": self.budget_scale}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the configured budget stays the resumed config's."""
        self.counts.update(sd.get("counts") or {})
        budget = sd.get("budget")
        if budget:
            self.budget_scale = float(budget.get("budget_scale", 1.0))
            self.cap_max = min(self.cap_max, self.cap_full)

    def _prune_significance(self, params, optimizers, state) -> int:
        n = len(params["means"])
        k = int(n * self.prune_ratio)
        if k <= 0 or self.score_fn is None:
            return 0
        score = self.score_fn(params)
        idx = torch.argsort(score)[:k]      # least significant first
        mask = torch.zeros(n, dtype=torch.bool, device=score.device)
        mask[idx] = True
        cap_before = self.cap_full
        removed = remove_gaussians(params, optimizers, state, mask.to(params["means"].device))
        self.counts["pruned_significance"] += removed
        # shrink the budget by the same fraction: cap_full = round(cap_before * (n - k) / n)
        target = max(1, int(round(cap_before * (1.0 - removed / n))))
        self.budget_scale = target / self.cap_configured
        self.cap_max = min(self.cap_max, self.cap_full)
        return removed

    def post_backward(self, params, optimizers, state, step, info, lr):
        means = params["means"]
        if state["binoms"].device != means.device:
            state["binoms"] = state["binoms"].to(means.device)
        if self.refine_start_iter < step < self.refine_stop_iter \
                and step % self.refine_every == 0:
            self.counts["relocated"] += int(self._relocate_gs(params, optimizers,
                                                              state["binoms"]))
            self.counts["added"] += int(self._add_new_gs(params, optimizers,
                                                         state["binoms"]))
            self.counts["refines"] += 1
        if step in self.prune_steps and self.prune_ratio > 0:
            self._prune_significance(params, optimizers, state)
        if self.noise_stop_iter is not None and step >= self.noise_stop_iter:
            return
        means = params["means"]
        inject_position_noise_(means.data, params["quats"].data, params["scales"].data,
                               params["opacities"].data, lr * self.noise_lr,
                               fused=self.fused_noise)


@dataclass
class InriaDefaultStrategy(DefaultStrategy, TrainStrategy):
    """gsplat 1.5.3 ``DefaultStrategy`` with its opacity reset restored and refinement
    counts recorded.

    gsplat 1.5.3 tests ``step % reset_every == 0 & step > 0``, which Python reads as
    ``step % reset_every == (0 & step) > 0``: always False, so opacities are never reset
    (gsplat PR #776). INRIA resets inside the densification window
    (``iteration < densify_until_iter``) whenever ``iteration % opacity_reset_interval
    == 0``; this subclass does the same (``reset_opa`` to ``2 * prune_opa`` = 0.01, INRIA's
    value). Should gsplat fix the test, the second reset is a no-op (a clamp and zeroed
    Adam moments, both idempotent).
    """

    #: ``seen_fn(means [N, 3]) -> [N] bool`` (True = inside some training frustum); when
    #: set, unseen Gaussians are removed at every refinement interval of the whole run
    #: (TrainConfig.prune_unseen).
    seen_fn: Any = None
    #: the rasterizer ran in gsplat's packed mode (the shape of ``info``)
    packed: bool = False

    def __post_init__(self) -> None:
        self.counts = {"duplicated": 0, "split": 0, "pruned": 0, "refines": 0,
                       "opacity_resets": 0, "pruned_unseen": 0}

    def _grow_gs(self, params, optimizers, state, step):
        n_dupli, n_split = super()._grow_gs(params, optimizers, state, step)
        self.counts["duplicated"] += int(n_dupli)
        self.counts["split"] += int(n_split)
        self.counts["refines"] += 1
        return n_dupli, n_split

    def _prune_gs(self, params, optimizers, state, step):
        n = super()._prune_gs(params, optimizers, state, step)
        self.counts["pruned"] += int(n)
        return n

    #: gsplat 1.5.3 DefaultStrategy's per-Gaussian state entries
    PER_GAUSSIAN = ("grad2d", "count", "radii")

    def pre_backward(self, params, optimizers, state, step, info):
        self.step_pre_backward(params, optimizers, state, step, info)

    def post_backward(self, params, optimizers, state, step, info, lr):
        self.step_post_backward(params, optimizers, state, step, info, packed=self.packed)
        if 0 < step < self.refine_stop_iter and step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state,
                      value=self.prune_opa * 2.0)
            self.counts["opacity_resets"] += 1
        if (self.seen_fn is not None and step > self.refine_start_iter
                and step % self.refine_every == 0):
            unseen = ~self.seen_fn(params["means"])
            self.counts["pruned_unseen"] += remove_gaussians(params, optimizers, state, unseen)


def make_strategy(config: TrainConfig | DefaultStrategyConfig | MCMCStrategyConfig,
                  scene_scale: float, num_initial: int | None = None, *,
                  fused_noise: bool | None = None,
                  seen_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  score_fn: Callable[[dict], torch.Tensor] | None = None
                  ) -> tuple[TrainStrategy, dict[str, Any]]:
    """The strategy for a typed strategy config and its initial state.

    Args:
        config: a :class:`~splatforge.config.DefaultStrategyConfig` /
            :class:`~splatforge.config.MCMCStrategyConfig`, or a
            :class:`~splatforge.config.TrainConfig` (its :meth:`strategy_config`; its
            ``init_num_pts`` is the default ``num_initial`` and its ``fused_mcmc_noise`` the
            default ``fused_noise``).
        scene_scale: the scene extent (world units; the default strategy's 3D size
            thresholds are fractions of it).
        num_initial: Gaussians at initialisation, for the automatic MCMC budget.
        fused_noise: mcmc: the position noise in one Triton kernel on CUDA (default True).
        seen_fn: default strategy: ``seen_fn(means [N, 3]) -> [N] bool``; Gaussians where it
            is False are removed at every refinement interval (prune_unseen,
            camera_clearance).
        score_fn: mcmc: ``score_fn(params) -> [N]`` significance, needed when
            ``prune_significance > 0``.

    Returns:
        ``(strategy, state)``.

    Raises:
        ValueError: ``num_initial`` missing for an automatic MCMC budget from a strategy
            config.
    """
    if isinstance(config, TrainConfig):
        if num_initial is None:
            num_initial = config.init_num_pts
        if fused_noise is None:
            fused_noise = config.fused_mcmc_noise
        config = config.strategy_config()
    if isinstance(config, MCMCStrategyConfig):
        if num_initial is None and config.cap_max is None:
            raise ValueError("make_strategy: num_initial is needed for an automatic cap_max")
        _install_cpu_mcmc_ops()
        strat = SplatforgeMCMCStrategy(
            cap_max=config.resolved_cap_max(num_initial or 0), noise_lr=config.noise_lr,
            refine_start_iter=config.refine_start_iter,
            refine_stop_iter=config.refine_stop_iter, refine_every=config.refine_every,
            min_opacity=config.min_opacity,
            fused_noise=True if fused_noise is None else fused_noise,
            noise_stop_iter=None if config.noise_after_refine else config.refine_stop_iter,
            prune_steps=tuple(config.prune_steps), prune_ratio=config.prune_significance,
            score_fn=score_fn)
        return strat, strat.initialize_state()
    prune2d, grow2d, stop2d = config.resolved_scale2d()
    strat = InriaDefaultStrategy(
        prune_opa=config.prune_opa, grow_grad2d=config.resolved_grow_grad2d(),
        grow_scale3d=config.grow_scale3d, grow_scale2d=grow2d,
        prune_scale3d=config.prune_scale3d, prune_scale2d=prune2d,
        refine_scale2d_stop_iter=stop2d, refine_start_iter=config.refine_start_iter,
        refine_stop_iter=config.refine_stop_iter, reset_every=config.reset_every,
        refine_every=config.refine_every,
        pause_refine_after_reset=config.pause_refine_after_reset, absgrad=config.absgrad,
        revised_opacity=config.revised_opacity, seen_fn=seen_fn, packed=config.packed)
    return strat, strat.initialize_state(scene_scale=scene_scale)


def _install_cpu_mcmc_ops() -> None:
    """Let gsplat's MCMC relocation and position-noise ops run on non-CUDA tensors
    (:func:`splatforge.raster.mcmc.install_torch_relocation`: CUDA tensors keep gsplat's
    kernels, others use the PyTorch versions)."""
    from ..raster.mcmc import install_torch_relocation

    install_torch_relocation()


__all__ = ["InriaDefaultStrategy", "SplatforgeMCMCStrategy", "TrainStrategy", "make_strategy",
           "remove_gaussians"]
