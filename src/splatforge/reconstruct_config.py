"""The config tree of one reconstruct job: :class:`ReconstructConfig`.

Every front door parses into it: ``splatforge reconstruct`` (its flags are the stage models'
fields), the HTTP job body (:class:`splatforge.service.routes_jobs.JobRequest`), the job JSON
a service worker reads back (:func:`splatforge.jobs.config.job_config`) and the AWS
environment and job file (:mod:`splatforge.aws`). It is also the ``config.json`` written
with the model. In the style of nerfstudio's config tree, each stage's model is a field::

    ReconstructConfig
      preset        the named preset whose values fill what the user did not give
      ingest        IngestConfig   video frames, blur filter, image checks
      sfm           SfmConfig      pycolmap features, matching, mapping
      scene         SceneConfig    data_factor, held-out split, masks, cache
      train         TrainConfig    steps, strategy, learning rates, ...
      eval          EvalConfig     LPIPS weights
      export        ExportConfig   which web formats are written next to the model

A config as parsed remembers which fields the user gave (pydantic's ``model_fields_set``,
nested); :func:`splatforge.presets.resolve_config` turns it into the resolved config that the
pipeline runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from .config import (IngestConfig, SceneConfig, SfmConfig, StageConfig, TrainConfig,
                     format_validation_error, parse_config)
from .errors import ConfigError

PresetName = Literal["preview", "default", "quality"]

#: The preset of every front door when none is named (the one place that names it).
DEFAULT_PRESET: PresetName = "default"


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


class EvalConfig(StageConfig):
    """Scoring the trained model on the held-out views."""

    lpips_weights: Path | None = Field(
        None, description="Local LPIPS weights for eval (never downloaded); without them "
                          "LPIPS is skipped and said so.")


class ExportConfig(StageConfig):
    """The web formats written next to the model folder."""

    spz: bool = Field(True, description="Write scene.spz (SPZ v4).")
    sog: bool = Field(True, description="Write scene.sog (PlayCanvas SOG bundle).")


class ReconstructConfig(StageConfig):
    """One reconstruct job: media in, a trained, evaluated and exported scene out."""

    preset: PresetName = Field(
        DEFAULT_PRESET, description="preview | default | quality: fills every option not "
                                    "given; options given win, also with their default "
                                    "value.")
    ingest: IngestConfig = IngestConfig()
    sfm: SfmConfig = SfmConfig()
    scene: SceneConfig = SceneConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    target_width: int | None = Field(
        None, ge=16, le=100_000,
        description="Images about this many pixels wide: scene.data_factor, when not given, "
                    "is chosen from the dataset's image width at run time (preview: 200).")
    sfm_enabled: bool = Field(
        True, description="False: the input must be a posed dataset (no SfM).")
    train_enabled: bool = Field(
        True, description="False: stop after SfM (ingest + sfm only).")
    force: bool = Field(False, description="Redo every stage.")

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config") -> "ReconstructConfig":
        """Validate a config JSON object (the fields present are the ones given).

        Raises:
            ConfigError: naming each invalid field as ``stage.field``.
        """
        data = dict(data)
        for name, info in cls.model_fields.items():
            model = info.annotation
            if isinstance(data.get(name), dict) and isinstance(model, type) \
                    and issubclass(model, StageConfig):
                # each stage on its own, so that errors name the field as stage.field
                data[name] = parse_stage_config(name, model, data[name])
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, cls)) from None

    def given(self) -> dict[str, Any]:
        """The fields the user gave, nested, as JSON (what a job stores; ``preset`` always)."""
        out = self.model_dump(mode="json", exclude_unset=True)
        out["preset"] = self.preset
        return out
