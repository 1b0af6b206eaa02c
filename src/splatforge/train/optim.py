"""One Adam step for all of a trainer's per-parameter optimisers, with less host overhead.

gsplat's strategies want one ``torch.optim.Adam`` per splat parameter (their ops edit each
optimiser's moments when Gaussians are added, relocated or removed), so a training step calls
six ``Optimizer.step`` and six ``zero_grad``. On a small scene the step is host-bound
(benchmarks/NOTES.md: ~5 ms per step, of which ~1.9 ms is GPU work), and each ``step`` spends
its time in Python: the profiling and hook wrappers, ``_init_group``, grouping tensors by
device and dtype, then one ``_foreach_add_`` and one fused kernel. :func:`fused_adam_step`
keeps the optimisers as they are (same ``state``/``param_groups``, so checkpoints, gsplat's ops
and ``state_dict`` are unchanged) and does the same update with one ``_foreach_add_`` for all
step counters and one ``torch._fused_adam_`` call per parameter.

The update is Adam (Kingma & Ba 2015, Algorithm 1) exactly as ``torch.optim.Adam(fused=True)``
computes it (bias-corrected moments, ``eps`` added after the square root, no weight decay
unless the group sets it).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def supports_fused_adam_step(opt: torch.optim.Optimizer) -> bool:
    """True when :func:`fused_adam_step` can step ``opt``: a plain ``torch.optim.Adam``
    created with ``fused=True`` (no amsgrad, no maximize, no differentiable/capturable, no
    decoupled weight decay)."""
    if type(opt) is not torch.optim.Adam:
        return False
    for g in opt.param_groups:
        if not g.get("fused") or g.get("amsgrad") or g.get("maximize") \
                or g.get("differentiable") or g.get("capturable") \
                or g.get("decoupled_weight_decay"):
            return False
    return True


@torch.no_grad()
def fused_adam_step(optimizers: Iterable[torch.optim.Adam], zero_grad: bool = True) -> None:
    """``opt.step(); opt.zero_grad(set_to_none=True)`` for every optimiser, in fewer calls.

    Args:
        optimizers: ``torch.optim.Adam(fused=True)`` instances (see
            :func:`supports_fused_adam_step`); parameters without a gradient are skipped, as
            ``Adam.step`` skips them.
        zero_grad: set each parameter's ``grad`` to None afterwards.

    State is created on first use as ``Adam`` creates it for the fused path: ``step`` a float32
    0-dim tensor on the parameter's device, ``exp_avg``/``exp_avg_sq`` zeros like the
    parameter.

    Raises:
        RuntimeError: from ``torch._fused_adam_`` for unsupported devices or dtypes.
    """
    todo = []
    steps = []
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                st = opt.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                todo.append((p, g, st, group))
                steps.append(st["step"])
    if not todo:
        return
    torch._foreach_add_(steps, 1)
    for p, g, st, group in todo:
        beta1, beta2 = group["betas"]
        torch._fused_adam_([p], [g], [st["exp_avg"]], [st["exp_avg_sq"]], [], [st["step"]],
                           lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
                           weight_decay=float(group["weight_decay"]), eps=float(group["eps"]),
                           amsgrad=False, maximize=False)
        if zero_grad:
            p.grad = None
