"""Named bundles of stage settings for ``splatforge reconstruct --preset NAME``.

A preset fills only the fields the user did not give: for every field of ``IngestConfig``,
``SfmConfig``, ``SceneConfig`` and ``TrainConfig`` that is not in the model's
``model_fields_set`` (the fields given on the command line, in the HTTP job body or in a job
file), the preset's value (if it has one) is used. Any field the user gives wins, also when
it equals the model default (``--preset preview --strategy mcmc`` trains with MCMC).

Every front door (``splatforge reconstruct``, ``POST /scenes/{id}/jobs``, the AWS worker and
job files) uses :data:`DEFAULT_PRESET` when no preset is named.

Presets:

* ``preview``: fast, small; a few minutes on a 2-core CPU for ~80 photos of ~375x250 px.
  SfM at <= 800 px with 4096 SIFT features (2048 registered only 11 of the 84 downscaled
  plush_dog photos; 4096 registered 80), images downscaled so they are about 200 px wide
  (``data_factor`` chosen from the image width at run time, see :func:`preview_data_factor`),
  300 steps, SH degree 1 (raised at step 100), densification every 50 steps from step 50 to
  250 (INRIA's 500..15000 every 100 of 30000, compressed), no opacity reset (too few steps to
  recover from one), and the INRIA clone/split strategy: MCMC's growth of 5 % per refinement
  would leave 300 steps with a few more Gaussians than SfM points. Measured on the shipped
  sample (2 idle cores): 54 s in all, held-out PSNR 23.4 dB / SSIM 0.899; 1000 steps took
  3 min 55 s for 23.0 dB / 0.909, so the preview stays short.
* ``default``: the model defaults: 30000 steps, SH degree 3, full resolution, INRIA's losses,
  learning rates and schedule, and the MCMC strategy (Kheradmand et al. 2024) with a Gaussian
  budget of 15x the SfM points (at most 1M) instead of INRIA's clone/split, whose growth made
  held-out PSNR fall on the plush_dog capture (benchmarks/NOTES.md).
* ``quality``: the default recipe with 16384 SIFT features, antialiased (Mip-Splatting)
  rasterization and 40000 steps with refinement until 20000. (AbsGS gradients, which this
  preset used with the INRIA strategy, only change that strategy's growth threshold.)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

PresetName = Literal["preview", "default", "quality"]

#: The preset of every front door when none is named: the model defaults.
DEFAULT_PRESET: PresetName = "default"

#: stage -> field -> value. ``scene.data_factor`` of ``preview`` is "auto" (resolved from the
#: image width by :func:`preview_data_factor`).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "preview": {
        "ingest": {"max_num_images": 120},
        "sfm": {"max_image_size": 800, "max_num_features": 4096},
        "scene": {"data_factor": "auto"},
        "train": {"max_steps": 300, "strategy": "default", "sh_degree": 1,
                  "sh_degree_interval": 100, "densify_from_iter": 50,
                  "densification_interval": 50, "densify_until_iter": 250,
                  "opacity_reset_interval": 100_000, "log_every": 25},
    },
    "default": {},
    "quality": {
        "sfm": {"max_num_features": 16384},
        "train": {"max_steps": 40_000, "save_steps": [7000, 30_000], "antialiased": True,
                  "densify_until_iter": 20_000},
    },
}

#: preview: target image width in pixels for the automatic data_factor.
PREVIEW_TARGET_WIDTH = 200


def preview_data_factor(width: int, target: int = PREVIEW_TARGET_WIDTH) -> int:
    """The largest factor in 1, 2, 4, 8 that keeps ``width / factor >= target * 0.75``
    (images about ``target`` px wide, never much smaller)."""
    best = 1
    for f in (2, 4, 8):
        if width / f >= target * 0.75:
            best = f
    return best


def apply_preset(name: str, configs: dict[str, BaseModel]) -> tuple[dict[str, BaseModel],
                                                                   dict[str, Any]]:
    """Fill the fields the user did not give with preset ``name``'s values.

    Args:
        name: ``preview`` | ``default`` | ``quality``.
        configs: stage name (``ingest``, ``sfm``, ``scene``, ``train``) -> config model; its
            ``model_fields_set`` are the fields the user gave (they are kept as they are).

    Returns:
        ``(new configs, deferred)``: copies with the preset applied, and values that need the
        data to resolve (``{"scene.data_factor": "auto"}``).

    Raises:
        ConfigError: unknown preset name.
    """
    from .errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r} (allowed: {', '.join(PRESETS)})")
    out: dict[str, BaseModel] = {}
    deferred: dict[str, Any] = {}
    for stage, cfg in configs.items():
        values = PRESETS[name].get(stage, {})
        data = cfg.model_dump()
        upd = {}
        for field, value in values.items():
            if field in cfg.model_fields_set:
                continue  # the user gave it
            if value == "auto":
                deferred[f"{stage}.{field}"] = value
                continue
            upd[field] = value
        if "save_steps" in upd:  # a preset's save steps beyond a user's max_steps are dropped
            last = upd.get("max_steps", data.get("max_steps"))
            upd["save_steps"] = [k for k in upd["save_steps"] if k <= last]
        new = type(cfg).model_validate({**data, **upd})
        out[stage] = new
    return out, deferred
