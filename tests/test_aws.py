"""The AWS batch worker (splatforge.aws) against a moto server over real HTTP: S3, DynamoDB,
and Step Functions executing a real state machine whose task waits for a task token
(``sqs:sendMessage.waitForTaskToken``; moto runs state machines when its
``stepfunctions.execute_state_machine`` option is on). The worker gets its token the way a
container does, and the test reads the execution's status and output back from moto.

Data: plush_dog's COLMAP model (``sparse/0``) with ``images_4`` as ``images/``, and the 84
shipped photos for the photo path; training is 20 steps at DATA_FACTOR 8.
Failures are real: a missing prefix, a garbage ``cameras.bin``, truncated JPEGs (readable
headers, so the failure surfaces only when training decodes them), and S3 uploads that fail
on the wire (a botocore ``before-send`` hook raising a connection error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import PLUSH_DOG

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "samples" / "plush_dog" / "images"
BUCKET = "splatforge-aws"
TABLE = "scenes"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}


class Aws:
    """The moto server and what the tests set up on it."""

    def __init__(self, endpoint: str):
        import boto3

        self.endpoint = endpoint
        kw = dict(endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
        self.s3 = boto3.client("s3", **kw)
        self.ddb = boto3.client("dynamodb", **kw)
        self.sfn = boto3.client("stepfunctions", **kw)
        self.sqs = boto3.client("sqs", **kw)
        self.s3.create_bucket(Bucket=BUCKET)
        self.ddb.create_table(TableName=TABLE,
                              KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "id",
                                                     "AttributeType": "S"}],
                              BillingMode="PAY_PER_REQUEST")
        self.queue = self.sqs.create_queue(QueueName="task-tokens")["QueueUrl"]
        # moto accepts heartbeats only for a task with HeartbeatSeconds (AWS accepts them for
        # any task), so every machine here has one: 3 s (tight) or 600 s (loose)
        self.machines = {hb: self._machine(hb) for hb in (3, 600)}

    def _machine(self, heartbeat: int) -> str:
        task = {"Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                "Parameters": {"QueueUrl": self.queue,
                               "MessageBody": {"token.$": "$$.Task.Token",
                                               "sceneId.$": "$.sceneId"}},
                "End": True, "HeartbeatSeconds": heartbeat, "TimeoutSeconds": 3600}
        name = f"train-hb{heartbeat}"
        return self.sfn.create_state_machine(
            name=name, roleArn="arn:aws:iam::123456789012:role/sfn",
            definition=json.dumps({"StartAt": "Train", "States": {"Train": task}})
        )["stateMachineArn"]

    def start(self, scene_id: str, heartbeat: int = 600) -> tuple[str, str]:
        """Start an execution; returns ``(execution ARN, its task token)``."""
        arn = self.sfn.start_execution(stateMachineArn=self.machines[heartbeat],
                                       name=f"{scene_id}-{uuid.uuid4().hex[:8]}",
                                       input=json.dumps({"sceneId": scene_id})
                                       )["executionArn"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for m in self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10,
                                              WaitTimeSeconds=1).get("Messages", []):
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=m["ReceiptHandle"])
                body = json.loads(m["Body"])
                if body["sceneId"] == scene_id:
                    return arn, body["token"]
        raise AssertionError("the state machine sent no task token")

    def finished(self, arn: str) -> dict:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            d = self.sfn.describe_execution(executionArn=arn)
            if d["status"] != "RUNNING":
                return d
            time.sleep(0.1)
        raise AssertionError(f"{arn} still running")

    def item(self, scene_id: str) -> dict:
        from boto3.dynamodb.types import TypeDeserializer

        raw = self.ddb.get_item(TableName=TABLE, Key={"id": {"S": scene_id}}).get("Item", {})
        return {k: TypeDeserializer().deserialize(v) for k, v in raw.items()}

    def keys(self, prefix: str) -> list[str]:
        r = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for o in r.get("Contents", []))

    def env(self, scene_id: str, **extra: str) -> dict[str, str]:
        return {**CREDS, "AWS_ENDPOINT_URL": self.endpoint, "BUCKET": BUCKET,
                "SCENE_ID": scene_id, "SCENES_TABLE": TABLE, "ITERATIONS": "20",
                "DATA_FACTOR": "8", "HEARTBEAT_SECONDS": "0.5", **extra}

    def upload_colmap(self, prefix: str, images: Path = PLUSH_DOG / "images_4") -> None:
        from splatforge.storage import S3Store

        st = S3Store(BUCKET, "", endpoint_url=self.endpoint)
        st.upload_dir(PLUSH_DOG / "sparse" / "0", prefix + "sparse/0")
        st.upload_dir(images, prefix + "images")


@pytest.fixture(scope="module")
def aws():
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in [*CREDS, "MOTO_PORT"]}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto's state-machine interpreter sends its SQS message to localhost:MOTO_PORT
    os.environ.update(CREDS, MOTO_PORT=str(port))

    def sfn_config(execute: bool) -> None:  # moto's option is process-wide: reset it after
        req = urllib.request.Request(
            endpoint + "/moto-api/config", method="POST",
            data=json.dumps({"stepfunctions": {"execute_state_machine": execute}}).encode(),
            headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req).read()

    sfn_config(True)
    yield Aws(endpoint)
    sfn_config(False)
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _clients(env: dict[str, str], record: dict[str, list] | None = None):
    """Real boto3 clients for the worker; ``record`` collects the DynamoDB stage writes and
    the heartbeat times it sent."""
    from splatforge.aws import make_clients

    c = make_clients(env)
    if record is not None:
        def ddb(request, **kw):
            body = json.loads(request.body or b"{}")
            vals = body.get("ExpressionAttributeValues", {})
            if ":processingStage" in vals:
                record["stages"].append(vals[":processingStage"]["S"])
            if ":progress" in vals:
                record["progress"].append((time.monotonic(), float(vals[":progress"]["N"])))

        record.setdefault("stages", [])
        record.setdefault("progress", [])
        record.setdefault("heartbeats", [])
        record.setdefault("failures", [])
        c.sfn.meta.events.register(
            "before-send.sfn.SendTaskFailure",
            lambda request, **kw: record["failures"].append(json.loads(request.body)))
        c.dynamodb.meta.events.register("before-send.dynamodb.UpdateItem", ddb)
        c.sfn.meta.events.register(
            "before-send.sfn.SendTaskHeartbeat",
            lambda request, **kw: record["heartbeats"].append(time.monotonic()))
    return c


def _fail_puts(client, match: str, times: int | None) -> list[str]:
    """Make S3 PutObject of keys containing ``match`` fail with a connection error the first
    ``times`` times (always when None); returns the list of attempts."""
    from botocore.exceptions import EndpointConnectionError

    calls: list[str] = []

    def hook(request, **kw):
        if match in request.url:
            calls.append(request.url)
            if times is None or len(calls) <= times:
                raise EndpointConnectionError(endpoint_url=request.url)

    client.meta.events.register("before-send.s3.PutObject", hook)
    return calls


def _assert_failed(aws: Aws, scene_id: str, arn: str, out, rec: dict, stage: str,
                   *needles: str) -> None:
    assert out.exit_code != 0
    item = aws.item(scene_id)
    assert item["processingStage"] == "failed"
    assert item["error"].startswith(f"gsplat failed at {stage}: "), item["error"]
    for n in needles:
        assert n in item["error"], (n, item["error"])
    d = aws.finished(arn)
    assert d["status"] == "FAILED"
    hist = aws.sfn.get_execution_history(executionArn=arn)["events"]
    failed = [e for e in hist if e["type"] == "TaskFailed"]
    assert failed and failed[0]["taskFailedEventDetails"]["error"] == "TrainingError"
    # moto 5.2 drops the cause of SendTaskFailure (its handler passes only the error on), so
    # the cause is checked in the request the worker sent
    assert [(f["error"], f["cause"]) for f in rec["failures"]] == [("TrainingError",
                                                                    item["error"])]


# -- happy paths --------------------------------------------------------------------------------

EXPECTED = ["cameras.json", "cfg_args", "input.ply", "metrics.json",
            "point_cloud/iteration_20/point_cloud.ply", "scene.splat", "scene.spz", "scene.sog"]


def test_colmap_input_end_to_end(aws, tmp_path):
    from splatforge.aws import run_aws_task
    from splatforge.export import read_ply, read_splat

    sid = "dog-colmap"
    aws.upload_colmap(f"colmap/{sid}/")
    arn, token = aws.start(sid, heartbeat=3)  # times out unless heartbeats arrive
    env = aws.env(sid, SFN_TASK_TOKEN=token)
    rec: dict[str, list] = {}
    t0 = time.monotonic()
    out = run_aws_task(env, clients=_clients(env, rec))
    seconds = time.monotonic() - t0
    assert out.exit_code == 0, out.error
    keys = aws.keys(f"outputs/{sid}/")
    for rel in EXPECTED:
        assert f"outputs/{sid}/{rel}" in keys
    assert not any("/ckpts/" in k for k in keys)
    # the objects are the real thing: the PLY and .splat read back with equal counts
    ply = tmp_path / "point_cloud.ply"
    aws.s3.download_file(BUCKET, f"outputs/{sid}/point_cloud/iteration_20/point_cloud.ply",
                         str(ply))
    splat = tmp_path / "scene.splat"
    aws.s3.download_file(BUCKET, f"outputs/{sid}/scene.splat", str(splat))
    n = len(read_ply(ply)["means"])
    assert n > 1000 and len(read_splat(splat)["means"]) == n
    metrics = json.loads(aws.s3.get_object(Bucket=BUCKET, Key=f"outputs/{sid}/metrics.json")
                         ["Body"].read())
    assert metrics["step"] == 20
    # DynamoDB: every stage in order, then complete
    assert rec["stages"] == ["downloading", "training_3dgs", "uploading", "complete"]
    item = aws.item(sid)
    assert item["processingStage"] == "complete" and float(item["progress"]) == 1.0
    assert "error" not in item
    assert sorted(item["outputs"]) == sorted(f"s3://{BUCKET}/{k}" for k in keys)
    # progress writes are throttled (at most one per 2 s, plus stage changes and the end)
    assert len(rec["progress"]) <= 2 * 4 + seconds / 2 + 2
    # Step Functions: the execution succeeded with our payload; heartbeats kept it alive
    d = aws.finished(arn)
    assert d["status"] == "SUCCEEDED"
    payload = json.loads(d["output"])
    assert payload == {"sceneId": sid, "iterations": 20, "status": "training_complete",
                       "outputs": sorted(f"s3://{BUCKET}/{k}" for k in keys)}
    assert len(rec["heartbeats"]) >= 2 and out.heartbeats == len(rec["heartbeats"])
    if seconds > 4:  # a longer run than the state's HeartbeatSeconds: heartbeats were needed
        assert max(b - a for a, b in zip(rec["heartbeats"], rec["heartbeats"][1:])) < 3


def test_photo_input_runs_the_whole_pipeline(aws):
    from splatforge.aws import run_aws_task
    from splatforge.storage import S3Store

    sid = "dog-photos"
    S3Store(BUCKET, "", endpoint_url=aws.endpoint).upload_dir(PHOTOS, f"media/{sid}/")
    arn, token = aws.start(sid)
    env = aws.env(sid, SFN_TASK_TOKEN=token, INPUT_PREFIX=f"media/{sid}/")
    rec: dict[str, list] = {}
    out = run_aws_task(env, clients=_clients(env, rec))
    assert out.exit_code == 0, out.error
    keys = aws.keys(f"outputs/{sid}/")
    for rel in EXPECTED:
        assert f"outputs/{sid}/{rel}" in keys
    summary = json.loads(aws.s3.get_object(Bucket=BUCKET, Key=f"outputs/{sid}/reconstruct.json")
                         ["Body"].read())
    assert summary["input_kind"] == "images"
    # >= 3 (SfM's own minimum): the multi-threaded mapper is not deterministic (19-84 of these
    # photos seen registered), and the point here is that the photo path ran end to end
    assert summary["stages"]["sfm"]["status"] == "ran" and summary["num_registered"] >= 3
    assert rec["stages"] == ["downloading", "training_3dgs", "uploading", "complete"]
    assert aws.item(sid)["processingStage"] == "complete"
    d = aws.finished(arn)
    assert d["status"] == "SUCCEEDED" and json.loads(d["output"])["sceneId"] == sid
    gaps = [b - a for a, b in zip(rec["heartbeats"], rec["heartbeats"][1:])]
    print(f"photo path: {len(rec['heartbeats'])} heartbeats, longest gap "
          f"{max(gaps, default=0):.2f} s")


# -- failures -----------------------------------------------------------------------------------

def test_missing_prefix_fails_at_downloading(aws):
    from splatforge.aws import run_aws_task

    sid = "dog-missing"
    arn, token = aws.start(sid)
    env = aws.env(sid, SFN_TASK_TOKEN=token)
    rec: dict[str, list] = {}
    out = run_aws_task(env, clients=_clients(env, rec))
    _assert_failed(aws, sid, arn, out, rec, "downloading", f"s3://{BUCKET}/colmap/{sid}/",
                   "no objects")
    assert aws.keys(f"outputs/{sid}/") == []


def test_corrupt_sparse_fails_before_training(aws):
    from splatforge.aws import run_aws_task

    sid = "dog-corrupt"
    aws.upload_colmap(f"colmap/{sid}/")
    aws.s3.put_object(Bucket=BUCKET, Key=f"colmap/{sid}/sparse/0/cameras.bin",
                      Body=b"\x07\x00\x00\x00garbage, not a COLMAP cameras.bin")
    arn, token = aws.start(sid)
    env = aws.env(sid, SFN_TASK_TOKEN=token)
    rec: dict[str, list] = {}
    out = run_aws_task(env, clients=_clients(env, rec))
    _assert_failed(aws, sid, arn, out, rec, "downloading", "cameras.bin")
    assert rec["stages"] == ["downloading", "failed"]  # training never started
    assert aws.keys(f"outputs/{sid}/") == []


def test_exception_inside_training(aws, tmp_path):
    """Truncated JPEGs: their headers (750x500) match the cameras, so the model validates;
    the first decode inside the training loop fails."""
    from splatforge.aws import run_aws_task

    sid = "dog-truncated"
    bad = tmp_path / "images"
    bad.mkdir()
    for p in sorted((PLUSH_DOG / "images_4").iterdir()):
        (bad / p.name).write_bytes(p.read_bytes()[:4096])
    aws.upload_colmap(f"colmap/{sid}/", images=bad)
    arn, token = aws.start(sid)
    env = aws.env(sid, SFN_TASK_TOKEN=token, DATA_FACTOR="1")
    rec: dict[str, list] = {}
    out = run_aws_task(env, clients=_clients(env, rec))
    _assert_failed(aws, sid, arn, out, rec, "training_3dgs", "cannot be decoded", ".jpg")
    assert rec["stages"] == ["downloading", "training_3dgs", "failed"]
    assert aws.keys(f"outputs/{sid}/") == []


def test_upload_failures_retried_or_rolled_back(aws, tmp_path):
    """1) metrics.json never uploads: stage failed, task failure sent, and none of this run's
    objects remain under the output prefix. 2) The same task again on the same WORK_DIR
    (training is not redone), scene.spz failing twice: retried, complete."""
    from splatforge.aws import run_aws_task

    sid = "dog-upload"
    aws.upload_colmap(f"colmap/{sid}/")
    work = tmp_path / "work"

    arn, token = aws.start(sid)
    env = aws.env(sid, SFN_TASK_TOKEN=token, WORK_DIR=str(work), AWS_MAX_ATTEMPTS="1")
    rec: dict[str, list] = {}
    clients = _clients(env, rec)
    calls = _fail_puts(clients.s3, "metrics.json", None)
    out = run_aws_task(env, clients=clients)
    _assert_failed(aws, sid, arn, out, rec, "uploading", "metrics.json", "after 3 attempts")
    assert len(calls) == 3  # the store's own retries (botocore's were set to 1 attempt)
    assert aws.keys(f"outputs/{sid}/") == []  # no partial output set, no partial object

    arn, token = aws.start(sid)
    env = aws.env(sid, SFN_TASK_TOKEN=token, WORK_DIR=str(work), AWS_MAX_ATTEMPTS="1")
    clients = _clients(env)
    calls = _fail_puts(clients.s3, "scene.spz", 2)
    retries: list[tuple] = []
    out = run_aws_task(env, clients=clients, on_retry=lambda *a: retries.append(a))
    assert out.exit_code == 0, out.error
    assert len(calls) == 3 and [r[2] for r in retries] == [1, 2]
    assert all("scene.spz" in r[1] for r in retries)
    keys = aws.keys(f"outputs/{sid}/")
    assert f"outputs/{sid}/scene.spz" in keys and f"outputs/{sid}/metrics.json" in keys
    summary = json.loads((work / "out" / "reconstruct.json").read_text())
    assert summary["stages"]["train"]["status"] == "skipped"
    assert aws.item(sid)["processingStage"] == "complete"
    assert aws.finished(arn)["status"] == "SUCCEEDED"


def test_invalid_environment_reported_and_exit_status(aws):
    from splatforge.aws import run_aws_task

    sid = "dog-badenv"
    arn, token = aws.start(sid)
    env = aws.env(sid, SFN_TASK_TOKEN=token, ITERATIONS="many", DATA_FACTOR="3")
    del env["BUCKET"]
    rec: dict[str, list] = {}
    out = run_aws_task(env, clients=_clients(env, rec))
    assert out.exit_code == 2
    _assert_failed(aws, sid, arn, out, rec, "starting", "BUCKET: required", "ITERATIONS",
                   "DATA_FACTOR: must be 1, 2, 4 or 8")
    # the module entry point: same check, non-zero exit status, message on stderr
    arn, token = aws.start(sid)
    child = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKET", "SCENE"))}
    child.update(aws.env(sid, SFN_TASK_TOKEN=token), SCENE_ID="", BUCKET=BUCKET,
                 PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "splatforge.aws"], env=child,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "SCENE_ID: required, not set" in r.stderr
    assert aws.finished(arn)["status"] == "FAILED"


# -- job JSON -------------------------------------------------------------------------------------

TOOLBOX_JOB = {
    "uuid": "job-1", "instanceType": "ml.g5.4xlarge", "logVerbosity": "info",
    "s3": {"bucketName": BUCKET, "inputPrefix": "media-input", "inputKey": "job-1",
           "outputPrefix": "workflow-output"},
    "videoProcessing": {"maxNumImages": "150"},
    "imageProcessing": {"filterBlurryImages": "true"},
    "sfm": {"enable": "false", "softwareName": "glomap", "matchingMethod": "sequential",
            "enableEnhancedFeatureExtraction": "false",
            "posePriors": {"usePosePriorColmapModelFiles": "false",
                           "usePosePriorTransformJson": {"enable": "false",
                                                         "sourceCoordinateName": "arkit",
                                                         "poseIsWorldToCam": "true"}}},
    "training": {"enable": "true", "maxSteps": "20", "model": "splatfacto"},
    "postProcessing": {"enableSpz": "false"},
}


def test_job_schema_and_mapping(tmp_path):
    from splatforge.aws import load_job
    from splatforge.aws.job import parse_job
    from splatforge.errors import ConfigError, InputError

    job = parse_job(TOOLBOX_JOB)
    spec = job.pipeline_spec()
    assert spec.sfm.mapping == "global" and spec.sfm.matching == "sequential"
    assert spec.ingest.max_num_images == 150 and spec.ingest.blur_filter_percent > 0
    assert spec.train.max_steps == 20 and spec.train.strategy == "default"
    assert not spec.sfm_enabled and spec.train_enabled and not spec.export.spz
    assert job.output_prefix == "workflow-output/job-1/"
    colmap = parse_job({**TOOLBOX_JOB, "sfm": {"softwareName": "colmap"},
                        "training": {"model": "splatfacto-mcmc"}}).pipeline_spec()
    assert colmap.sfm.mapping == "incremental" and colmap.train.strategy == "mcmc"

    def err(data) -> str:
        with pytest.raises(ConfigError) as e:
            parse_job(data, "job.json")
        return str(e.value)

    assert "sfm.softwareName" in err({**TOOLBOX_JOB, "sfm": {"softwareName": "openmvg"}})
    assert "matchingMethod" in err({**TOOLBOX_JOB, "sfm": {"matchingMethod": "vocab"}})
    assert "training.maxSteps" in err({**TOOLBOX_JOB, "training": {"maxSteps": "-5"}})
    assert "trainng" in err({**TOOLBOX_JOB, "trainng": {}})  # unknown key: a typo
    assert "s3.bucketName" in err({k: v for k, v in TOOLBOX_JOB.items() if k != "s3"} |
                                  {"s3": {"inputPrefix": "x"}})
    # Pose priors (issue 17): the input's COLMAP model or transforms.json, one at a time.
    kp = parse_job({**TOOLBOX_JOB, "sfm": {"posePriors": {
        "usePosePriorColmapModelFiles": True}}}).pipeline_spec()
    assert kp.sfm.pose_prior == Path(".")
    tj = parse_job({**TOOLBOX_JOB, "sfm": {"posePriors": {"usePosePriorTransformJson": {
        "enable": "true", "sourceCoordinateName": "arkit",
        "poseIsWorldToCam": "true"}}}}).pipeline_spec()
    assert tj.sfm.pose_prior == Path("transforms.json") and tj.sfm.pose_prior_world_to_cam
    assert parse_job(TOOLBOX_JOB).pipeline_spec().sfm.pose_prior is None
    assert "not both" in err({**TOOLBOX_JOB, "sfm": {"posePriors": {
        "usePosePriorColmapModelFiles": True, "usePosePriorTransformJson": {"enable": True}}}})
    assert "sourceCoordinateName" in err({**TOOLBOX_JOB, "sfm": {"posePriors": {
        "usePosePriorTransformJson": {"enable": True, "sourceCoordinateName": "ecef"}}}})
    assert "uuid" in err({**TOOLBOX_JOB, "uuid": "../escape"})
    bad = tmp_path / "job.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_job(bad)
    with pytest.raises(InputError, match="not found"):
        load_job(tmp_path / "missing.json")


def test_submit_job_command(aws, tmp_path, monkeypatch):
    from splatforge.cli import main

    from PIL import Image

    small = tmp_path / "images"  # the photos at 94x62: the cameras are scaled to match
    small.mkdir()
    for p in sorted((PLUSH_DOG / "images_4").iterdir()):
        with Image.open(p) as im:
            im.resize((94, 62), Image.LANCZOS).save(small / p.name, quality=95)
    aws.upload_colmap("media-input/job-1/", images=small)
    job = tmp_path / "job.json"
    job.write_text(json.dumps(TOOLBOX_JOB))
    for k, v in {**CREDS, "AWS_ENDPOINT_URL": aws.endpoint, "SCENES_TABLE": TABLE}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SFN_TASK_TOKEN", raising=False)
    assert main(["submit-job", str(job)]) == 0
    keys = aws.keys("workflow-output/job-1/")
    assert "workflow-output/job-1/point_cloud/iteration_20/point_cloud.ply" in keys
    assert "workflow-output/job-1/scene.splat" in keys
    assert "workflow-output/job-1/scene.spz" not in keys  # postProcessing.enableSpz false
    assert aws.item("job-1")["processingStage"] == "complete"
    job.write_text(json.dumps({**TOOLBOX_JOB, "sfm": {"softwareName": "meshroom"}}))
    assert main(["submit-job", str(job)]) == 2  # invalid job file: a clear error, status 2


def test_handle_s3_event_starts_the_state_machine(aws):
    from splatforge.aws import handle_s3_event, make_clients

    good = {**TOOLBOX_JOB, "uuid": "job-event"}
    aws.s3.put_object(Bucket=BUCKET, Key="jobs/job event.json", Body=json.dumps(good))
    aws.s3.put_object(Bucket=BUCKET, Key="jobs/bad.json",
                      Body=json.dumps({**good, "training": {"model": "nerfacto"}}))
    env = {**CREDS, "AWS_ENDPOINT_URL": aws.endpoint,
           "STATE_MACHINE_ARN": aws.machines[600]}
    event = {"Records": [
        {"eventName": "ObjectCreated:Put",
         "s3": {"bucket": {"name": BUCKET}, "object": {"key": "jobs/job+event.json"}}},
        {"eventName": "ObjectCreated:Put",
         "s3": {"bucket": {"name": BUCKET}, "object": {"key": "jobs/bad.json"}}},
        {"eventName": "ObjectCreated:Put",
         "s3": {"bucket": {"name": BUCKET}, "object": {"key": "jobs/deleted.json"}}}]}
    res = handle_s3_event(event, None, environ=env, clients=make_clients(env))
    started, invalid, missing = res["jobs"]
    assert missing["status"] == "error" and "NoSuchKey" in missing["error"]
    assert started["status"] == "started" and started["uuid"] == "job-event"
    d = aws.sfn.describe_execution(executionArn=started["executionArn"])
    assert d["name"] == "job-event"
    assert json.loads(d["input"])["training"]["maxSteps"] == 20
    assert invalid["status"] == "invalid" and "training.model" in invalid["error"]


def test_handle_s3_event_runs_an_sfm_only_job_in_place(aws):
    """Without STATE_MACHINE_ARN the handler runs the job itself; training disabled uploads
    the SfM workspace (images/, sparse/0/, sfm.json)."""
    from splatforge.aws import handle_s3_event, make_clients
    from splatforge.storage import S3Store

    S3Store(BUCKET, "", endpoint_url=aws.endpoint).upload_dir(PHOTOS, "media-input/job-sfm/")
    job = {**TOOLBOX_JOB, "uuid": "job-sfm",
           "s3": {**TOOLBOX_JOB["s3"], "inputKey": "job-sfm"},
           "sfm": {"enable": True, "softwareName": "colmap", "matchingMethod": "exhaustive"},
           "imageProcessing": {"filterBlurryImages": False},
           "training": {"enable": False}}
    aws.s3.put_object(Bucket=BUCKET, Key="jobs/job-sfm.json", Body=json.dumps(job))
    env = {**CREDS, "AWS_ENDPOINT_URL": aws.endpoint, "SCENES_TABLE": TABLE}
    res = handle_s3_event({"Records": [{"s3": {"bucket": {"name": BUCKET},
                                               "object": {"key": "jobs/job-sfm.json"}}}]},
                          None, environ=env, clients=make_clients(env))
    (r,) = res["jobs"]
    assert r["status"] == "complete", r
    keys = aws.keys("workflow-output/job-sfm/")
    for rel in ("sparse/0/cameras.bin", "sparse/0/images.bin", "sparse/0/points3D.bin",
                "sfm.json"):
        assert f"workflow-output/job-sfm/{rel}" in keys
    sfm = json.loads(aws.s3.get_object(Bucket=BUCKET, Key="workflow-output/job-sfm/sfm.json")
                     ["Body"].read())
    n_images = sum(k.startswith("workflow-output/job-sfm/images/") for k in keys)
    # pycolmap's multi-threaded mapper is not deterministic (19-84 of these 84 photos seen
    # registered); the point here is that the registered images and the model are uploaded
    assert sfm["num_registered"] >= 3 and n_images == sfm["num_registered"]
    assert not any("point_cloud" in k for k in keys)
    assert aws.item("job-sfm")["processingStage"] == "complete"


def test_plan_downloaded_input(tmp_path):
    """The worker plans the downloaded input once (the pipeline's own classifier), and its
    messages name the S3 origin, not the worker's disk."""
    from splatforge.aws.task import plan_task_input
    from splatforge.errors import InputError
    from splatforge.reconstruct_config import ReconstructConfig

    def folder(name: str, *files: str) -> Path:
        d = tmp_path / name
        for f in files:
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            (d / f).write_bytes(b"x")
        return d

    def plan(d: Path, **kw):
        return plan_task_input(d, ReconstructConfig(**kw), "s3://b/p/")

    with pytest.raises(InputError, match=r"s3://b/p/sparse/0/cameras.bin: truncated or corrupt") as e:
        plan(folder("colmap", "sparse/0/cameras.bin", "sparse/0/images.bin", "images/a.jpg"))
    assert str(tmp_path) not in str(e.value)
    d = folder("video", "clip.MP4")
    p = plan(d)
    assert (p.input.kind, p.media, p.dataset) == ("video", d / "clip.MP4", None)
    d = folder("zip", "photos.zip")
    assert plan(d).media == d / "photos.zip"
    d = folder("nested", "images/a.jpg", "images/b.JPG", "LICENSE")
    assert plan(d).media == d / "images"
    d = folder("flat", "a.jpg", "b.png")
    assert (plan(d).input.kind, plan(d).media) == ("images", d)
    with pytest.raises(InputError, match=r"(?s)s3://b/p/: holds neither.*found: notes.txt"):
        plan(folder("other", "notes.txt"))
    with pytest.raises(InputError, match=r"s3://b/p/: holds photos or a video, but SfM is "
                                         r"disabled"):
        plan(folder("nosfm", "a.jpg"), sfm_enabled=False)


# -- one layout for every front door; completion notifications -----------------------------------

def test_both_front_doors_share_one_layout_and_notify(aws, tmp_path):
    """A scene the AWS worker trained is served by the service's routes from the same bucket,
    and a scene the service trained holds the INRIA layout the AWS side reads. Both front
    doors announce the end once: a signed POST (and SNS for the worker)."""
    import httpx

    from service_helpers import TINY_JOB, NotifyListener, Server, new_scene, plush_zip_bytes, \
        wait_job
    from splatforge.aws import run_aws_task

    secret = "s3cr3t"
    hook = NotifyListener()
    import boto3

    kw = dict(endpoint_url=aws.endpoint, region_name="us-east-1",
              aws_access_key_id="testing", aws_secret_access_key="testing")
    sns, sqs = boto3.client("sns", **kw), boto3.client("sqs", **kw)
    topic = sns.create_topic(Name="scene-done")["TopicArn"]
    q = sqs.create_queue(QueueName="scene-done-mail")["QueueUrl"]
    q_arn = sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["QueueArn"]
                                     )["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=q_arn,
                  Attributes={"RawMessageDelivery": "true"})
    # -- AWS worker -> service routes ---------------------------------------------------------
    sid = "dog-shared"
    aws.upload_colmap(f"colmap/{sid}/")
    env = aws.env(sid, SNS_TOPIC_ARN=topic, SPLATFORGE_NOTIFY_URL=hook.url,
                  SPLATFORGE_NOTIFY_SECRET=secret)
    out = run_aws_task(env, clients=_clients(env))
    assert out.exit_code == 0, out.error
    ply_key = f"outputs/{sid}/point_cloud/iteration_20/point_cloud.ply"
    want = aws.s3.get_object(Bucket=BUCKET, Key=ply_key)["Body"].read()
    notices = hook.notices(secret)
    assert len(notices) == 1 and notices[0]["id"] == sid
    assert notices[0]["status"] == "succeeded" and notices[0]["error"] is None
    assert "point_cloud.ply" in notices[0]["artifacts"]
    msgs = sqs.receive_message(QueueUrl=q, MaxNumberOfMessages=10,
                               WaitTimeSeconds=2).get("Messages", [])
    assert len(msgs) == 1
    assert json.loads(msgs[0]["Body"])["status"] == "succeeded"

    srv = Server(tmp_path / "srv", storage=f"s3://{BUCKET}/", extra_env={
        **CREDS, "SPLATFORGE_S3_ENDPOINT_URL": aws.endpoint, "MOTO_PORT": os.environ["MOTO_PORT"],
        "SPLATFORGE_NOTIFY_URL": hook.url, "SPLATFORGE_NOTIFY_SECRET": secret}).start()
    try:
        with srv.client() as c:
            r = c.get(f"/scene/{sid}/gsplat/model")
            assert r.status_code == 200, r.text
            assert r.content == want
            r = c.get(f"/scenes/{sid}/artifacts/point_cloud.ply")
            assert r.status_code == 200 and r.content == want
            names = {a["name"] for a in c.get(f"/scenes/{sid}/artifacts").json()["artifacts"]}
            assert {"cameras.json", "cfg_args", "scene.splat"} <= names
            # -- service -> the INRIA layout in the same bucket -----------------------------
            scene = new_scene(c)
            r = c.post(f"/scenes/{scene}/media",
                       files={"files": ("plush.zip", plush_zip_bytes(), "application/zip")})
            assert r.status_code == 200, r.text
            job = c.post(f"/scenes/{scene}/jobs", json=TINY_JOB).json()["job_id"]
            assert wait_job(c, job)["status"] == "succeeded", srv.log()[-3000:]
        keys = aws.keys(f"outputs/{scene}/")
        n = TINY_JOB["train"]["max_steps"]
        for rel in (f"point_cloud/iteration_{n}/point_cloud.ply", "point_cloud.ply",
                    "cameras.json", "cfg_args", "input.ply", "metrics.json"):
            assert f"outputs/{scene}/{rel}" in keys, keys
        hook.wait(2)
        notices = hook.notices(secret)
        assert [(x["id"], x["status"]) for x in notices[1:]] == [(job, "succeeded")]
        assert f"point_cloud/iteration_{n}/point_cloud.ply" in notices[1]["artifacts"]
    finally:
        srv.stop()
        hook.close()


def test_no_heartbeat_follows_the_tasks_success(aws):
    """The heartbeat thread is stopped before the task's success is sent: a heartbeat after
    it would be refused (InvalidToken) and logged as a failure. Heartbeats every 5 ms race
    the success as hard as they can."""
    from splatforge.aws.task import StatusReporter

    sid = "beat-race"
    arn, token = aws.start(sid)
    rec: dict[str, list] = {}
    clients = _clients(aws.env(sid, SFN_TASK_TOKEN=token), rec)
    success: list[float] = []
    clients.sfn.meta.events.register(
        "before-send.sfn.SendTaskSuccess",
        lambda request, **kw: success.append(time.monotonic()))
    rep = StatusReporter(sid, None, token, clients, heartbeat_seconds=0.005)
    with rep:
        time.sleep(0.3)
        rep.complete({"outputs": [], "iterations": 0})
        time.sleep(0.2)  # a thread left running would beat again here
    assert len(success) == 1 and len(rec["heartbeats"]) >= 3
    assert max(rec["heartbeats"]) < success[0]
    assert rep.heartbeats == len(rec["heartbeats"])
    assert aws.finished(arn)["status"] == "SUCCEEDED"
