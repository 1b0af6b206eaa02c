"""``splatforge aws-task``: one GPU container step of an AWS Step Functions workflow.

The contract (the one existing splat-training containers follow)::

    environment   BUCKET, SCENE_ID (required); ITERATIONS (30000), DENSIFY_UNTIL_ITER (15000),
                  DENSIFICATION_INTERVAL (100), DATA_FACTOR (1: 1|2|4|8), SCENES_TABLE,
                  SFN_TASK_TOKEN (optional), INPUT_PREFIX (colmap/{SCENE_ID}/),
                  OUTPUT_PREFIX (outputs/{SCENE_ID}/), AWS_ENDPOINT_URL and the usual AWS
                  variables; splatforge's own optional HEARTBEAT_SECONDS (60), WORK_DIR
                  (a temporary folder, removed at the end; a given WORK_DIR is kept, and a
                  re-run on it resumes training from its last checkpoint).
    input         s3://BUCKET/INPUT_PREFIX: a COLMAP output (sparse/0/, images/), validated
                  before training; or photos / a video / a zip (ingest + SfM run first).
    output        s3://BUCKET/OUTPUT_PREFIX: the INRIA model directory
                  (point_cloud/iteration_N/point_cloud.ply, cameras.json, cfg_args,
                  input.ply), metrics.json, scene.splat, scene.spz, reconstruct.json,
                  eval/metrics.csv. Each object is complete or absent; when any upload fails
                  for good, the objects this run already uploaded are deleted again.
    DynamoDB      SCENES_TABLE item id = SCENE_ID: processingStage downloading ->
                  training_3dgs -> uploading -> complete | failed; progress (0..1, throttled
                  to one write per PROGRESS_MIN_INTERVAL_S); pipelineStage (ingest, sfm,
                  train, eval, export); on failure error = "gsplat failed at {stage}:
                  {message}"; updatedAt (ISO 8601 UTC).
    Step Functions  SFN_TASK_TOKEN: send_task_heartbeat every HEARTBEAT_SECONDS from a
                  background thread while running; send_task_success with {"sceneId",
                  "iterations", "status": "training_complete", "outputs": [s3 URIs]}, or
                  send_task_failure(error="TrainingError", cause=message) on any failure,
                  an invalid environment included.
    exit status   0 done, 1 failed, 2 invalid environment.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from ..errors import ConfigError, InputError, SplatforgeError
from ..settings_env import EnvSettings
from ..events import Event
from ..reconstruct_config import ReconstructConfig
from ..jobs.sink import JobStopped
from ..storage import (InvalidKey, ObjectNotFound, S3Store, colmap_prefix, normalize_prefix,
                       outputs_prefix, validate_key)

log = logging.getLogger("splatforge.aws")

#: The processingStage values, in order (plus ``failed``).
STAGES = ("downloading", "training_3dgs", "uploading", "complete")
#: Stage named in the error of a run that failed before downloading (invalid environment).
STARTING = "starting"
#: splatforge stages recorded as pipelineStage.
PIPELINE_STAGES = ("ingest", "sfm", "train", "eval", "export")
#: Error name given to Step Functions' send_task_failure.
SFN_ERROR = "TrainingError"
#: Progress writes to DynamoDB are at most this often (seconds), except the last one.
PROGRESS_MIN_INTERVAL_S = 2.0

#: environment variable -> TaskSettings field
ENV_FIELDS = {
    "BUCKET": "bucket", "SCENE_ID": "scene_id", "ITERATIONS": "iterations",
    "DENSIFY_UNTIL_ITER": "densify_until_iter",
    "DENSIFICATION_INTERVAL": "densification_interval", "DATA_FACTOR": "data_factor",
    "SCENES_TABLE": "scenes_table", "SFN_TASK_TOKEN": "sfn_task_token",
    "INPUT_PREFIX": "input_prefix", "OUTPUT_PREFIX": "output_prefix",
    "AWS_ENDPOINT_URL": "endpoint_url", "HEARTBEAT_SECONDS": "heartbeat_seconds",
    "WORK_DIR": "work_dir", "SNS_TOPIC_ARN": "sns_topic_arn",
    "SPLATFORGE_NOTIFY_URL": "notify_url", "SPLATFORGE_NOTIFY_SECRET": "notify_secret",
}
_FIELD_ENV = {v: k for k, v in ENV_FIELDS.items()}



def _env(field_name: str, **kw: Any) -> Any:
    """A field read from its environment variable (:data:`ENV_FIELDS`), also settable by
    name."""
    return Field(validation_alias=AliasChoices(field_name, _FIELD_ENV[field_name]), **kw)


class TaskSettings(EnvSettings):
    """The validated environment of one task (see the module docstring for each variable):
    a ``pydantic-settings`` model read once at start-up (:meth:`from_env`)."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True,
                                      populate_by_name=True)

    bucket: str = _env("bucket", min_length=3, max_length=63,
                       pattern=r"^[a-z0-9][a-z0-9.\-]*[a-z0-9]$")
    scene_id: str = _env("scene_id", min_length=1, max_length=512)
    iterations: int = _env("iterations", default=30_000, ge=1, le=10_000_000)
    densify_until_iter: int = _env("densify_until_iter", default=15_000, ge=0, le=10_000_000)
    densification_interval: int = _env("densification_interval", default=100, ge=1,
                                       le=1_000_000)
    data_factor: int = _env("data_factor", default=1)
    scenes_table: str | None = _env("scenes_table", default=None)
    sfn_task_token: str | None = _env("sfn_task_token", default=None)
    input_prefix: str = _env("input_prefix", default="")
    output_prefix: str = _env("output_prefix", default="")
    endpoint_url: str | None = _env("endpoint_url", default=None)
    heartbeat_seconds: float = _env("heartbeat_seconds", default=60.0, gt=0, le=3600)
    work_dir: Path | None = _env("work_dir", default=None)
    sns_topic_arn: str | None = _env("sns_topic_arn", default=None,
                                     pattern=r"^arn:[\w-]+:sns:[\w-]*:\d*:[\w.-]+$")
    notify_url: str | None = _env("notify_url", default=None, max_length=2048,
                                  pattern=r"^https?://\S+$")
    notify_secret: str | None = _env("notify_secret", default=None)

    @field_validator("scene_id")
    @classmethod
    def _scene_id(cls, v: str) -> str:
        colmap_prefix(v)  # one clean key segment, else InvalidKey (a ValueError)
        return v

    @field_validator("data_factor")
    @classmethod
    def _factor(cls, v: int) -> int:
        if v not in (1, 2, 4, 8):
            raise ValueError("must be 1, 2, 4 or 8")
        return v

    @field_validator("input_prefix", "output_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return normalize_prefix(v) if v else v

    @model_validator(mode="after")
    def _default_prefixes(self) -> "TaskSettings":
        if not self.input_prefix:
            self.input_prefix = colmap_prefix(self.scene_id)
        if not self.output_prefix:
            self.output_prefix = outputs_prefix(self.scene_id)
        return self


# -- AWS clients --------------------------------------------------------------------------

@dataclass
class AwsClients:
    """The boto3 clients a task uses (S3, DynamoDB, Step Functions)."""

    s3: Any
    dynamodb: Any = None
    sfn: Any = None
    sns: Any = None


def make_clients(environ: Mapping[str, str], endpoint_url: str | None = None) -> AwsClients:
    """boto3 clients from the usual AWS variables of ``environ`` (credentials, region,
    ``AWS_ENDPOINT_URL`` and the per-service ``AWS_ENDPOINT_URL_S3`` /
    ``_DYNAMODB`` / ``_SFN``), with botocore's ``standard`` retry mode
    (``AWS_MAX_ATTEMPTS`` attempts per request, default 5)."""
    import boto3
    from botocore.config import Config

    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    session = boto3.session.Session(
        aws_access_key_id=environ.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=environ.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=environ.get("AWS_SESSION_TOKEN"), region_name=region)
    cfg = Config(retries={"total_max_attempts": int(environ.get("AWS_MAX_ATTEMPTS") or 5),
                          "mode": "standard"}, max_pool_connections=32)

    def client(service: str, env_suffix: str) -> Any:
        ep = environ.get(f"AWS_ENDPOINT_URL_{env_suffix}") or endpoint_url \
            or environ.get("AWS_ENDPOINT_URL")
        return session.client(service, endpoint_url=ep or None, config=cfg)

    return AwsClients(s3=client("s3", "S3"), dynamodb=client("dynamodb", "DYNAMODB"),
                      sfn=client("stepfunctions", "SFN"), sns=client("sns", "SNS"))


# -- status: DynamoDB + Step Functions ------------------------------------------------------

def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class StatusReporter:
    """Writes the job's state to DynamoDB and Step Functions (each optional): the AWS
    worker's :class:`splatforge.jobs.JobSink` (``on_event``, ``set_stage``,
    ``should_stop``; a SIGTERM from ECS / AWS Batch sets the stop reason ``terminated``).

    Args:
        scene_id: the item key (``id``).
        table: DynamoDB table name, or None (no writes).
        task_token: Step Functions task token, or None.
        clients: boto3 clients.
        heartbeat_seconds: interval of the heartbeat thread.
        progress_interval_s: minimum seconds between two progress writes.
    """

    def __init__(self, scene_id: str, table: str | None, task_token: str | None,
                 clients: AwsClients, heartbeat_seconds: float = 60.0,
                 progress_interval_s: float = PROGRESS_MIN_INTERVAL_S):
        self.scene_id = scene_id
        self.table = table
        self.token = task_token
        self.clients = clients
        self.heartbeat_seconds = heartbeat_seconds
        self.progress_interval_s = progress_interval_s
        self.stage = STARTING
        self.heartbeats = 0
        self.progress_writes = 0
        self._last_progress_t = 0.0
        self._last_progress = -1.0
        self._pipeline_stage: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token_dead = False
        self.stop_reason: str | None = None

    def should_stop(self) -> str | None:
        """The sink's stop hook: ``terminated`` after :meth:`request_stop`, else None."""
        return self.stop_reason

    def request_stop(self, reason: str = "terminated") -> None:
        """Stop at the next stage boundary or training step (safe in a signal handler)."""
        self.stop_reason = self.stop_reason or reason

    # DynamoDB ------------------------------------------------------------------------
    def _update(self, values: dict[str, Any], remove: tuple[str, ...] = ()) -> None:
        if not self.table:
            return
        from boto3.dynamodb.types import TypeSerializer

        ser = TypeSerializer()
        values = {**values, "updatedAt": _now_iso()}
        names = {f"#{k}": k for k in values} | {f"#{k}": k for k in remove}
        expr = "SET " + ", ".join(f"#{k} = :{k}" for k in values)
        if remove:
            expr += " REMOVE " + ", ".join(f"#{k}" for k in remove)
        self.clients.dynamodb.update_item(
            TableName=self.table, Key={"id": {"S": self.scene_id}}, UpdateExpression=expr,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={f":{k}": ser.serialize(v) for k, v in values.items()})

    def check_table(self) -> None:
        """Fail early when SCENES_TABLE names no table (ConfigError)."""
        if not self.table:
            return
        try:
            self.clients.dynamodb.describe_table(TableName=self.table)
        except Exception as e:  # noqa: BLE001
            code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
            if code == "ResourceNotFoundException":
                raise ConfigError(f"SCENES_TABLE: table {self.table!r} does not exist") from None
            log.warning("cannot check SCENES_TABLE %s (%s); continuing", self.table, e)

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        log.info("scene %s: %s", self.scene_id, stage)
        self._update({"processingStage": stage, "progress": Decimal(0)}, remove=("error",))
        self._last_progress, self._last_progress_t = 0.0, time.monotonic()

    def progress(self, fraction: float, pipeline_stage: str | None = None) -> None:
        """Record progress (0..1) of the current stage; throttled (see the class)."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        changed_stage = pipeline_stage is not None and pipeline_stage != self._pipeline_stage
        if not changed_stage and (fraction == self._last_progress or (
                now - self._last_progress_t < self.progress_interval_s and fraction < 1.0)):
            return
        self._last_progress, self._last_progress_t = fraction, now
        values: dict[str, Any] = {"progress": Decimal(str(round(fraction, 4)))}
        if pipeline_stage is not None:
            self._pipeline_stage = pipeline_stage
            values["pipelineStage"] = pipeline_stage
        self.progress_writes += 1
        try:
            self._update(values)
        except Exception as e:  # noqa: BLE001  (progress is advisory; the job goes on)
            log.warning("progress update failed: %s", e)

    def on_event(self, ev: Event) -> None:
        """The sink's events callback: training steps become progress; stage starts are
        recorded."""
        if ev.kind == "stage_started" and ev.stage in PIPELINE_STAGES:
            self.progress(self._last_progress if ev.stage != "train" else 0.0,
                          pipeline_stage=ev.stage)
        elif ev.kind == "progress" and ev.stage == "train" and ev.total and ev.step:
            self.progress(ev.step / ev.total)
        elif ev.kind == "warning":
            log.warning("%s: %s", ev.stage, ev.message)

    events = on_event

    def complete(self, payload: dict[str, Any]) -> None:
        self.stage = "complete"
        self._update({"processingStage": "complete", "progress": Decimal(1),
                      "outputs": payload["outputs"], "iterations": payload["iterations"]})
        if self.token:
            self._stop_heartbeats()  # none may follow the success: the token is spent
            self.clients.sfn.send_task_success(taskToken=self.token,
                                               output=json.dumps(payload))
        log.info("scene %s: complete, %d objects", self.scene_id, len(payload["outputs"]))

    def failed(self, stage: str, message: str) -> str:
        """Record the failure everywhere possible; returns the error text."""
        error = f"gsplat failed at {stage}: {message}"
        log.error("scene %s: %s", self.scene_id, error)
        try:
            self._update({"processingStage": "failed", "error": error})
        except Exception as e:  # noqa: BLE001
            log.error("could not record the failure in %s: %s", self.table, e)
        if self.token:
            self._stop_heartbeats()
            try:
                self.clients.sfn.send_task_failure(taskToken=self.token, error=SFN_ERROR,
                                                   cause=error[:32768])
            except Exception as e:  # noqa: BLE001
                log.error("could not send the task failure to Step Functions: %s", e)
        return error

    # heartbeats ------------------------------------------------------------------------
    def heartbeat(self) -> None:
        if not self.token or self._token_dead:
            return
        try:
            self.clients.sfn.send_task_heartbeat(taskToken=self.token)
            self.heartbeats += 1
        except Exception as e:  # noqa: BLE001
            code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("TaskTimedOut", "TaskDoesNotExist", "InvalidToken"):
                self._token_dead = True
            log.warning("heartbeat failed: %s", e)

    def __enter__(self) -> "StatusReporter":
        if self.token:
            self.heartbeat()
            self._thread = threading.Thread(target=self._beat, name="sfn-heartbeat",
                                            daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            self.heartbeat()

    def _stop_heartbeats(self) -> None:
        """Stop the heartbeat thread and wait for a heartbeat in flight, so that none is sent
        after the task's success or failure (Step Functions answers it with InvalidToken)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __exit__(self, *exc: Any) -> None:
        self._stop_heartbeats()


# -- the stages -------------------------------------------------------------------------------

def plan_task_input(path: Path, spec: Any, origin: str, events: Any = None) -> Any:
    """The downloaded input planned once (:func:`splatforge.pipeline.plan_input`: the config
    resolved, the input classified, messages naming ``origin``), and a posed dataset read
    and checked before any training; the pipeline runs this plan and reuses the loaded scene.

    Returns:
        the :class:`splatforge.pipeline.InputPlan`.

    Raises:
        InputError: neither a posed dataset nor media; photos while SfM is disabled; the
            dataset's model is unreadable or corrupt, or images are missing (the message
            names the object under ``origin``).
    """
    from ..pipeline import plan_input

    plan = plan_input(path, spec, label=origin)
    if plan.dataset is None:
        return plan
    folder = plan.dataset
    try:
        plan.load_scene(events)
    except InputError as e:
        rel = _relative(e.path, folder)
        raise _input_error(f"{origin}{rel}" if rel else origin, e.problem, e.hint) from None
    except Exception as e:  # noqa: BLE001  (a corrupt .bin raises struct/Value errors)
        raise _input_error(f"{origin}sparse/0/",
                           f"unreadable COLMAP model ({type(e).__name__}: {e})",
                           "upload the sparse/0/*.bin (or .txt) files of a COLMAP run") from None
    return plan


def _input_error(origin: str, problem: str, hint: str | None = None) -> InputError:
    """An InputError naming an S3 location (kept as text: a Path would fold its '//')."""
    return InputError(None, f"{origin}: {problem}", hint)


def _relative(path: Path | None, folder: Path) -> str:
    if path is None:
        return ""
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(path)


def output_files(out: Path, step: int, include_spz: bool = True,
                 include_sog: bool = True) -> dict[str, Path]:
    """The artifact manifest of a finished reconstruct folder
    (:func:`splatforge.jobs.artifact_files`: the one layout every front door publishes),
    without ``scene.spz`` / ``scene.sog`` when the job file turned them off.

    Raises:
        InputError: the final point cloud is missing.
    """
    from ..jobs import artifact_files

    try:
        files = artifact_files(out, step)
    except FileNotFoundError as e:
        raise InputError(None, str(e)) from None
    if not include_spz:
        files.pop("scene.spz", None)
    if not include_sog:
        files.pop("scene.sog", None)
    return files


def upload_outputs(store: S3Store, files: dict[str, Path], prefix: str) -> list[str]:
    """:func:`splatforge.jobs.publish` of ``files`` under ``prefix``: each object complete or
    absent, this call's objects deleted again when any upload fails for good, stale keys of
    an earlier run removed after a complete upload. Returns the keys.

    Raises:
        StorageError (or the upload's error): an upload failed after its retries.
    """
    from ..jobs import publish

    return publish(store, prefix, files)


@dataclass
class TaskOutcome:
    """What a finished (or failed) run reports.

    Attributes:
        exit_code: 0 done, 1 failed, 2 invalid environment, 130 interrupted.
        stage: the stage reached (``complete``, or the one that failed).
        error: ``gsplat failed at {stage}: {message}`` when it failed.
        outputs: the uploaded objects' ``s3://`` URIs.
        payload: what was sent with ``send_task_success``.
        summary: ``numGaussians`` and held-out ``psnr`` of the trained model.
        heartbeats / progress_writes: Step Functions heartbeats sent, DynamoDB progress writes.
    """

    exit_code: int
    scene_id: str | None = None
    stage: str | None = None
    error: str | None = None
    outputs: list[str] = field(default_factory=list)
    payload: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    heartbeats: int = 0
    progress_writes: int = 0


def run_worker(*, scene_id: str, store: S3Store, input_prefix: str, input_key: str | None,
               output_prefix: str, spec: ReconstructConfig, reporter: StatusReporter,
               work_dir: Path | None = None) -> TaskOutcome:
    """downloading -> training_3dgs -> uploading -> complete, reported through ``reporter``.

    Args:
        spec: the job's config (``sfm_enabled`` False: the input must be a COLMAP output;
            ``train_enabled`` False: ingest + SfM only; ``export``: the web formats).
        input_key: a single object under ``input_prefix`` (a video or zip of the job file),
            or None for everything under ``input_prefix``.
        work_dir: folder for the download and the reconstruct output (kept; a re-run
            resumes); None = a temporary folder removed at the end.

    Returns:
        :class:`TaskOutcome` (exit_code 0 or 1). Never raises for a failing stage: the
        failure is reported and returned.
    """
    own_tmp = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="splatforge-aws-")) if own_tmp else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    origin = f"s3://{store.bucket}/{store.prefix}{input_prefix}" + (input_key or "")
    outcome = TaskOutcome(exit_code=1, scene_id=scene_id)
    stage = "downloading"
    try:
        with reporter:
            # -- downloading -------------------------------------------------------------
            reporter.set_stage(stage)
            inp = work / "input"
            if input_key is None:
                try:
                    n = len(store.download_prefix(input_prefix, inp))
                except ObjectNotFound:
                    raise _input_error(origin, "no objects under this prefix",
                                       "upload a COLMAP output (sparse/0/, images/) or photos "
                                       "or a video there") from None
                log.info("downloaded %d objects from %s", n, origin)
                fetched = inp
            else:
                key = validate_key(normalize_prefix(input_prefix) + input_key)
                if store.exists(key):
                    fetched = store.get_file(key, inp / Path(input_key).name)
                else:
                    try:
                        store.download_prefix(key, inp / Path(input_key).name)
                    except ObjectNotFound:
                        raise _input_error(origin, "no such object or prefix") from None
                    fetched = inp / Path(input_key).name
            if spec.scene.cache_dir is None:
                spec = spec.model_copy(update={"scene": spec.scene.model_copy(
                    update={"cache_dir": (work / "cache")})})
            plan = plan_task_input(fetched, spec, origin, reporter.events)
            reporter.progress(1.0)

            # -- training_3dgs ----------------------------------------------------------
            stage = "training_3dgs"
            reporter.set_stage(stage)
            out = work / "out"
            if plan.dataset is not None and not spec.train_enabled:
                raise _input_error(origin, "is already a COLMAP output and training is "
                                           "disabled: nothing to do")
            from ..pipeline import run_job_pipeline

            res = run_job_pipeline(plan, out, reporter)
            if spec.train_enabled:
                files = output_files(out, res.step, spec.export.spz, spec.export.sog)
                summary = {"numGaussians": res.num_gaussians, "psnr": res.psnr}
            else:
                from ..jobs.manifest import sfm_files

                files = sfm_files(out / "workspace")
                summary = {}
            reporter.progress(1.0)

            # -- uploading --------------------------------------------------------------
            stage = "uploading"
            reporter.set_stage(stage)
            keys = upload_outputs(store, files, output_prefix)
            uris = [f"s3://{store.bucket}/{store.prefix}{k}" for k in sorted(keys)]
            payload = {"sceneId": scene_id, "iterations": spec.train.max_steps,
                       "status": "training_complete" if spec.train_enabled else "sfm_complete",
                       "outputs": uris}
            stage = "complete"
            reporter.complete(payload)
            outcome = TaskOutcome(exit_code=0, scene_id=scene_id, stage="complete",
                                  outputs=uris, payload=payload, summary=summary)
    except (KeyboardInterrupt, JobStopped):
        note = "" if own_tmp else f" (work kept in {work}: run again to resume)"
        outcome.stage, outcome.error = stage, reporter.failed(stage, "interrupted" + note)
        outcome.exit_code = 130
    except Exception as e:  # noqa: BLE001  (every failure is reported, then returned)
        if not isinstance(e, SplatforgeError):
            log.exception("%s failed", stage)
        msg = str(e).replace("\n  hint:", ";")
        outcome.stage, outcome.error = stage, reporter.failed(stage, msg)
    finally:
        outcome.heartbeats, outcome.progress_writes = (reporter.heartbeats,
                                                       reporter.progress_writes)
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    return outcome


