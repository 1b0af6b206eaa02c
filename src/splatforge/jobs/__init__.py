"""The job core every front door drives (CLI ``reconstruct``, the service runner, the AWS
worker).

* :mod:`.inputs`: the one input classifier (what a fetched folder or file is, and the path
  :func:`splatforge.pipeline.run_reconstruct` reads);
* :mod:`.manifest`: the one artifact manifest, fixing the store layout under
  ``outputs/{id}/`` for every front door;
* :mod:`.publish`: the one upload of a manifest (complete-or-absent objects, stale keys
  removed, rollback on failure);
* :mod:`.sink`: the sink protocol (``on_event`` / ``set_stage`` / ``should_stop``) a front
  door implements (:func:`splatforge.pipeline.run_job_pipeline` drives the pipeline through
  it);
* :mod:`.notify`: completion notifications (a signed HTTP POST; SNS in the AWS worker).

Layering: ``jobs`` sits above the stage readers it classifies with (ingest, scene) and the
store (storage), below the pipeline and the front doors (``cli``, ``service``, ``aws``); it
imports none of those.
"""

from .inputs import InputKind, classify_input, has_images, image_folder
from .manifest import ARTIFACT_NAMES, artifact_files, model_key
from .publish import publish
from .sink import CallbackSink, JobSink, JobStopped

__all__ = ["ARTIFACT_NAMES", "CallbackSink", "InputKind", "JobSink", "JobStopped",
           "artifact_files", "classify_input", "has_images", "image_folder", "model_key",
           "publish"]
