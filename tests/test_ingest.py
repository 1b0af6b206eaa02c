"""Tests of the ingest stage on real photos and a real phone video (../shared/datasets)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFilter, ImageOps

from splatforge.config import IngestConfig
from splatforge.errors import InputError
from splatforge.events import Event
from splatforge.ingest import run_ingest
from splatforge.ingest.sharpness import (
    blur_filter_count,
    image_sharpness,
    laplacian_variance,
    scaled_size,
    sharpest_per_window,
    window_bounds,
)

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SCEAUX = DATASETS / "sceaux_castle" / "images"
CHAIR = DATASETS / "chair_video" / "input.mp4"

pytestmark = pytest.mark.skipif(
    not (SCEAUX.is_dir() and CHAIR.is_file()), reason=f"shared datasets not found at {DATASETS}")


# ----------------------------------------------------------------------------- fixtures

class Events(list):
    """An events callback that records every event."""

    def __call__(self, event: Event) -> None:
        self.append(event)

    def __bool__(self) -> bool:  # StageReporter uses ``events or null_events``
        return True

    def of(self, kind: str) -> list[Event]:
        return [e for e in self if e.kind == kind]


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory) -> list[Path]:
    """Eight sceaux photos reduced 4x (708x532 JPEG, EXIF kept): real content, fast to decode."""
    folder = tmp_path_factory.mktemp("small_photos")
    out = []
    for src in sorted(SCEAUX.glob("*.JPG"))[:8]:
        with Image.open(src) as im:
            small = im.reduce(4)
            dst = folder / src.name
            small.save(dst, "JPEG", quality=92, exif=im.info.get("exif", b""))
            out.append(dst)
    return out


def copy_photos(photos: list[Path], folder: Path, n: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in photos[:n]:
        shutil.copy(p, folder / p.name)
    return folder


def read_manifest(workspace: Path) -> dict:
    return json.loads((workspace / "ingest.json").read_text())


# ----------------------------------------------------------------------------- sharpness

def test_laplacian_variance_known_values():
    assert laplacian_variance(np.full((20, 30), 7, np.uint8)) == 0.0
    # A linear ramp has zero second derivative.
    ramp = np.add.outer(np.arange(20.0), 2 * np.arange(30.0))
    assert laplacian_variance(ramp) == pytest.approx(0.0, abs=1e-9)
    # Checkerboard of +-1: the Laplacian is -8 / +8 everywhere -> variance 64.
    checker = (np.indices((10, 10)).sum(0) % 2) * 2.0 - 1.0
    assert laplacian_variance(checker) == pytest.approx(64.0)
    assert laplacian_variance(np.zeros((2, 5))) == 0.0
    with pytest.raises(ValueError):
        laplacian_variance(np.zeros((4, 4, 3)))


def test_sharpness_orders_blur_and_ignores_rotation(small_photos):
    im = Image.open(small_photos[0])
    sharp = image_sharpness(im)
    assert image_sharpness(im.filter(ImageFilter.GaussianBlur(2))) < 0.5 * sharp
    # The 4-neighbour Laplacian is symmetric: rotating by 90 degrees changes the score only
    # through resampling round-off.
    assert image_sharpness(im.transpose(Image.Transpose.ROTATE_90)) == pytest.approx(sharp, rel=0.01)
    assert scaled_size(2832, 2128, 640) == (640, 481)
    assert scaled_size(136, 240, 320) == (136, 240)


def test_windows_and_counts():
    w = window_bounds(10, 3)
    assert w == [(0, 3), (3, 6), (6, 10)]
    assert window_bounds(5, 5) == [(i, i + 1) for i in range(5)]
    chosen, windows = sharpest_per_window([1, 5, 2, 9, 9, 0, 3, 1, 7, 2], 3)
    assert windows == w and chosen == [1, 3, 8]  # ties -> earliest
    assert blur_filter_count(11, 20, 3) == 2
    assert blur_filter_count(8, 25, 3) == 2
    assert blur_filter_count(8, 50, 7) == 1  # never below min_images
    assert blur_filter_count(3, 90, 3) == 0
    assert blur_filter_count(10, 0, 3) == 0


# ----------------------------------------------------------------------------- image folders

def test_image_folder(tmp_path, events, capsys):
    ws = tmp_path / "ws"
    res = run_ingest(IngestConfig(), SCEAUX, ws, events)

    sources = sorted(SCEAUX.glob("*.JPG"))
    assert len(sources) == 11
    assert res.kind == "images"
    assert res.images_dir == ws / "input"
    assert res.images == sorted(p.stem + ".jpg" for p in sources)
    assert sorted(p.name for p in res.images_dir.iterdir()) == res.images
    assert res.skipped == []
    # No orientation to apply: the bytes are copied as they are.
    for p in sources:
        assert (res.images_dir / (p.stem + ".jpg")).read_bytes() == p.read_bytes()

    m = read_manifest(ws)
    assert m["kind"] == "images" and m["source"] == str(SCEAUX)
    assert m["images"] == res.images and m["skipped"] == []
    assert m["config"] == IngestConfig().model_dump(mode="json")
    assert m["sharpness"] is None and m["video"] is None
    assert m["sources"]["100_7100.jpg"] == "100_7100.JPG"

    kinds = [e.kind for e in events]
    assert kinds[0] == "stage_started" and kinds[-1] == "stage_finished"
    steps = [e for e in events.of("progress") if e.message == "images"]
    assert steps[0].step == 0 and steps[-1].step == 11 and steps[-1].total == 11
    # K.txt and Readme.txt are ignored with an info event.
    assert any("K.txt" in e.message and "Readme.txt" in e.message for e in events.of("info"))
    # Stages never print.
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert not list(ws.glob(".input*")) and not list(ws.glob(".ingest*"))


def test_exif_orientation_applied(tmp_path, small_photos, events):
    folder = copy_photos(small_photos, tmp_path / "photos", 2)
    src = Image.open(small_photos[2])
    exif = src.getexif()
    exif[ExifTags.Base.Orientation] = 6
    src.save(folder / "rotated.JPEG", "JPEG", quality=95, exif=exif)
    with Image.open(small_photos[3]) as other:
        other.save(folder / "upright.Jpeg", "JPEG", quality=95, exif=other.info["exif"])

    res = run_ingest(IngestConfig(), folder, tmp_path / "ws", events)
    assert "rotated.jpg" in res.images and "upright.jpg" in res.images
    assert res.reoriented == ["rotated.jpg"]

    with Image.open(folder / "rotated.JPEG") as original:
        expected = np.asarray(ImageOps.exif_transpose(original), dtype=np.float32)
    with Image.open(res.images_dir / "rotated.jpg") as out:
        assert out.size == (src.height, src.width)  # width and height swapped
        assert out.getexif().get(ExifTags.Base.Orientation) is None  # tag dropped
        got = np.asarray(out, dtype=np.float32)
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < 2.0  # same pixels up to JPEG q95 re-encoding
    # Without an orientation to apply, the file is copied byte for byte.
    assert (res.images_dir / "upright.jpg").read_bytes() == (folder / "upright.Jpeg").read_bytes()


def test_unreadable_images_skipped(tmp_path, small_photos, events):
    folder = copy_photos(small_photos, tmp_path / "photos", 3)
    data = small_photos[3].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.JPG").write_bytes(b"")

    res = run_ingest(IngestConfig(), folder, tmp_path / "ws", events)
    assert res.images == sorted(p.stem + ".jpg" for p in small_photos[:3])
    skipped = dict(res.skipped)
    assert set(skipped) == {"truncated.jpg", "empty.JPG"}
    assert "0 bytes" in skipped["empty.JPG"]
    assert "not a readable image" in skipped["truncated.jpg"]
    warned = " ".join(e.message for e in events.of("warning"))
    assert "truncated.jpg" in warned and "empty.JPG" in warned
    assert {s["name"] for s in read_manifest(tmp_path / "ws")["skipped"]} == set(skipped)


def test_strict_stops_at_unreadable_image(tmp_path, small_photos):
    folder = copy_photos(small_photos, tmp_path / "photos", 3)
    data = small_photos[3].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError) as err:
        run_ingest(IngestConfig(strict=True), folder, tmp_path / "ws")
    assert "truncated.jpg" in str(err.value)
    assert err.value.path == folder / "truncated.jpg"
    assert not (tmp_path / "ws" / "input").exists()
    assert not list((tmp_path / "ws").glob(".input*"))


def test_empty_folder_and_too_few_images(tmp_path, small_photos):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(InputError) as err:
        run_ingest(IngestConfig(), empty, tmp_path / "ws")
    assert str(empty) in str(err.value) and "no images" in str(err.value)
    assert "at least 3" in str(err.value)

    two = copy_photos(small_photos, tmp_path / "two", 2)
    (two / "zero.jpg").write_bytes(b"")
    with pytest.raises(InputError) as err:
        run_ingest(IngestConfig(), two, tmp_path / "ws")
    msg = str(err.value)
    assert str(two) in msg and "only 2 usable images" in msg and "at least 3" in msg
    assert "1 skipped" in msg
    # min_images is honoured.
    res = run_ingest(IngestConfig(min_images=2), two, tmp_path / "ws")
    assert len(res.images) == 2


def test_name_normalisation_and_collisions(tmp_path, small_photos, events):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(small_photos[0], folder / "a.JPG")
    shutil.copy(small_photos[1], folder / "a.jpeg")
    Image.open(small_photos[2]).save(folder / "b.PNG")
    shutil.copy(small_photos[3], folder / ".hidden.jpg")
    (folder / "sub").mkdir()
    shutil.copy(small_photos[4], folder / "sub" / "c.jpg")

    res = run_ingest(IngestConfig(), folder, tmp_path / "ws", events)
    assert res.images == ["a.jpg", "a_2.jpg", "b.png"]
    assert res.sources == {"a.jpg": "a.JPG", "a_2.jpg": "a.jpeg", "b.png": "b.PNG"}
    assert (res.images_dir / "a_2.jpg").read_bytes() == small_photos[1].read_bytes()
    infos = " ".join(e.message for e in events.of("info"))
    assert ".hidden.jpg" in infos and "sub" in infos


# ----------------------------------------------------------------------------- zips

def test_zip_of_images(tmp_path, small_photos, events):
    zpath = tmp_path / "Photos.ZIP"
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(small_photos[0], "scan/IMG_0001.JPG")
        z.write(small_photos[1], "scan/nested/deeper/IMG_0002.jpeg")
        z.write(small_photos[2], "other/IMG_0001.JPG")  # same base name as the first
        z.write(small_photos[3], "../../escape.jpg")  # path traversal attempt
        z.write(small_photos[4], "/abs/rooted.png")
        z.writestr("__MACOSX/scan/._IMG_0001.JPG", b"\x00\x05\x16\x07 resource fork")
        z.writestr("scan/.DS_Store", b"\x00\x00\x00\x01Bud1")
        z.writestr("scan/readme.txt", "hello")
        z.writestr("scan/broken.jpg", small_photos[5].read_bytes()[:2000])
        z.writestr("scan/emptydir/", b"")

    ws = tmp_path / "deep" / "ws"
    res = run_ingest(IngestConfig(), zpath, ws, events)
    assert res.kind == "zip"
    assert res.images == ["IMG_0001.jpg", "IMG_0002.jpg", "escape.jpg", "rooted.jpg",
                          "scan_IMG_0001.jpg"]
    assert res.sources["IMG_0001.jpg"] == "other/IMG_0001.JPG"  # sorted member order
    assert res.sources["scan_IMG_0001.jpg"] == "scan/IMG_0001.JPG"
    assert (res.images_dir / "scan_IMG_0001.jpg").read_bytes() == small_photos[0].read_bytes()
    assert [n for n, _ in res.skipped] == ["scan/broken.jpg"]
    # Nothing was written outside the workspace's input folder.
    assert sorted(p.name for p in ws.iterdir()) == ["ingest.json", "input"]
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "deep" / "escape.jpg").exists()
    assert any("readme.txt" in e.message for e in events.of("info"))
    assert read_manifest(ws)["kind"] == "zip"

    with pytest.raises(InputError) as err:
        run_ingest(IngestConfig(strict=True), zpath, tmp_path / "ws_strict")
    assert err.value.path == zpath and "scan/broken.jpg" in str(err.value)


def test_corrupt_zip(tmp_path, small_photos):
    bad = tmp_path / "photos.zip"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip archive" * 10)
    with pytest.raises(InputError) as err:
        run_ingest(IngestConfig(), bad, tmp_path / "ws")
    assert str(bad) in str(err.value) and "zip" in err.value.problem

    # A real zip cut short loses its central directory: also named.
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        for p in small_photos[:3]:
            z.write(p, p.name)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(InputError) as err:
        run_ingest(IngestConfig(), cut, tmp_path / "ws")
    assert str(cut) in str(err.value)


# ----------------------------------------------------------------------------- video

@pytest.fixture(scope="module")
def chair_run(tmp_path_factory):
    ws = tmp_path_factory.mktemp("chair_ws")
    ev = Events()
    res = run_ingest(IngestConfig(max_num_images=30), CHAIR, ws, ev)
    return res, ws, ev


def test_video_sharpest_per_window(chair_run):
    res, ws, ev = chair_run
    v = res.video
    assert res.kind == "video"
    assert res.images == [f"frame_{i:05d}.jpg" for i in range(1, 31)]
    assert sorted(p.name for p in res.images_dir.iterdir()) == res.images
    assert res.video_frames_decoded == 2606
    assert res.video_fps == pytest.approx(59.94, abs=0.01)
    assert len(v.candidate_index) == 2606

    ts = res.video_timestamps
    assert len(ts) == 30 and ts == sorted(ts) and len(set(ts)) == 30
    windows = v.windows
    assert len(windows) == 30 and windows[0][0] == 0 and windows[-1][1] == 2606
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))
    sharp = np.asarray(v.candidate_sharpness)
    times = np.asarray(v.candidate_time)
    for j, ((lo, hi), c) in enumerate(zip(windows, v.chosen)):
        assert lo <= c < hi
        assert sharp[c] == sharp[lo:hi].max()  # the sharpest frame of its window
        assert times[lo] <= ts[j] <= times[hi - 1]
    # The selection spans the clip: first pick in the first window, last in the last.
    duration = times[-1]
    assert ts[0] <= duration / 30 and ts[-1] >= duration * 29 / 30
    assert res.video_frame_indices == [v.candidate_index[c] for c in v.chosen]

    with Image.open(res.images_dir / "frame_00001.jpg") as im:
        assert im.format == "JPEG" and im.size == (136, 240)

    m = read_manifest(ws)
    assert m["kind"] == "video" and m["images"] == res.images
    mv = m["video"]
    assert mv["frames_decoded"] == 2606 and mv["rotation"] == 0
    assert [f["name"] for f in mv["frames"]] == res.images
    assert [f["time"] for f in mv["frames"]] == pytest.approx(ts)
    assert len(mv["candidates"]["time"]) == 2606 and len(mv["windows"]) == 30
    assert set(m["sharpness"]) == set(res.images)

    decode = [e for e in ev.of("progress") if e.message == "decode"]
    write = [e for e in ev.of("progress") if e.message == "write"]
    assert decode[0].total == 2606 and decode[-1].step == 2606
    assert 50 <= len(decode) <= 60  # every 50 frames, not every frame
    assert [e.step for e in write] == list(range(31)) and write[-1].total == 30


def test_video_time_range(tmp_path):
    res = run_ingest(IngestConfig(max_num_images=20, start_time=10, stop_time=20), CHAIR,
                     tmp_path / "ws")
    v = res.video
    assert len(res.images) == 20
    assert 10 <= v.candidate_time[0] < 10 + 1 / 50
    assert 20 - 1 / 50 < v.candidate_time[-1] <= 20
    assert all(10 <= t <= 20 for t in res.video_timestamps)
    assert res.video_timestamps[0] <= 10.5 and res.video_timestamps[-1] >= 19.5
    assert len(v.candidate_index) == pytest.approx(10 * 59.94, abs=2)
    assert v.candidate_index[0] == pytest.approx(10 * 59.94, abs=1)

    # A stop past the end means the end; a start past the end is an error.
    res = run_ingest(IngestConfig(max_num_images=5, start_time=40, stop_time=1000), CHAIR,
                     tmp_path / "ws2")
    assert res.video.candidate_time[-1] > 43.4 and len(res.images) == 5
    with pytest.raises(InputError) as err:
        run_ingest(IngestConfig(start_time=60), CHAIR, tmp_path / "ws3")
    assert str(CHAIR) in str(err.value) and "past the end" in str(err.value)


def test_video_rotation_applied(tmp_path):
    """A phone-style video (landscape frames, display matrix -90) comes out upright."""
    with Image.open(SCEAUX / "100_7100.JPG") as im:
        src = np.asarray(im.reduce(16).crop((0, 0, 160, 96)))  # [96, 160, 3], landscape
    path = tmp_path / "portrait.MOV"
    with av.open(str(path), "w", format="mov") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        s.set_display_rotation(-90)
        for _ in range(8):
            for pkt in s.encode(av.VideoFrame.from_ndarray(src, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)

    res = run_ingest(IngestConfig(max_num_images=4), path, tmp_path / "ws")
    assert res.video.rotation == -90 and len(res.images) == 4
    with Image.open(res.images_dir / res.images[0]) as out:
        assert out.size == (96, 160)  # portrait
        got = np.asarray(out, dtype=np.float32)
    expected = np.rot90(src, k=-1).astype(np.float32)  # 90 degrees clockwise
    assert np.abs(got - expected).mean() < 12.0
    assert np.abs(got - np.rot90(src, k=1).astype(np.float32)).mean() > 20.0


def test_not_a_video(tmp_path):
    text = tmp_path / "clip.mp4"
    text.write_text("this is a text file, not a video\n" * 20)
    jpeg = tmp_path / "photo.MP4"
    shutil.copy(SCEAUX / "100_7100.JPG", jpeg)
    empty = tmp_path / "empty.mov"
    empty.write_bytes(b"")
    for bad in (text, jpeg, empty):
        with pytest.raises(InputError) as err:
            run_ingest(IngestConfig(), bad, tmp_path / "ws")
        assert str(bad) in str(err.value)
        assert err.value.path == bad
    assert not (tmp_path / "ws" / "input").exists()


def test_unsupported_and_missing_inputs(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    for bad in (txt, tmp_path / "missing"):
        with pytest.raises(InputError) as err:
            run_ingest(IngestConfig(), bad, tmp_path / "ws")
        msg = str(err.value)
        assert str(bad) in msg and ".mp4" in msg and ".zip" in msg and ".jpg" in msg


# ----------------------------------------------------------------------------- blur filter

def test_blur_filter_drops_blurriest(tmp_path, small_photos, events):
    folder = copy_photos(small_photos, tmp_path / "photos", 6)
    for p in small_photos[6:8]:
        with Image.open(p) as im:
            im.filter(ImageFilter.GaussianBlur(4)).save(folder / f"blurred_{p.name}", quality=95)

    res = run_ingest(IngestConfig(blur_filter_percent=25), folder, tmp_path / "ws", events)
    dropped = {n for n, r in res.skipped if r.startswith("blurry")}
    assert dropped == {f"blurred_{p.name}" for p in small_photos[6:8]}
    assert len(res.images) == 6 and not any(n.startswith("blurred") for n in res.images)
    assert all("25-th percentile" in r for _, r in res.skipped)
    assert not any(p.name.startswith("blurred") for p in res.images_dir.iterdir())
    assert len(res.sharpness) == 8
    assert max(res.sharpness[f"blurred_{p.stem}.jpg"] for p in small_photos[6:8]) < min(
        res.sharpness[n] for n in res.images)
    m = read_manifest(tmp_path / "ws")
    assert len(m["sharpness"]) == 8 and len(m["skipped"]) == 2

    # Never below min_images: 50% of 8 would drop 4, min_images=7 allows only 1.
    res = run_ingest(IngestConfig(blur_filter_percent=50, min_images=7), folder,
                     tmp_path / "ws2")
    assert len(res.images) == 7
    assert [n for n, _ in res.skipped][0].startswith("blurred_")


# ----------------------------------------------------------------------------- atomicity

def test_failed_run_keeps_previous_results(tmp_path, small_photos):
    ws = tmp_path / "ws"
    good = copy_photos(small_photos, tmp_path / "good", 4)
    first = run_ingest(IngestConfig(), good, ws)
    before = {p.name: p.read_bytes() for p in first.images_dir.iterdir()}
    manifest_before = (ws / "ingest.json").read_bytes()

    few = copy_photos(small_photos[4:], tmp_path / "few", 2)
    with pytest.raises(InputError):
        run_ingest(IngestConfig(), few, ws)
    with pytest.raises(InputError):
        run_ingest(IngestConfig(), tmp_path / "missing.mp4", ws)
    with pytest.raises(InputError):
        run_ingest(IngestConfig(start_time=100), CHAIR, ws)

    assert {p.name: p.read_bytes() for p in (ws / "input").iterdir()} == before
    assert (ws / "ingest.json").read_bytes() == manifest_before
    assert sorted(p.name for p in ws.iterdir()) == ["ingest.json", "input"]

    # A successful second run replaces the first one completely.
    second = run_ingest(IngestConfig(), copy_photos(small_photos[4:], tmp_path / "new", 3), ws)
    assert sorted(p.name for p in (ws / "input").iterdir()) == second.images
    assert set(second.images).isdisjoint(before)
    assert read_manifest(ws)["images"] == second.images
    assert sorted(p.name for p in ws.iterdir()) == ["ingest.json", "input"]