# -- the entry point ------------------------------------------------------------------------

def settings_spec(s: TaskSettings) -> ReconstructConfig:
    """The :class:`ReconstructConfig` of a task's environment (the default preset;
    ITERATIONS, DENSIFY_UNTIL_ITER, DENSIFICATION_INTERVAL and DATA_FACTOR are given)."""
    from ..config import SceneConfig, TrainConfig

    return ReconstructConfig(
        scene=SceneConfig(data_factor=s.data_factor),
        train=TrainConfig(max_steps=s.iterations, densify_until_iter=s.densify_until_iter,
                          densification_interval=s.densification_interval))


def run_aws_task(environ: Mapping[str, str] | None = None, *,
                 clients: AwsClients | None = None,
                 on_retry: Callable[..., None] | None = None) -> TaskOutcome:
    """Run one task from its environment (see the module docstring).

    Args:
        environ: the variables (default ``os.environ``).
        clients: boto3 clients to use (default: :func:`make_clients` from ``environ``).
        on_retry: passed to the S3 store (called before each whole-file retry).

    Returns:
        :class:`TaskOutcome`; ``exit_code`` 0 done, 1 failed, 2 invalid environment. Every
        failure has been reported to DynamoDB and Step Functions where configured.
    """
    env = os.environ if environ is None else environ
    token = (env.get("SFN_TASK_TOKEN") or "").strip() or None
    try:
        settings = TaskSettings.from_env(env)
    except ConfigError as e:
        return _fail_early(env, token, clients, str(e))
    if clients is None:
        clients = make_clients(env, settings.endpoint_url)
    reporter = StatusReporter(settings.scene_id, settings.scenes_table,
                              settings.sfn_task_token, clients, settings.heartbeat_seconds)
    try:
        reporter.check_table()
    except ConfigError as e:
        out = TaskOutcome(exit_code=2, scene_id=settings.scene_id, stage=STARTING)
        out.error = reporter.failed(STARTING, str(e))
        return out
    store = S3Store(settings.bucket, "", client=clients.s3, on_retry=on_retry)
    out = run_worker(scene_id=settings.scene_id, store=store,
                     input_prefix=settings.input_prefix, input_key=None,
                     output_prefix=settings.output_prefix, spec=settings_spec(settings),
                     reporter=reporter, work_dir=settings.work_dir)
    notify_end(settings, clients, out, output_prefix=settings.output_prefix)
    return out


