"""The ``splatforge aws-task`` and ``splatforge submit-job`` commands (registered in
:mod:`splatforge.cli`)."""

from __future__ import annotations

from pathlib import Path

import tyro


def aws_task() -> None:
    """Run one batch-worker task of an AWS Step Functions workflow, configured entirely by
    the environment: BUCKET, SCENE_ID (required); ITERATIONS, DENSIFY_UNTIL_ITER,
    DENSIFICATION_INTERVAL, DATA_FACTOR, SCENES_TABLE, SFN_TASK_TOKEN, INPUT_PREFIX,
    OUTPUT_PREFIX, AWS_ENDPOINT_URL (optional). Downloads s3://BUCKET/INPUT_PREFIX (a COLMAP
    output, or photos/a video), reconstructs, uploads the INRIA model folder, scene.splat,
    scene.spz and metrics.json to s3://BUCKET/OUTPUT_PREFIX, and reports the stage to
    DynamoDB and the result to Step Functions. Exit status 0 done, 1 failed, 2 invalid
    environment.
    """
    from .task import main

    code = main()
    if code:
        raise SystemExit(code)


def submit_job(job: tyro.conf.Positional[Path]) -> None:
    """Run a job file of the AWS 3D-reconstruction toolbox (uuid, s3, videoProcessing,
    imageProcessing, sfm, training, postProcessing): input from
    s3://bucketName/inputPrefix/inputKey, outputs to s3://bucketName/outputPrefix/uuid/.

    Args:
        job: the job JSON file.
    """
    from .job import main

    code = main(job)
    if code:
        raise SystemExit(code)
