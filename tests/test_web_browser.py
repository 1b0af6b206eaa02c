"""The web app of ``splatforge serve`` in a real browser: Debian's headless chromium (WebGL via
SwiftShader) driven by selenium, against a real ``splatforge serve`` process with an API key.

One preview job of the shipped sample's photos (``samples/plush_dog/images``, uploaded by the
file input, data factor 8, a few steps) is shared by the tests: sign-in, live progress, the
result page (held-out renders, the WebGL splat view drawn, the PLY downloaded), an orbit
video (decoded with PyAV); and the failure paths (a wrong key, a text file, a cancelled job)
each show the server's own message. Screenshots go to ``test-artifacts/web/``; with
``SPLATFORGE_UPDATE_DOCS=1`` also to ``docs/`` (the README's pictures).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import Server
from test_viewer_browser import CHROMIUM_FLAGS

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "samples" / "plush_dog" / "images"
ARTIFACTS = ROOT / "test-artifacts" / "web"
DOCS = ROOT / "docs"
KEY = "web-test-key"
WINDOW = (1000, 900)
#: the WebGL view's clear colour (static/splat-view.js ``background``), 0-255
VIEW_BACKGROUND = np.array([0.08, 0.09, 0.11]) * 255


@contextmanager
def chromium(download_dir: Path, size: tuple[int, int] = WINDOW) -> Iterator[Any]:
    """Headless chromium (fresh profile) that saves downloads into ``download_dir``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver_bin, "Debian's chromium and chromium-driver are needed"
    profile = tempfile.mkdtemp(prefix="splatforge-web-")
    opts = Options()
    opts.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--window-size={size[0]},{size[1]}",
                 f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=opts, service=Service(driver_bin))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(download_dir)})
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(cond, timeout: float = 60.0, what: str = "condition", period: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(period)


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    els = driver.find_elements(By.CSS_SELECTOR, css)
    return els[0].text.strip() if els else ""


def shot(driver, name: str) -> None:
    """Save a screenshot of the page under test-artifacts/web/ (and docs/ when asked),
    reduced to a 128-colour palette so the committed PNGs stay small."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    img = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    small = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(ARTIFACTS / name, optimize=True)
    if os.environ.get("SPLATFORGE_UPDATE_DOCS") == "1":
        DOCS.mkdir(exist_ok=True)
        small.save(DOCS / name, optimize=True)


def full_page_height(driver) -> None:
    h = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WINDOW[0], min(max(int(h) + 20, WINDOW[1]), 2600))


def sign_in(driver, url: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    box = wait_for(lambda: driver.find_element(By.ID, "api-key").is_displayed()
                   and driver.find_element(By.ID, "api-key"), what="the sign-in form")
    box.clear()
    box.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#signin-form button").click()


def start_job(driver, files: list[Path], options: dict[str, str]) -> None:
    """Fill the new-scene form (files by the file input) and submit it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    wait_for(lambda: driver.find_element(By.ID, "new-form").is_displayed(),
             what="the new-scene form")
    driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in files))
    for css, value in options.items():
        el = driver.find_element(By.CSS_SELECTOR, css)
        if el.tag_name == "select":
            Select(el).select_by_value(value)
        else:
            el.clear()
            el.send_keys(value)
    driver.find_element(By.ID, "start").click()


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """A server with an API key and a browser signed in to it."""
    data = tmp_path_factory.mktemp("web")
    downloads = data / "downloads"
    downloads.mkdir()
    server = Server(data / "server", api_key=KEY, max_jobs=1).start()
    try:
        with chromium(downloads) as driver:
            yield {"server": server, "driver": driver, "downloads": downloads,
                   "api": server.client()}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def job(web):
    """The shared preview job, started from the browser and watched to its end on the job
    page: ``{"id", "scene_id", "progress_texts", "status"}``."""
    from selenium.webdriver.common.by import By

    driver, server = web["driver"], web["server"]
    sign_in(driver, server.url, KEY)
    photos = sorted(PHOTOS.glob("*.jpg"))
    assert len(photos) == 84
    shot_taken = False
    start_job(driver, photos, {"#scene-name": "plush (browser test)",
                               "#opt-train-max_steps": "30",
                               "#opt-scene-data_factor": "8"})
    wait_for(lambda: "/ui/jobs/" in driver.current_url, 120, "the job page")
    job_id = driver.current_url.rstrip("/").rsplit("/", 1)[1]
    texts: list[str] = []
    deadline = time.monotonic() + 600
    status = ""
    while time.monotonic() < deadline:
        t = text_of(driver, "#progress-text")
        if t and (not texts or texts[-1] != t):
            texts.append(t)
        if not shot_taken and re.search(r"stage train: step \d+ of \d+", t):
            shot(driver, "web-job.png")
            shot_taken = True
        status = text_of(driver, "#job-status")
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    api_job = web["api"].get(f"/jobs/{job_id}").json()
    assert status == "succeeded", (status, api_job.get("error"), texts[-5:])
    wait_for(lambda: driver.find_element(By.ID, "result-link").is_displayed(), 30,
             "the result link")
    return {"id": job_id, "scene_id": api_job["scene_id"], "progress_texts": texts,
            "status": status, "job": api_job}