def notify_end(settings: TaskSettings, clients: AwsClients, outcome: TaskOutcome, *,
               output_prefix: str = "") -> dict[str, Any]:
    """Announce a task's end once: an SNS publish to ``SNS_TOPIC_ARN`` (the toolbox's email
    path) and a signed POST to ``SPLATFORGE_NOTIFY_URL`` (:mod:`splatforge.jobs.notify`).
    Never raises and never changes the outcome; returns the notice sent."""
    from ..jobs.notify import job_notice, notify_job_end, wait_for_notifications

    status = "succeeded" if outcome.exit_code == 0 else (
        "cancelled" if outcome.exit_code == 130 else "failed")
    prefix = f"s3://{settings.bucket}/{normalize_prefix(output_prefix)}"
    names = [u[len(prefix):] if u.startswith(prefix) else u for u in outcome.outputs]
    notice = job_notice(settings.scene_id, status, metrics=outcome.summary,
                        artifacts=names, error=outcome.error, scene_id=settings.scene_id,
                        bucket=settings.bucket, output_prefix=output_prefix)
    if settings.sns_topic_arn and clients.sns is not None:
        try:
            body = json.dumps(notice, default=str)
            clients.sns.publish(TopicArn=settings.sns_topic_arn,
                                Subject=f"splatforge: scene {settings.scene_id} {status}"[:99],
                                Message=body)
        except Exception as e:  # noqa: BLE001  (a notification never fails the task)
            log.warning("SNS publish to %s failed: %s", settings.sns_topic_arn, e)
    if settings.notify_url:
        notify_job_end(settings.notify_url, notice, settings.notify_secret)
        wait_for_notifications(60.0)  # the container exits next: deliver (bounded) first
    return notice


