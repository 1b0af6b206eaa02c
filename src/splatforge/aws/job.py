"""The job file of the AWS "Open Source 3D Reconstruction Toolbox for Gaussian Splats"
(aws-solutions-library-samples), read with a pydantic schema and run by splatforge.

A job file (values may be JSON booleans/numbers or the toolbox's strings ``"true"``,
``"300"``)::

    {"uuid": "...",
     "s3": {"bucketName": "...", "inputPrefix": "media-input", "inputKey": "video.mp4",
            "outputPrefix": "workflow-output"},
     "videoProcessing": {"maxNumImages": 300},
     "imageProcessing": {"filterBlurryImages": true},
     "sfm": {"enable": true, "softwareName": "colmap" | "glomap",
             "matchingMethod": "sequential" | "exhaustive" | "spatial"},
     "training": {"enable": true, "maxSteps": 15000, "model": "splatfacto"},
     "postProcessing": {"enableSpz": true, "enableSog": true}}

Mapping onto splatforge (see :meth:`JobSpec.pipeline_spec`): maxNumImages ->
``IngestConfig.max_num_images``; filterBlurryImages -> ``blur_filter_percent``
:data:`BLUR_FILTER_PERCENT`; softwareName colmap -> incremental mapping, glomap -> global
mapping (COLMAP's merged GLOMAP); matchingMethod -> ``SfmConfig.matching``; maxSteps ->
``max_steps``; model splatfacto / 3dgs -> the default strategy, splatfacto-mcmc / mcmc ->
MCMC, splatfacto-w -> the default strategy with ``appearance="embedding"``; enableSpz /
enableSog -> whether ``scene.spz`` (SPZ v4) / ``scene.sog`` (PlayCanvas SOG) are uploaded;
posePriors -> ``SfmConfig.pose_prior`` (known poses, triangulated instead of mapped):
usePosePriorColmapModelFiles -> the COLMAP model in the input (the input folder itself,
``sparse/0`` or ``sparse``), usePosePriorTransformJson -> the input's ``transforms.json``
(``poseIsWorldToCam`` -> ``pose_prior_world_to_cam``; sourceCoordinateName one of
:data:`POSE_SOURCES`). The input is
``s3://bucketName/inputPrefix/inputKey`` (an object: video, zip; or a folder of photos or a
COLMAP output); outputs go to ``s3://bucketName/outputPrefix/uuid/``. Unknown keys and values
are errors naming the field. The toolbox's keys that splatforge has no use for
(``instanceType``, ``useSpotInstance``, ``logVerbosity``, ``enableEnhancedFeatureExtraction``)
are accepted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote_plus

from pydantic import (AliasChoices, BaseModel, ConfigDict, Field, ValidationError,
                      field_validator)

from ..config import format_validation_error
from ..errors import ConfigError, InputError
from ..storage import S3Store, colmap_prefix, normalize_prefix
from ..reconstruct_config import ExportConfig, ReconstructConfig
from .task import AwsClients, StatusReporter, TaskOutcome, make_clients, run_worker

log = logging.getLogger("splatforge.aws")

#: Percentage of the blurriest photos dropped when imageProcessing.filterBlurryImages is true.
BLUR_FILTER_PERCENT = 10.0

#: training.model -> splatforge strategy
MODELS = {"splatfacto": "default", "3dgs": "default", "splatfacto-mcmc": "mcmc",
          "mcmc": "mcmc", "3dgs-mcmc": "mcmc", "splatfacto-w": "default"}

#: training.model -> TrainConfig.appearance (splatfacto-w: per-image appearance embeddings)
APPEARANCE = {"splatfacto-w": "embedding"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class S3Section(_Section):
    bucketName: str = Field(min_length=3, max_length=63,
                            pattern=r"^[a-z0-9][a-z0-9.\-]*[a-z0-9]$")
    inputPrefix: str = ""
    inputKey: str = Field("", description="A video/zip object or a folder under inputPrefix "
                                          "('' = everything under inputPrefix).")
    outputPrefix: str = ""

    @field_validator("inputPrefix", "outputPrefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return normalize_prefix(v.strip("/")) if v.strip("/") else ""

    @field_validator("inputKey")
    @classmethod
    def _key(cls, v: str) -> str:
        v = v.strip("/")
        if v:
            normalize_prefix(v)
        return v


class VideoProcessing(_Section):
    maxNumImages: int = Field(300, ge=3, le=100_000)
    videoStartTime: float | None = Field(None, ge=0)
    videoStopTime: float | None = Field(None, gt=0)


class ImageProcessing(_Section):
    filterBlurryImages: bool = False


#: transforms.json coordinate conventions accepted in sourceCoordinateName: all of them
#: camera-to-world (or world-to-camera with poseIsWorldToCam) with OpenGL camera axes.
POSE_SOURCES = ("arkit", "opengl", "nerfstudio", "instant-ngp")


class PoseJson(_Section):
    enable: bool = False
    sourceCoordinateName: str | None = None
    poseIsWorldToCam: bool | None = None

    @field_validator("sourceCoordinateName")
    @classmethod
    def _source(cls, v: str | None) -> str | None:
        if v is not None and v.strip().lower() not in POSE_SOURCES:
            raise ValueError(f"unsupported pose convention {v!r}; supported: "
                             + ", ".join(POSE_SOURCES) + " (OpenGL camera axes)")
        return v


class PosePriors(_Section):
    usePosePriorColmapModelFiles: bool = False
    usePosePriorTransformJson: PoseJson = PoseJson()


class SfmSection(_Section):
    enable: bool = True
    softwareName: Literal["colmap", "glomap"] = "colmap"
    matchingMethod: Literal["sequential", "exhaustive", "spatial"] | None = None
    enableEnhancedFeatureExtraction: bool = False
    posePriors: PosePriors = PosePriors()

    @field_validator("posePriors")
    @classmethod
    def _one_prior(cls, v: PosePriors) -> PosePriors:
        if v.usePosePriorColmapModelFiles and v.usePosePriorTransformJson.enable:
            raise ValueError("choose one pose prior: usePosePriorColmapModelFiles or "
                             "usePosePriorTransformJson, not both")
        return v


class TrainingSection(_Section):
    enable: bool = True
    maxSteps: int = Field(30_000, ge=1, le=10_000_000)
    model: Literal["splatfacto", "3dgs", "splatfacto-mcmc", "mcmc", "3dgs-mcmc",
                   "splatfacto-w"] = "splatfacto"


class PostProcessing(_Section):
    enableSpz: bool = True
    enableSog: bool = True


class JobSpec(_Section):
    """One toolbox job file (see the module docstring)."""

    uuid: str = Field(min_length=1, max_length=200)
    s3: S3Section
    videoProcessing: VideoProcessing = VideoProcessing()
    imageProcessing: ImageProcessing = ImageProcessing()
    sfm: SfmSection = Field(SfmSection(), validation_alias=AliasChoices("sfm", "reconstruction"))
    training: TrainingSection = TrainingSection()
    postProcessing: PostProcessing = PostProcessing()
    # toolbox keys with no meaning here
    instanceType: str | None = None
    useSpotInstance: bool | None = None
    logVerbosity: Literal["debug", "info", "error", "warning"] | None = None

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, v: str) -> str:
        colmap_prefix(v)  # one clean key segment: it names the output folder
        return v

    @property
    def output_prefix(self) -> str:
        """``outputPrefix/uuid/``."""
        return normalize_prefix(self.s3.outputPrefix + self.uuid)

    def pipeline_spec(self) -> ReconstructConfig:
        """The :class:`ReconstructConfig` of this job (the default preset for the rest)."""
        from ..config import IngestConfig, SfmConfig, TrainConfig

        vp = self.videoProcessing
        ingest = IngestConfig(
            max_num_images=vp.maxNumImages, start_time=vp.videoStartTime,
            stop_time=vp.videoStopTime,
            blur_filter_percent=BLUR_FILTER_PERCENT if self.imageProcessing.filterBlurryImages
            else 0.0)
        sfm_kw: dict[str, Any] = {
            "mapping": "global" if self.sfm.softwareName == "glomap" else "incremental"}
        if self.sfm.matchingMethod is not None:
            sfm_kw["matching"] = self.sfm.matchingMethod
        if self.sfm.enableEnhancedFeatureExtraction:
            sfm_kw["max_num_features"] = 16384
        priors = self.sfm.posePriors
        if priors.usePosePriorColmapModelFiles:
            sfm_kw["pose_prior"] = Path(".")  # the input's COLMAP model: ., sparse/0, sparse
        elif priors.usePosePriorTransformJson.enable:
            sfm_kw["pose_prior"] = Path("transforms.json")
            sfm_kw["pose_prior_world_to_cam"] = bool(
                priors.usePosePriorTransformJson.poseIsWorldToCam)
        train = TrainConfig(max_steps=self.training.maxSteps,
                            strategy=MODELS[self.training.model],
                            appearance=APPEARANCE.get(self.training.model, "none"))
        return ReconstructConfig(
            ingest=ingest, sfm=SfmConfig(**sfm_kw), train=train,
            train_enabled=self.training.enable, sfm_enabled=self.sfm.enable,
            export=ExportConfig(spz=self.postProcessing.enableSpz,
                                sog=self.postProcessing.enableSog))


def parse_job(data: Any, source: str = "job") -> JobSpec:
    """Validate a decoded job file.

    Raises:
        ConfigError: naming ``source`` and every invalid field (``s3.bucketName: ...``).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a job file is a JSON object, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: " + format_validation_error(err, JobSpec)) from None


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a job file.

    Raises:
        InputError: the file is missing or not JSON. ConfigError: invalid fields.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "job file not found") from None
    except OSError as e:
        raise InputError(path, f"cannot read job file ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON (line {e.lineno}, column {e.colno}: "
                               f"{e.msg})") from None
    return parse_job(data, str(path))


