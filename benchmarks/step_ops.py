"""Per-step host+device cost of two small parts of a training step, old way against new way.

* Adam: six ``torch.optim.Adam(fused=True)`` (one per splat parameter, as gsplat's strategies
  need), stepped with ``opt.step(); opt.zero_grad(set_to_none=True)`` each, against
  :func:`splatforge.train.optim.fused_adam_step` over the same six.
* MCMC position noise: gsplat 1.5.3 ``strategy.ops.inject_noise_to_position`` against
  :func:`splatforge.train.mcmc_noise.inject_position_noise_` (one ``randn`` + one Triton kernel).

Each timing is the wall time of ``--iters`` back-to-back calls followed by one
``torch.cuda.synchronize()``, divided by ``--iters`` (so it includes the Python launch cost, which
is what a host-bound training loop pays), repeated ``--repeats`` times; the table shows medians.

Usage on a CUDA machine: ``python benchmarks/step_ops.py [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import splatforge  # noqa: F401  (import-order guard)

SH_REST = 15  # SH degree 3


def make_params(n: int, device: str):
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    shapes = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,),
              "sh0": (n, 1, 3), "shN": (n, SH_REST, 3)}
    return {k: torch.nn.Parameter(torch.randn(s, device=device, generator=g))
            for k, s in shapes.items()}


def timed(fn, iters: int, repeats: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) / iters * 1e3)
    return statistics.median(out)


def main() -> None:
    import torch
    from gsplat.strategy.ops import inject_noise_to_position

    from splatforge.train.mcmc_noise import inject_position_noise_
    from splatforge.train.optim import fused_adam_step

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[47_000, 150_000, 1_000_000])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = "cuda"
    rows = []
    for n in args.sizes:
        params = make_params(n, dev)
        lrs = {"means": 1e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3,
               "shN": 1.25e-4}
        opts = {k: torch.optim.Adam([{"params": [p], "lr": lrs[k], "name": k}], eps=1e-15,
                                    fused=True) for k, p in params.items()}
        grads = {k: torch.randn_like(p) * 1e-3 for k, p in params.items()}

        def set_grads():
            for k, p in params.items():
                p.grad = grads[k]

        def adam_torch():
            set_grads()
            for o in opts.values():
                o.step()
                o.zero_grad(set_to_none=True)

        def adam_fused():
            set_grads()
            fused_adam_step(opts.values())

        def noise_gsplat():
            inject_noise_to_position(params=params, optimizers=opts, state={}, scaler=1e-3)

        def noise_fused():
            inject_position_noise_(params["means"].data, params["quats"].data,
                                   params["scales"].data, params["opacities"].data, 1e-3)

        with torch.no_grad():
            t = {name: timed(fn, args.iters, args.repeats) for name, fn in (
                ("adam_torch", adam_torch), ("adam_fused_step", adam_fused),
                ("noise_gsplat", noise_gsplat), ("noise_fused", noise_fused))}
        row = {"gaussians": n, **{k: round(v, 4) for k, v in t.items()},
               "adam_ratio": round(t["adam_fused_step"] / t["adam_torch"], 3),
               "noise_ratio": round(t["noise_fused"] / t["noise_gsplat"], 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}; ms per call, median "
          f"of {args.repeats} x {args.iters} calls\n")
    cols = ["gaussians", "adam_torch", "adam_fused_step", "adam_ratio", "noise_gsplat",
            "noise_fused", "noise_ratio"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