def _fail_early(env: Mapping[str, str], token: str | None, clients: AwsClients | None,
                message: str) -> TaskOutcome:
    """Report an invalid environment: to Step Functions when a token is set, and to
    DynamoDB when SCENES_TABLE and a usable SCENE_ID are."""
    scene_id = (env.get("SCENE_ID") or "").strip() or None
    table = (env.get("SCENES_TABLE") or "").strip() or None
    out = TaskOutcome(exit_code=2, scene_id=scene_id, stage=STARTING)
    try:
        if scene_id is not None:
            colmap_prefix(scene_id)
    except InvalidKey:
        scene_id = None
    if token or (table and scene_id):
        try:
            if clients is None:
                clients = make_clients(env, (env.get("AWS_ENDPOINT_URL") or "").strip() or None)
            rep = StatusReporter(scene_id or "", table if scene_id else None, token, clients)
            out.error = rep.failed(STARTING, message)
            return out
        except Exception as e:  # noqa: BLE001
            log.error("could not report the failure: %s", e)
    out.error = f"gsplat failed at {STARTING}: {message}"
    log.error("%s", out.error)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m splatforge.aws`` / ``splatforge aws-task``: returns the exit status."""
    import signal

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # ECS / AWS Batch stop a container (spot reclaim, job cancel) with SIGTERM: treat it as
    # Ctrl-C, so training writes a checkpoint (kept in WORK_DIR) and the failure is reported.
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    out = run_aws_task()
    if out.exit_code == 0:
        print(json.dumps(out.payload, indent=2))
    return out.exit_code
