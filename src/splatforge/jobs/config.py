"""A job's configuration JSON: a :class:`~splatforge.reconstruct_config.ReconstructConfig`'s
given fields. Validated where the request arrives
(:class:`splatforge.service.routes_jobs.JobRequest`, the job file of :mod:`splatforge.aws.job`)
and parsed again only where a job's stored JSON is read back (:func:`job_config`, in the
worker).
"""

from __future__ import annotations

from typing import Any

from ..reconstruct_config import ReconstructConfig, parse_stage_config

__all__ = ["DELIVERY_KEYS", "job_config", "parse_stage_config"]

#: Keys of a stored job config that are not reconstruction options (the service's own).
DELIVERY_KEYS = ("notify_url",)


def job_config(config: dict[str, Any], train_gpus: int = 1) -> ReconstructConfig:
    """The :class:`ReconstructConfig` of a job's stored config JSON (the keys present are
    the fields given). ``train_gpus`` > 1 (a worker that owns several GPUs) becomes
    ``train.gpus`` unless the job's train config sets ``gpus`` itself.

    Raises:
        ConfigError: an invalid value (the field named as ``stage.field``).
    """
    data = {k: v for k, v in config.items() if k not in DELIVERY_KEYS and v is not None}
    if train_gpus > 1 and "gpus" not in (data.get("train") or {}):
        data["train"] = {**(data.get("train") or {}), "gpus": train_gpus}
    return ReconstructConfig.from_json(data)