def run_job(job: JobSpec, environ: Mapping[str, str] | None = None, *,
            clients: AwsClients | None = None, work_dir: str | Path | None = None
            ) -> TaskOutcome:
    """Run a job: download its input, reconstruct, upload to ``outputPrefix/uuid/``.

    Status goes where the environment says, as for ``aws-task``: ``SCENES_TABLE`` (item id
    = the job's uuid) and ``SFN_TASK_TOKEN`` (both optional); clients from the usual AWS
    variables.
    """
    env = os.environ if environ is None else environ
    if clients is None:
        clients = make_clients(env)
    table = (env.get("SCENES_TABLE") or "").strip() or None
    token = (env.get("SFN_TASK_TOKEN") or "").strip() or None
    try:
        heartbeat = float(env.get("HEARTBEAT_SECONDS") or 60)
    except ValueError:
        raise ConfigError(f"HEARTBEAT_SECONDS: not a number ({env.get('HEARTBEAT_SECONDS')!r})"
                          ) from None
    reporter = StatusReporter(job.uuid, table, token, clients, heartbeat)
    store = S3Store(job.s3.bucketName, "", client=clients.s3)
    return run_worker(scene_id=job.uuid, store=store, input_prefix=job.s3.inputPrefix,
                      input_key=job.s3.inputKey or None, output_prefix=job.output_prefix,
                      spec=job.pipeline_spec(), reporter=reporter,
                      work_dir=Path(work_dir) if work_dir else None)


