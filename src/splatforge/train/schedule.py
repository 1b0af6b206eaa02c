"""Step-indexed schedules of the trainer (pure functions of the 1-based step, so a resumed run
follows exactly the same schedule)."""

from __future__ import annotations

import math


def expon_lr(step: int, lr_init: float, lr_final: float, max_steps: int,
             lr_delay_steps: int = 0, lr_delay_mult: float = 1.0) -> float:
    """Log-linear learning-rate decay, INRIA 3DGS ``utils/general_utils.py``
    ``get_expon_lr_func`` (from Plenoxels / JaxNeRF).

    ``lr(step) = delay(step) * exp((1 - t) log(lr_init) + t log(lr_final))`` with
    ``t = clip(step / max_steps, 0, 1)``; with ``lr_delay_steps > 0`` the rate is first
    scaled by ``lr_delay_mult + (1 - lr_delay_mult) sin(pi/2 clip(step / lr_delay_steps))``.

    Returns:
        the learning rate (0 for negative steps, as INRIA).
    """
    if step < 0 or (lr_init == 0.0 and lr_final == 0.0):
        return 0.0
    if lr_delay_steps > 0:
        delay = lr_delay_mult + (1 - lr_delay_mult) * math.sin(
            0.5 * math.pi * min(max(step / lr_delay_steps, 0.0), 1.0))
    else:
        delay = 1.0
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return delay * math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


def sh_degree_at(step: int, sh_degree: int, interval: int = 1000) -> int:
    """SH degree used at 1-based ``step``: ``min(step // interval, sh_degree)`` (INRIA raises
    the degree at every ``iteration % 1000 == 0``, starting at 0)."""
    return min(step // interval, sh_degree)
