"""The one progress channel of every stage.

Stages never print. They call an ``events`` callback with :class:`Event` objects: the CLI turns
them into progress bars, the service into job-status rows, the batch worker into DynamoDB
updates. Nothing parses log text to learn progress.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

EventKind = Literal["stage_started", "stage_finished", "progress", "warning", "info"]


@dataclass(frozen=True)
class Event:
    """One thing a stage reports.

    Attributes:
        kind: ``stage_started`` | ``stage_finished`` | ``progress`` | ``warning`` | ``info``.
        stage: the pipeline stage (``ingest``, ``sfm``, ...).
        message: human-readable text (a step name for ``progress``).
        step: 1-based step number for ``progress`` events (k of ``total``).
        total: number of steps, when known.
        eta_s: estimated seconds until the step counter reaches ``total``.
        data: extra numbers (loss, PSNR, registered images, ...).
        time: wall-clock time of the event (seconds since the epoch).
    """

    kind: EventKind
    stage: str
    message: str = ""
    step: int | None = None
    total: int | None = None
    eta_s: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


EventCallback = Callable[[Event], None]


def null_events(event: Event) -> None:
    """An events callback that ignores everything."""


class StageReporter:
    """Helper a stage uses to emit well-formed events, with an ETA for counted steps.

    The ETA is (elapsed / done) * remaining, measured from the first ``start_steps`` call of
    the current counter (a plain linear estimate, as tqdm makes).
    """

    def __init__(self, stage: str, events: EventCallback | None):
        self.stage = stage
        self.events = events if events is not None else null_events
        self._t0 = time.monotonic()
        self._count_t0 = self._t0
        self._count_name = ""
        self._count_total: int | None = None

    def started(self, message: str = "", **data: Any) -> None:
        self._t0 = time.monotonic()
        self.events(Event("stage_started", self.stage, message, data=data))

    def finished(self, message: str = "", **data: Any) -> None:
        data.setdefault("seconds", round(time.monotonic() - self._t0, 3))
        self.events(Event("stage_finished", self.stage, message, data=data))

    def warning(self, message: str, **data: Any) -> None:
        self.events(Event("warning", self.stage, message, data=data))

    def info(self, message: str, **data: Any) -> None:
        self.events(Event("info", self.stage, message, data=data))

    def start_steps(self, name: str, total: int | None) -> None:
        """Begin a counter ``name`` of ``total`` steps (emits step 0)."""
        self._count_name = name
        self._count_total = total
        self._count_t0 = time.monotonic()
        self.events(Event("progress", self.stage, name, step=0, total=total))

    def step(self, k: int, **data: Any) -> None:
        """Report that step ``k`` (1-based) of the current counter is done."""
        eta = None
        if self._count_total and k > 0:
            elapsed = time.monotonic() - self._count_t0
            eta = elapsed / k * max(self._count_total - k, 0)
        self.events(
            Event("progress", self.stage, self._count_name, step=k, total=self._count_total,
                  eta_s=eta, data=data)
        )