def handle_s3_event(event: Mapping[str, Any], context: Any = None, *,
                    environ: Mapping[str, str] | None = None,
                    clients: AwsClients | None = None) -> dict[str, Any]:
    """A Lambda-style handler for S3 ``ObjectCreated`` events on job files.

    For each record: read the job file from S3, validate it, and start it -- as an execution
    of ``STATE_MACHINE_ARN`` (the job as input, named after its uuid) when that variable is
    set, else by running it here (:func:`run_job`).

    Returns:
        ``{"jobs": [{"key", "uuid", "status", ...}]}``: status ``started`` (with
        ``executionArn``), ``complete`` / ``failed`` (run here), ``invalid`` (with
        ``error``) for a job file that does not validate, ``error`` for one that cannot be
        read.
    """
    env = os.environ if environ is None else environ
    if clients is None:
        clients = make_clients(env)
    results = []
    for rec in event.get("Records") or []:
        s3 = rec.get("s3") or {}
        bucket = (s3.get("bucket") or {}).get("name")
        key = unquote_plus((s3.get("object") or {}).get("key") or "")
        if not bucket or not key:
            results.append({"key": key, "status": "invalid",
                            "error": "the event record names no bucket/key"})
            continue
        source = f"s3://{bucket}/{key}"
        try:
            body = clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as e:  # noqa: BLE001  (one unreadable record must not stop the rest)
            log.error("%s: cannot read the job file: %s", source, e)
            results.append({"key": key, "status": "error",
                            "error": f"{source}: cannot read the job file: {e}"})
            continue
        try:
            job = parse_job(json.loads(body), source)
        except (ConfigError, ValueError) as e:
            log.error("%s", e)
            results.append({"key": key, "status": "invalid", "error": str(e)})
            continue
        arn = (env.get("STATE_MACHINE_ARN") or "").strip()
        if arn:
            r = clients.sfn.start_execution(stateMachineArn=arn, name=job.uuid,
                                            input=job.model_dump_json(by_alias=True))
            results.append({"key": key, "uuid": job.uuid, "status": "started",
                            "executionArn": r["executionArn"]})
        else:
            out = run_job(job, env, clients=clients)
            results.append({"key": key, "uuid": job.uuid,
                            "status": "complete" if out.exit_code == 0 else "failed",
                            "error": out.error, "outputs": out.outputs})
    return {"jobs": results}


def main(job_file: str | Path) -> int:
    """``splatforge submit-job job.json``: returns the exit status."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    job = load_job(job_file)
    out = run_job(job)
    if out.exit_code == 0:
        print(json.dumps(out.payload, indent=2))
    return out.exit_code