def test_wrong_key_shows_the_servers_message(web):
    from selenium.webdriver.common.by import By

    driver, server = web["driver"], web["server"]
    sign_in(driver, server.url, "not-the-key")
    msg = wait_for(lambda: text_of(driver, "#signin-msg"), 30, "the sign-in message")
    expected = httpx.get(server.url + "/jobs", headers={"Authorization": "Bearer nope"})
    assert expected.status_code == 401
    assert msg == expected.json()["detail"]
    assert not driver.find_element(By.ID, "app").is_displayed()
    shot(driver, "web-signin.png")


def test_progress_then_success(job):
    texts = job["progress_texts"]
    print("progress texts seen:", len(texts), texts[:3], "...", texts[-3:])
    assert len(texts) >= 3
    assert any(re.search(r"stage train: step \d+ of 30", t) for t in texts)
    assert job["job"]["metrics"]["step"] == 30


def test_result_page_renders_and_splat(web, job):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = web["driver"]
    driver.find_element(By.ID, "result-link").click()
    wait_for(lambda: "/ui/scenes/" in driver.current_url, 30, "the result page")
    # a held-out render (ground truth | render | error) has loaded
    wait_for(lambda: driver.execute_script(
        "const i = document.querySelector('img.heldout'); return i && i.complete && "
        "i.naturalWidth > 0 ? i.naturalWidth : 0"), 60, "a held-out render")
    w, h, name = driver.execute_script(
        "const i = document.querySelector('img.heldout');"
        "return [i.naturalWidth, i.naturalHeight, i.nextSibling.textContent]")
    cams = web["api"].get(f"/scenes/{job['scene_id']}/artifacts/cameras.json").json()
    cam = next(c for c in cams if c["img_name"] == name.rsplit(".", 1)[0])
    # three panels of that held-out view as trained (375x250 photos at data factor 8)
    assert (w, h) == (3 * cam["width"], cam["height"]) and abs(cam["width"] - 47) <= 3
    assert text_of(driver, "#metrics")  # PSNR etc. shown
    # the WebGL view has drawn the splats: its centre differs from the clear colour
    wait_for(lambda: int(driver.find_element(By.ID, "splat-canvas")
                         .get_attribute("data-drawn") or 0) >= 1, 90, "the splat view")
    time.sleep(0.5)
    view_a = canvas_pixels(driver)
    save_png(view_a, "splat-view.png")
    # the same view without the splats: the clear colour alone
    canvas = driver.find_element(By.ID, "splat-canvas")
    drawn = int(canvas.get_attribute("data-drawn"))
    driver.execute_script("window.splatView.visible = false; window.splatView.request()")
    wait_for(lambda: int(canvas.get_attribute("data-drawn")) > drawn, 30, "a redraw")
    background = canvas_pixels(driver)
    drawn = int(canvas.get_attribute("data-drawn"))
    driver.execute_script("window.splatView.visible = true; window.splatView.request()")
    wait_for(lambda: int(canvas.get_attribute("data-drawn")) > drawn, 30, "a redraw")
    assert np.abs(background.astype(np.float32) - VIEW_BACKGROUND).mean() < 2.0
    diff = np.abs(box(view_a) - VIEW_BACKGROUND).mean(-1)
    print(f"splat view: centre differs from the background by {diff.mean():.1f} on "
          f"average, {(diff > 20).mean():.0%} of its pixels by > 20")
    assert diff.mean() > 20.0 and (diff > 20).mean() > 0.3
    # turning the view (arrow keys) draws a different image
    drawn = int(canvas.get_attribute("data-drawn"))
    for _ in range(6):
        canvas.send_keys(Keys.ARROW_LEFT)
    wait_for(lambda: int(canvas.get_attribute("data-drawn")) > drawn, 30, "a redraw")
    time.sleep(0.5)
    view_b = canvas_pixels(driver)
    assert np.abs(box(view_a) - box(view_b)).mean() > 5.0


