"""``train --viewer``: training on CPU with the live viewer in the same process, a real
browser (headless chromium) on the page; its Pause button, clicked in the browser, really
stops the training loop, Resume continues it, and the splats are refreshed as training goes."""

from __future__ import annotations

import threading
import time

import numpy as np
from test_viewer_browser import (
    connected_client,
    headless_chromium,
    save_png,
    screenshot,
    wait_for,
)

STEPS = 60
REFRESH = 10
#: The step at which the test presses Pause. The test's own hook holds the loop there until
#: the browser's click has reached the server, so a slow browser cannot let training finish
#: first; the pause itself is then the viewer's.
PAUSE_AT = 15


def _click_button(driver, label: str) -> None:
    """Click the page's button whose text is ``label`` (the viser GUI is React/Mantine)."""
    from selenium.webdriver.common.by import By

    def find():
        for b in driver.find_elements(By.TAG_NAME, "button"):
            if b.text.strip() == label:
                return b
        return None

    wait_for(lambda: find() is not None, 30, f"a button {label!r}")
    find().click()


def test_train_with_live_viewer_pause_resume(plush_scene, plush_scene_config, tmp_path):
    from splatforge.config import TrainConfig
    from splatforge.train import run_train
    from splatforge.viewer import LiveTrainingViewer

    cfg = TrainConfig(max_steps=STEPS, save_steps=[STEPS], log_every=5, eval_every=0,
                      densify_from_iter=20, densification_interval=20, densify_until_iter=50,
                      sh_degree=0, seed=0, device="cpu")
    live = LiveTrainingViewer("127.0.0.1", 0, refresh_every=REFRESH)
    events: list = []
    out: dict = {}
    hook_steps: list[int] = []

    def hook(trainer, step):
        hook_steps.append(step)
        if step == PAUSE_AT:
            wait_for(lambda: live.paused, 120, "the browser's Pause click")
        live.step_hook(trainer, step)

    def train():
        try:
            out["result"] = run_train(cfg, plush_scene, tmp_path / "model",
                                      live.events(events.append),
                                      scene_config=plush_scene_config, step_hook=hook)
        except BaseException as e:  # reported by the assertions below
            out["error"] = e

    try:
        with headless_chromium() as driver:
            driver.get(live.url)
            connected_client(live.viewer)
            t0 = time.monotonic()
            thread = threading.Thread(target=train, daemon=True)
            thread.start()
            wait_for(lambda: len(hook_steps) >= PAUSE_AT or "error" in out, 180,
                     f"{PAUSE_AT} training steps")
            assert "error" not in out, out.get("error")
            _click_button(driver, "Pause training")
            wait_for(lambda: live.paused, 60, "the pause to take effect")
            # the loop stops at the step boundary and stays there
            wait_for(lambda: live.step == PAUSE_AT, 30, "the viewer's hook to hold the loop")
            stopped_at = live.step
            time.sleep(3.0)
            assert live.step == stopped_at and hook_steps[-1] == stopped_at
            assert not (tmp_path / "model" / "metrics.json").exists()
            assert live.status_md.content.startswith("**paused**")
            save_png(screenshot(driver), "live_paused.png")
            _click_button(driver, "Resume training")
            wait_for(lambda: live.step > stopped_at, 60, "training to continue")
            thread.join(timeout=300)
            wall = time.monotonic() - t0
    finally:
        live.stop()

    assert not thread.is_alive(), "training did not finish"
    assert "error" not in out, out.get("error")
    res = out["result"]
    assert res.step == STEPS and hook_steps == list(range(1, STEPS + 1))
    assert live.paused_seconds >= 3.0
    # the paused time is not training time
    assert res.train_seconds < wall - 3.0
    # splats sent at step 1, every REFRESH steps, when paused and at the end
    assert live.refreshes >= STEPS // REFRESH
    assert live.refreshed_at == STEPS
    shown = live.model.display
    assert shown.total == res.num_gaussians
    # the page's numbers follow the progress events
    logged = [e for e in events if e.kind == "progress" and e.stage == "train"
              and "loss" in e.data]
    assert live.step_number.value == STEPS
    assert np.isclose(live.loss_number.value, logged[-1].data["loss"])
    assert live.gaussians_number.value == logged[-1].data["num_gaussians"]
    assert live.psnr_number.value > 10
    print(f"paused {live.paused_seconds:.1f} s at step {stopped_at}; {live.refreshes} "
          f"refreshes; train {res.train_seconds:.1f} s of {wall:.1f} s wall")


def test_ctrl_c_while_paused_stops_with_a_checkpoint(plush_scene, plush_scene_config,
                                                     tmp_path):
    """Training in the main thread, paused from the page at step 3: Ctrl-C (SIGINT) stops it
    with a checkpoint at that step instead of hanging in the pause."""
    import os
    import signal

    import pytest

    from splatforge.config import TrainConfig
    from splatforge.train import TrainingInterrupted, run_train
    from splatforge.viewer import LiveTrainingViewer

    cfg = TrainConfig(max_steps=50, log_every=5, eval_every=0, sh_degree=0, seed=0,
                      device="cpu")
    live = LiveTrainingViewer("127.0.0.1", 0, refresh_every=100)

    def hook(trainer, step):
        if step == 3:
            live.toggle_pause()  # what the page's button does
            threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        live.step_hook(trainer, step)

    t0 = time.monotonic()
    try:
        with pytest.raises(TrainingInterrupted) as info:
            run_train(cfg, plush_scene, tmp_path / "model", None,
                      scene_config=plush_scene_config, step_hook=hook)
    finally:
        live.stop()
    assert info.value.step == 3 and info.value.checkpoint is not None
    assert info.value.checkpoint.is_file()
    assert 1.0 <= live.paused_seconds < 30 and time.monotonic() - t0 < 120
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
