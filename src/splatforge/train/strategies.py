"""gsplat densification strategies as the trainer uses them, and the code that relies on
gsplat's strategy internals (``gsplat.strategy.ops``), kept in this one module.

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

from .mcmc_noise import inject_position_noise_


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
class SplatforgeMCMCStrategy(MCMCStrategy):
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

    def budget_state(self) -> dict:
        """What a checkpoint keeps of the budget (see :meth:`load_budget_state`)."""
        return {"budget_scale": self.budget_scale}

    def load_budget_state(self, state: dict | None) -> None:
        """Restore :meth:`budget_state`; the configured budget stays the resumed config's."""
        if state:
            self.budget_scale = float(state.get("budget_scale", 1.0))
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

    def step_post_backward(self, params, optimizers, state, step, info, lr):
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
class InriaDefaultStrategy(DefaultStrategy):
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

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        if 0 < step < self.refine_stop_iter and step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state,
                      value=self.prune_opa * 2.0)
            self.counts["opacity_resets"] += 1
        if (self.seen_fn is not None and step > self.refine_start_iter
                and step % self.refine_every == 0):
            unseen = ~self.seen_fn(params["means"])
            self.counts["pruned_unseen"] += remove_gaussians(params, optimizers, state, unseen)