def save_png(img: np.ndarray, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(ARTIFACTS / name)


def canvas_pixels(driver) -> np.ndarray:
    """The splat canvas as [H, W, 3] uint8 (its drawing buffer is preserved)."""
    import base64

    url = driver.execute_script(
        "return document.getElementById('splat-canvas').toDataURL('image/png')")
    raw = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def box(img: np.ndarray, frac: float = 0.2) -> np.ndarray:
    h, w = img.shape[:2]
    dh, dw = int(h * frac / 2), int(w * frac / 2)
    return img[h // 2 - dh:h // 2 + dh, w // 2 - dw:w // 2 + dw].astype(np.float32)


def test_download_ply(web, job):
    from selenium.webdriver.common.by import By

    driver = web["driver"]
    if "/ui/scenes/" not in driver.current_url:
        driver.get(web["server"].url + f"/ui/scenes/{job['scene_id']}")
    button = wait_for(lambda: driver.find_elements(
        By.CSS_SELECTOR, "button[data-artifact='point_cloud.ply']"), 60, "the PLY button")[0]
    button.click()
    target = web["downloads"] / "point_cloud.ply"
    want = web["api"].get(f"/scenes/{job['scene_id']}/artifacts/point_cloud.ply").content
    wait_for(lambda: target.is_file() and target.stat().st_size == len(want), 60,
             "the PLY download")
    assert target.read_bytes() == want
    from splatforge.export.ply import read_ply

    assert len(read_ply(target)["means"]) == job["job"]["metrics"]["num_gaussians"]


def test_orbit_render_is_a_playable_mp4(web, job):
    import av
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = web["driver"]
    if "/ui/scenes/" not in driver.current_url:
        driver.get(web["server"].url + f"/ui/scenes/{job['scene_id']}")
    wait_for(lambda: driver.find_element(By.ID, "render-form").is_displayed(), 30,
             "the render form")
    Select(driver.find_element(By.ID, "render-path")).select_by_value("orbit")
    frames = driver.find_element(By.ID, "render-frames")
    frames.clear()
    frames.send_keys("24")
    driver.find_element(By.ID, "render-start").click()
    seen = set()

    def ready():
        seen.add(text_of(driver, "#render-status"))
        err = text_of(driver, "#render-error")
        assert not err, err
        return "video ready" in text_of(driver, "#render-status")
    wait_for(ready, 180, "the render job")
    print("render status texts:", sorted(seen))
    name = driver.execute_script(
        "const v = document.querySelector('#videos video'); return v && v.src ? "
        "v.getAttribute('aria-label') : null")
    assert name and name.startswith("camera-path video videos/")
    video = name.split(" ")[-1]
    raw = web["api"].get(f"/scenes/{job['scene_id']}/artifacts/{video}").content
    with av.open(io.BytesIO(raw)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == 24
    api_job = web["api"].get("/jobs?limit=1").json()[0]
    assert api_job["kind"] == "render" and api_job["metrics"]["video"] == video
    size = (api_job["metrics"]["height"], api_job["metrics"]["width"])
    assert decoded[0].shape == (*size, 3)
    cams = web["api"].get(f"/scenes/{job['scene_id']}/artifacts/cameras.json").json()
    assert size in {(c["height"] // 2 * 2, c["width"] // 2 * 2) for c in cams}  # even sizes
    assert np.abs(decoded[0].astype(np.float32) - decoded[12]).mean() > 1.0  # it moves
    arts = [a["name"] for a in web["api"].get(
        f"/scenes/{job['scene_id']}/artifacts").json()["artifacts"]]
    assert video in arts
    wait_for(lambda: driver.execute_script(
        "return document.querySelector('#videos video').readyState"), 30, "the video element")
    driver.execute_script("window.scrollTo(0, 0)")
    full_page_height(driver)
    shot(driver, "web-result.png")
    driver.set_window_size(*WINDOW)


def test_text_file_upload_shows_the_servers_message(web, job, tmp_path):
    driver, server = web["driver"], web["server"]
    note = tmp_path / "notes.txt"
    note.write_text("not a photo\n")
    driver.get(server.url + "/")
    start_job(driver, [note], {})
    msg = wait_for(lambda: text_of(driver, "#new-error"), 30, "the upload error")
    api = web["api"]
    sid = api.post("/scenes", json={}).json()["id"]
    expected = api.post(f"/scenes/{sid}/media",
                        files={"files": ("notes.txt", b"not a photo\n", "text/plain")})
    assert expected.status_code == 400
    assert msg == expected.json()["detail"]
    assert "notes.txt" in msg and "unsupported file type" in msg


def test_cancelled_job_shows_the_servers_message(web, job):
    from selenium.webdriver.common.by import By

    driver, server = web["driver"], web["server"]
    driver.get(server.url + "/")
    photos = sorted(PHOTOS.glob("*.jpg"))
    start_job(driver, photos, {"#opt-train-max_steps": "20000",
                               "#opt-scene-data_factor": "8"})
    wait_for(lambda: "/ui/jobs/" in driver.current_url, 120, "the job page")
    wait_for(lambda: text_of(driver, "#job-status") == "running", 120, "the job to run")
    driver.find_element(By.ID, "cancel").click()
    wait_for(lambda: text_of(driver, "#job-status") == "cancelled", 120, "the cancel")
    msg = wait_for(lambda: text_of(driver, "#job-error"), 30, "the cancel message")
    job_id = driver.current_url.rstrip("/").rsplit("/", 1)[1]
    api_job = web["api"].get(f"/jobs/{job_id}").json()
    assert api_job["status"] == "cancelled"
    assert msg == (f"cancelled in stage {api_job['error']['stage']}: "
                   f"{api_job['error']['message']}")
    assert "cancelled by request" in msg
    assert not driver.find_element(By.ID, "cancel").is_displayed()
    # the job list on the home page shows both jobs and the render
    driver.get(server.url + "/")
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#job-table tbody tr")) >= 3,
             30, "the job list")
    full_page_height(driver)
    shot(driver, "web-home.png")
    driver.set_window_size(*WINDOW)


def test_render_route_checks_and_camera_list(web, job):
    """``POST /scenes/{id}/renders``: 404 / 409 / 422 with the reason; a list of cameras
    (two of the model's own, from cameras.json) renders one frame each."""
    import av

    from service_helpers import wait_job

    api = web["api"]
    assert api.post("/scenes/" + "0" * 32 + "/renders", json={}).status_code == 404
    empty = api.post("/scenes", json={}).json()["id"]
    r = api.post(f"/scenes/{empty}/renders", json={})
    assert r.status_code == 409 and "no trained model" in r.json()["detail"]
    sid = job["scene_id"]
    bad = {"camtoworld": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]],
           "fx": 50, "fy": 50, "width": 40, "height": 30}
    r = api.post(f"/scenes/{sid}/renders", json={"path": [bad]})
    assert r.status_code == 422 and "not a rotation" in r.text
    r = api.post(f"/scenes/{sid}/renders", json={"path": "orbit", "frames": 0})
    assert r.status_code == 422
    cams = api.get(f"/scenes/{sid}/artifacts/cameras.json").json()
    path = []
    for c in cams[:2]:
        m = [row + [p] for row, p in zip(c["rotation"], c["position"])] + [[0, 0, 0, 1]]
        path.append({"camtoworld": m, "fx": c["fx"], "fy": c["fy"], "width": c["width"],
                     "height": c["height"]})
    r = api.post(f"/scenes/{sid}/renders", json={"path": path, "fps": 2})
    assert r.status_code == 202, r.text
    done = wait_job(api, r.json()["job_id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert done["kind"] == "render" and done["metrics"]["frames"] == 2
    raw = api.get(f"/scenes/{sid}/artifacts/{done['metrics']['video']}").content
    with av.open(io.BytesIO(raw)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 2
