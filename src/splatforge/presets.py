"""Named bundles of stage settings for ``splatforge reconstruct --preset NAME``.

A preset is a :class:`~splatforge.reconstruct_config.ReconstructConfig` instance (gsplat's
and nerfstudio's way). :func:`resolve_config` lays the fields the user gave (nested
``model_fields_set``: given on the command line, in the HTTP job body or in a job file) over
the preset named by the config, so the preset fills only what was not given. Any field the
user gives wins, also when it equals the model default (``--preset preview --strategy mcmc``
trains with MCMC).

Every front door (``splatforge reconstruct``, ``POST /scenes/{id}/jobs``, the AWS worker and
job files) uses :data:`DEFAULT_PRESET` when no preset is named.

Presets:

* ``preview``: fast, small; a few minutes on a 2-core CPU for ~80 photos of ~375x250 px.
  SfM at <= 800 px with 4096 SIFT features (2048 registered only 11 of the 84 downscaled
  plush_dog photos; 4096 registered 80), images downscaled so they are about 200 px wide
  (``target_width`` 200: ``data_factor`` chosen from the image width at run time, see
  :func:`preview_data_factor`),
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

from typing import Any

from pydantic import BaseModel

from .config import IngestConfig, SfmConfig, TrainConfig
from .errors import ConfigError
from .reconstruct_config import DEFAULT_PRESET, PresetName, ReconstructConfig

__all__ = ["DEFAULT_PRESET", "PRESETS", "PresetName", "preview_data_factor", "resolve_config"]

#: preview: target image width in pixels for the automatic data_factor.
PREVIEW_TARGET_WIDTH = 200

#: The presets, as config instances: the fields each one gives are its values.
PRESETS: dict[str, ReconstructConfig] = {
    "preview": ReconstructConfig(
        preset="preview",
        ingest=IngestConfig(max_num_images=120),
        sfm=SfmConfig(max_image_size=800, max_num_features=4096),
        train=TrainConfig(max_steps=300, strategy="default", sh_degree=1,
                          sh_degree_interval=100, densify_from_iter=50,
                          densification_interval=50, densify_until_iter=250,
                          opacity_reset_interval=100_000, log_every=25),
        target_width=PREVIEW_TARGET_WIDTH),
    "default": ReconstructConfig(preset="default"),
    "quality": ReconstructConfig(
        preset="quality",
        sfm=SfmConfig(max_num_features=16384),
        train=TrainConfig(max_steps=40_000, save_steps=[7000, 30_000], antialiased=True,
                          densify_until_iter=20_000)),
}


def preview_data_factor(width: int, target: int = PREVIEW_TARGET_WIDTH) -> int:
    """The largest factor in 1, 2, 4, 8 that keeps ``width / factor >= target * 0.75``
    (images about ``target`` px wide, never much smaller)."""
    best = 1
    for f in (2, 4, 8):
        if width / f >= target * 0.75:
            best = f
    return best


def _given(model: BaseModel) -> dict[str, Any]:
    """The fields of ``model`` in its ``model_fields_set``, nested models followed."""
    out: dict[str, Any] = {}
    for name in model.model_fields_set:
        value = getattr(model, name)
        out[name] = _given(value) if isinstance(value, BaseModel) else value
    return out


def _overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def resolve_config(config: ReconstructConfig) -> ReconstructConfig:
    """``config``'s preset with the fields the user gave laid over it: the config the
    pipeline runs (every field set, so resolving it again changes nothing).

    A preset's ``save_steps`` beyond the resolved ``max_steps`` are dropped; a
    ``scene.data_factor`` the user gave turns the preset's ``target_width`` off.

    Raises:
        ConfigError: an unknown preset, or a combination that is invalid once the preset's
            values are in (naming the field).
    """
    preset = PRESETS.get(config.preset)
    if preset is None:
        raise ConfigError(f"preset: unknown preset {config.preset!r} "
                          f"(allowed: {', '.join(PRESETS)})")
    given = _given(config)
    data = _overlay(preset.model_dump(), given)
    train_given = given.get("train", {})
    if "save_steps" not in train_given and data["train"]["save_steps"] is not None:
        data["train"]["save_steps"] = [k for k in data["train"]["save_steps"]
                                       if k <= data["train"]["max_steps"]]
    if "data_factor" in given.get("scene", {}) and "target_width" not in given:
        data["target_width"] = None
    return ReconstructConfig.from_json(data)
