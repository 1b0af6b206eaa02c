"""A job's configuration JSON: validated once where the request arrives
(:class:`splatforge.service.routes_jobs.JobRequest`, the job file of :mod:`splatforge.aws.job`)
and parsed again only where a job file is read back (:func:`job_configs`, in the worker).
"""

from __future__ import annotations

from typing import Any

from ..config import IngestConfig, SceneConfig, SfmConfig, TrainConfig, parse_config
from ..errors import ConfigError
from ..presets import DEFAULT_PRESET

#: Stage name -> config model of a job's config JSON.
STAGE_MODELS = {"ingest": IngestConfig, "sfm": SfmConfig, "scene": SceneConfig,
                "train": TrainConfig}


def parse_stage_config(stage: str, model: Any, data: dict[str, Any]) -> Any:
    """``model`` validated from ``data``; errors name fields as ``stage.field``.

    Raises:
        ConfigError: naming each invalid field, its value and the allowed range.
    """
    try:
        return parse_config(model, data, prefix=f"{stage}.")
    except ConfigError as e:
        msg = str(e)
        if f"\n  {stage}." not in msg:
            msg = msg.replace("\n  ", f"\n  {stage}.")
        raise ConfigError(msg) from None


def job_configs(config: dict[str, Any], train_gpus: int = 1) -> dict[str, Any]:
    """``run_reconstruct`` keyword arguments (``preset`` and the stage configs) from a job's
    stored config JSON. ``train_gpus`` > 1 (a worker that owns several GPUs) becomes
    ``train.gpus`` unless the job's train config sets ``gpus`` itself.

    Raises:
        ConfigError: an invalid value (the field named).
    """
    out: dict[str, Any] = {"preset": config.get("preset") or DEFAULT_PRESET}
    for name, model in STAGE_MODELS.items():
        if config.get(name) is not None:
            out[name] = parse_stage_config(name, model, config[name])
    if train_gpus > 1 and "gpus" not in (config.get("train") or {}):
        out["train"] = (out.get("train") or TrainConfig()).model_copy(
            update={"gpus": train_gpus})
    return out
