"""The viewer during training: ``train --viewer`` / ``reconstruct --viewer``.

:class:`LiveTrainingViewer` plugs into the trainer twice:

* :meth:`~LiveTrainingViewer.step_hook` (``run_train(..., step_hook=)``) runs in the training
  thread after every step: it shows the training cameras and SfM points once, refreshes the
  splats every ``refresh_every`` steps, and blocks while the page's Pause button is pressed
  (the loop really stops; the trainer does not count blocked time as training time);
* :meth:`~LiveTrainingViewer.events` wraps the events callback: ``progress`` events of stage
  ``train`` update the step, loss, PSNR and Gaussian-count fields, then every event is passed
  on unchanged.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..events import Event, EventCallback
from ..util import sigint_handler
from .data import DEFAULT_MAX_SPLATS, scene_cameras, scene_points
from .server import DEFAULT_HOST, DEFAULT_PORT, SplatViewer

#: Default number of training steps between two splat refreshes.
DEFAULT_REFRESH_EVERY = 200


class LiveTrainingViewer:
    """A viewer page that follows a training run.

    Args:
        host, port, max_splats: as :class:`~splatforge.viewer.server.SplatViewer`.
        refresh_every: send the splats every this many steps (>= 1), and at the first step.
        label: model name on the page.

    Attributes:
        viewer: the :class:`SplatViewer`.
        step: last completed training step seen by the hook (0 before).
        refreshes: how many times the splats were sent; refreshed_at: the step of the last.
        paused_seconds: total time the hook held the loop paused.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 max_splats: int = DEFAULT_MAX_SPLATS,
                 refresh_every: int = DEFAULT_REFRESH_EVERY, label: str = "training"):
        if refresh_every < 1:
            from ..errors import ConfigError

            raise ConfigError(f"viewer refresh_every: must be >= 1, got {refresh_every}")
        self.viewer = SplatViewer(host, port, max_splats, label="splatforge: training")
        self.refresh_every = int(refresh_every)
        self.model = self.viewer.add_model(label)
        self.step = 0
        self.refreshes = 0
        self.refreshed_at: int | None = None
        self.paused_seconds = 0.0
        self._resume = threading.Event()
        self._resume.set()
        self._stop_requested = False
        self._scene_shown: Any = None
        gui = self.viewer.server.gui
        with gui.add_folder("Training", order=-1):
            self.status_md = gui.add_markdown("waiting for the first step")
            self.step_number = gui.add_number("Step", 0, disabled=True)
            self.loss_number = gui.add_number("Loss", 0.0, disabled=True, step=1e-4)
            self.psnr_number = gui.add_number("PSNR (dB)", 0.0, disabled=True, step=0.01)
            self.gaussians_number = gui.add_number("Gaussians", 0, disabled=True)
            self.pause_button = gui.add_button("Pause training")
            self.refresh_slider = gui.add_slider("Refresh every (steps)", 1,
                                                 max(5000, self.refresh_every), 1,
                                                 self.refresh_every)
        self.pause_button.on_click(lambda _event: self.toggle_pause())
        self.refresh_slider.on_update(
            lambda _event: setattr(self, "refresh_every", int(self.refresh_slider.value)))

    @property
    def url(self) -> str:
        return self.viewer.url

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def pause(self) -> None:
        """Hold the training loop at the next step boundary until :meth:`resume`."""
        self._resume.clear()
        self.pause_button.label = "Resume training"
        self.status_md.content = f"**paused** after step {self.step}"

    def resume(self) -> None:
        self._resume.set()
        self.pause_button.label = "Pause training"
        self.status_md.content = "training"

    def toggle_pause(self) -> None:
        """What the page's Pause/Resume button does."""
        if self.paused:
            self.resume()
        else:
            self.pause()

    def request_stop(self) -> None:
        """Make the next hook call raise ``KeyboardInterrupt`` (the trainer then stops with a
        checkpoint); also releases a pause."""
        self._stop_requested = True
        self._resume.set()

    # --- trainer plumbing ------------------------------------------------------------------

    def show_splats(self, trainer: Any) -> None:
        """Send the trainer's current splats (normalised training frame -> source frame)."""
        from ..splats import splats_to_source_frame

        params = trainer.extras.export_params(trainer.params)  # appearance baked, detached
        splats = splats_to_source_frame(params, trainer.scene)
        self.viewer.set_splats(self.model, splats)
        self.refreshes += 1
        self.refreshed_at = self.step

    def step_hook(self, trainer: Any, step: int) -> None:
        """``step_hook(trainer, step)`` for :func:`splatforge.train.run_train`.

        Raises:
            KeyboardInterrupt: after :meth:`request_stop` (training stops with a checkpoint).
        """
        self.step = step
        if self._scene_shown is not trainer.scene:
            self._scene_shown = trainer.scene
            self.viewer.set_cameras(self.model, scene_cameras(trainer.scene))
            pts, rgb = scene_points(trainer.scene)
            self.viewer.set_points(self.model, pts, rgb)
        last = step >= getattr(getattr(trainer, "config", None), "max_steps", step + 1)
        if (self.refreshed_at is None or step - self.refreshed_at >= self.refresh_every
                or last):
            self.show_splats(trainer)
        self.step_number.value = step
        if self.paused:
            self.status_md.content = f"**paused** after step {step}"
            t0 = time.monotonic()
            self.show_splats(trainer)  # show exactly what is paused
            with self._ctrl_c_stops():
                while not self._resume.wait(0.2):
                    pass
            self.paused_seconds += time.monotonic() - t0
        if self._stop_requested:
            raise KeyboardInterrupt

    def _ctrl_c_stops(self):
        """While paused in the main thread, Ctrl-C stops training (with a checkpoint) instead
        of waiting for the next step, which would never come."""
        return sigint_handler(lambda signum, frame: self.request_stop())

    def events(self, downstream: EventCallback | None = None) -> EventCallback:
        """An events callback that updates the page from ``progress`` events of the ``train``
        stage (step, loss, PSNR, Gaussians) and then calls ``downstream``."""

        def callback(event: Event) -> None:
            if event.kind == "progress" and event.stage == "train" and event.step:
                d = event.data
                if "loss" in d:
                    self.loss_number.value = float(d["loss"])
                if "psnr" in d:
                    self.psnr_number.value = round(float(d["psnr"]), 2)
                if "num_gaussians" in d:
                    self.gaussians_number.value = int(d["num_gaussians"])
                if not self.paused:
                    sps = d.get("steps_per_second")
                    self.status_md.content = (
                        f"training: step {event.step} of {event.total}"
                        + (f", {sps:.2f} steps/s" if sps else ""))
            elif event.kind == "stage_finished" and event.stage == "train":
                self.status_md.content = f"training finished at step {self.step}"
            if downstream is not None:
                downstream(event)

        return callback

    def finish(self) -> None:
        """Mark training as finished (the page keeps showing the last splats)."""
        self.status_md.content = f"training finished at step {self.step}"
        self.pause_button.disabled = True

    def stop(self) -> None:
        """Release a pause and stop the server."""
        self._resume.set()
        self.viewer.stop()
