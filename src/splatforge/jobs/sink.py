"""The sink protocol a front door implements, and the one way a job runs the pipeline.

A front door (the CLI's console, the service's database runner, the AWS worker's
DynamoDB/Step Functions reporter) is a :class:`JobSink`:

* ``on_event(event)``: every pipeline :class:`~splatforge.events.Event` (never raises);
* ``set_stage(stage)``: the front door's own coarse stage (``fetch``, ``upload``, ...);
* ``should_stop() -> str | None``: a reason to stop (``cancel``, ``shutdown``, ``timeout``)
  or None. The pipeline polls it at every stage boundary and after every training step, so
  a stop never needs an exception raised from inside a callback.

:func:`splatforge.pipeline.run_job_pipeline` runs the pipeline against a sink and turns a
requested stop into :class:`JobStopped` (with the reason), whatever stage it hit.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..events import Event


@runtime_checkable
class JobSink(Protocol):
    """Where a running job reports (see the module docstring)."""

    def on_event(self, event: Event) -> None: ...

    def set_stage(self, stage: str) -> None: ...

    def should_stop(self) -> str | None: ...


class JobStopped(Exception):
    """The sink asked the job to stop; ``reason`` is what ``should_stop`` returned.

    Training stopped at a step boundary with a checkpoint (a re-run resumes); other stages
    stop at their end."""

    def __init__(self, reason: str, stage: str | None = None):
        self.reason = reason
        self.stage = stage
        super().__init__(f"stopped ({reason})" + (f" in {stage}" if stage else ""))


class CallbackSink:
    """A :class:`JobSink` over a plain events callback (the CLI's console): events go to
    ``events``, stages become ``info`` events, and it never asks to stop (Ctrl-C stops the
    CLI, with training's checkpoint)."""

    def __init__(self, events: Any, name: str = "job"):
        self.events = events
        self.name = name

    def on_event(self, event: Event) -> None:
        self.events(event)

    def set_stage(self, stage: str) -> None:
        self.events(Event("info", self.name, stage))

    def should_stop(self) -> str | None:
        return None
