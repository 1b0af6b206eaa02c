"""The AWS batch worker: ``splatforge aws-task`` (S3 in and out, DynamoDB stages, Step
Functions callbacks) and the job-JSON trigger of the AWS 3D-reconstruction toolbox
(``splatforge submit-job``, :func:`handle_s3_event`). See :mod:`splatforge.aws.task` and
:mod:`splatforge.aws.job`."""

from .job import JobSpec, handle_s3_event, load_job, run_job
from .task import AwsClients, TaskOutcome, TaskSettings, make_clients, run_aws_task

__all__ = ["AwsClients", "JobSpec", "TaskOutcome", "TaskSettings", "handle_s3_event",
           "load_job", "make_clients", "run_aws_task", "run_job"]
