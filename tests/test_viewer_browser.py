"""The viewer in a real browser: Debian's chromium, headless, WebGL through SwiftShader (no
GPU), driven by selenium + chromedriver, opens the viewer of the session's trained plush_dog
model and takes screenshots. The splat must be drawn: the centre of the image differs clearly
from the background (the same view with the model hidden), and two camera poses (set from the
server side) give different images. Screenshots are kept in ``test-artifacts/viewer/``.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "viewer"
WINDOW = (1200, 800)

#: chromium flags that work headless on a machine without a GPU (WebGL via SwiftShader).
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--use-gl=angle",
                  "--hide-scrollbars")


@contextmanager
def headless_chromium(size: tuple[int, int] = WINDOW) -> Iterator[object]:
    """A selenium ``webdriver.Chrome`` on Debian's ``chromium`` / ``chromedriver`` with a fresh
    profile; fails (never skips) when they are not installed (``.ci/run`` installs them)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver_bin = shutil.which("chromedriver")
    assert chromium and driver_bin, ("Debian's chromium and chromium-driver are needed "
                                     "(apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="splatforge-chromium-")
    opts = Options()
    opts.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--window-size={size[0]},{size[1]}",
                 f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(driver_bin))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver) -> np.ndarray:
    """The page as an [H, W, 3] uint8 RGB array."""
    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))


def centre(img: np.ndarray, frac: float = 0.3) -> np.ndarray:
    """The central ``frac`` x ``frac`` box of an image, as float32."""
    h, w = img.shape[:2]
    dh, dw = int(h * frac / 2), int(w * frac / 2)
    return img[h // 2 - dh:h // 2 + dh, w // 2 - dw:w // 2 + dw].astype(np.float32)


def settled_screenshot(driver, timeout: float = 30.0, period: float = 1.0) -> np.ndarray:
    """Screenshots every ``period`` s until two in a row have the same centre (the renderer
    has caught up: SwiftShader is slow), at most ``timeout`` s; returns the last."""
    prev = screenshot(driver)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(period)
        img = screenshot(driver)
        if np.abs(centre(img) - centre(prev)).mean() < 0.5:
            return img
        prev = img
    return prev


def wait_for(cond, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def connected_client(viewer, timeout: float = 60.0):
    """The one browser connected to ``viewer``, once it has reported its camera."""
    def ready() -> bool:
        clients = list(viewer.server.get_clients().values())
        if not clients:
            return False
        try:
            clients[0].camera.position  # noqa: B018 (raises until the camera is reported)
        except AssertionError:
            return False
        return True

    wait_for(ready, timeout, "the browser to connect")
    return list(viewer.server.get_clients().values())[0]


def dismiss_notifications(driver) -> None:
    """Close the page's notifications (headless chromium gets "Software WebGL rendering
    detected"), so screenshots show the scene."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button"):
        if "closebutton" in (button.get_attribute("class") or "").lower():
            try:
                button.click()
            except Exception:  # noqa: BLE001 (gone already; only cosmetic)
                pass


def save_png(img: np.ndarray, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    Image.fromarray(img).save(path)
    return path


def test_browser_draws_the_splat(trained_plush):
    """chromium renders the trained model: centre differs from the background, and two
    training-camera poses give two different images."""
    from splatforge.viewer import SplatViewer, load_view_source

    src = load_view_source(trained_plush.model_dir)
    assert src.splats is not None and len(src.cameras) == 84 and len(src.points) == 3122
    viewer = SplatViewer("127.0.0.1", 0)
    try:
        mv = viewer.add_source(src)
        assert mv.display.total == trained_plush.result.num_gaussians
        with headless_chromium() as driver:
            driver.get(viewer.url)
            client = connected_client(viewer)
            time.sleep(1.0)
            dismiss_notifications(driver)
            overview = settled_screenshot(driver)
            save_png(overview, "overview.png")
            viewer.show_cameras.value = False  # only splats in the centre from here on
            cam_a, cam_b = src.cameras[0], src.cameras[len(src.cameras) // 3]
            viewer.look_through(client, mv, cam_a)
            wait_for(lambda: np.allclose(client.camera.position,
                                         cam_a.camtoworld[:3, 3], atol=1e-6),
                     what="the camera to move")
            pose_a = settled_screenshot(driver)
            viewer.look_through(client, mv, cam_b)
            pose_b = settled_screenshot(driver)
            viewer.look_through(client, mv, cam_a)
            mv.visible_checkbox.value = False  # the same view without the model
            background = settled_screenshot(driver)
        for name, img in (("pose_a.png", pose_a), ("pose_b.png", pose_b),
                          ("background.png", background)):
            save_png(img, name)
    finally:
        viewer.stop()

    bg = centre(background)
    bg_colour = np.median(bg.reshape(-1, 3), axis=0)
    # the background is one flat colour: the model was what the centre showed
    assert np.abs(bg - bg_colour).mean() < 3.0, "background not uniform"
    diff_a = np.abs(centre(pose_a) - bg_colour).mean()
    diff_b = np.abs(centre(pose_b) - bg_colour).mean()
    diff_ab = np.abs(centre(pose_a) - centre(pose_b)).mean()
    print(f"centre vs background: pose A {diff_a:.1f}, pose B {diff_b:.1f}; "
          f"A vs B {diff_ab:.1f} (mean abs difference, 0-255)")
    assert diff_a > 20.0 and diff_b > 20.0
    assert diff_ab > 10.0
    # the first view (behind training camera 0, frustums shown) shows the model too
    assert np.abs(centre(overview) - bg_colour).mean() > 20.0
