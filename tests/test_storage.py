"""Artifact stores (splatforge.storage): a local folder and S3 on a moto server over real
HTTP. Failures are injected on the wire path: a botocore ``before-send`` hook raises a
connection error instead of sending the request, exactly where a dropped connection would."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from splatforge.storage import (CHUNK_SIZE, TMP_PREFIX, InvalidKey, InvalidRange, LocalStore,
                                ObjectNotFound, S3Store, StorageError, colmap_prefix,
                                media_prefix, open_store, outputs_prefix)

BUCKET = "splatforge-test"


@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto server on a free port (real HTTP), with dummy credentials in the environment."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _s3(endpoint: str, prefix: str, **kw) -> S3Store:
    kw.setdefault("retry_base_delay", 0.01)
    return S3Store(BUCKET, prefix, endpoint_url=endpoint, **kw)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, moto_endpoint):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    # a fresh prefix per test keeps the tests independent on one bucket
    return _s3(moto_endpoint, f"t/{uuid.uuid4().hex}")


def _fail(times: int | None, calls: list, err=None):
    """A before-send hook that raises a connection error on the first ``times`` calls
    (forever when None) and lets the rest through; every call is recorded."""
    from botocore.exceptions import EndpointConnectionError

    def hook(request, **kwargs):
        calls.append(request.url)
        if times is None or len(calls) <= times:
            raise err or EndpointConnectionError(endpoint_url=request.url)
        return None

    return hook


# -- keys and URLs --------------------------------------------------------------------------

BAD_KEYS = ["", "/abs/key", "a/../b", "..", "a/./b", "a//b", "a\\b", "a\x00b", "dir/",
            "../escape"]


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_invalid_keys_are_rejected_everywhere(store, bad, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    for call in (lambda: store.put_bytes(bad, b"x"), lambda: store.put_file(bad, src),
                 lambda: store.get_file(bad, tmp_path / "out"), lambda: store.exists(bad),
                 lambda: store.size(bad), lambda: store.open_range(bad, 0, None),
                 lambda: store.delete(bad)):
        with pytest.raises(InvalidKey):
            call()
    assert store.list("") == []  # nothing was written anywhere
    if isinstance(store, LocalStore):
        assert not any(store.root.parent.rglob("escape"))


@pytest.mark.parametrize("bad", ["/abs", "a/../b", "a\\b", "a\x00", "a//b"])
def test_invalid_prefixes_are_rejected(store, bad, tmp_path):
    with pytest.raises(InvalidKey):
        store.list(bad)
    with pytest.raises(InvalidKey):
        store.delete_prefix(bad)
    with pytest.raises(InvalidKey):
        store.download_prefix(bad, tmp_path)
    with pytest.raises(InvalidKey):
        store.upload_dir(tmp_path, bad)


def test_layout_helpers():
    assert colmap_prefix("scene-1") == "colmap/scene-1/"
    assert outputs_prefix("scene-1") == "outputs/scene-1/"
    assert media_prefix("abc") == "media/abc/"
    for bad in ("", "a/b", "..", "a\\b"):
        with pytest.raises(InvalidKey):
            outputs_prefix(bad)


def test_open_store_urls(tmp_path, moto_endpoint):
    a = open_store(str(tmp_path / "a"))
    assert isinstance(a, LocalStore) and a.root == (tmp_path / "a").resolve()
    b = open_store((tmp_path / "b").as_uri())
    assert isinstance(b, LocalStore) and b.url == (tmp_path / "b").resolve().as_uri()
    c = open_store(f"s3://{BUCKET}/some/prefix", endpoint_url=moto_endpoint)
    assert isinstance(c, S3Store) and c.url == f"s3://{BUCKET}/some/prefix/"
    assert c.local_path("x") is None and a.local_path("x/y") == a.root / "x" / "y"
    for bad in ("s3:///nobucket", "ftp://host/x"):
        with pytest.raises(ValueError):
            open_store(bad)


# -- the interface on both stores -------------------------------------------------------------

def test_put_list_get_delete(store, tmp_path):
    src = tmp_path / "model.ply"
    src.write_bytes(b"ply\n" + bytes(range(256)) * 10)
    store.put_file("outputs/s1/point_cloud/iteration_7/point_cloud.ply", src)
    store.put_bytes("outputs/s1/metrics.json", b'{"psnr": 20}')
    store.put_bytes("outputs/s10/metrics.json", b"{}")  # a sibling whose name extends s1
    assert store.exists("outputs/s1/metrics.json")
    assert not store.exists("outputs/s1/missing.json")
    assert store.size("outputs/s1/point_cloud/iteration_7/point_cloud.ply") == src.stat().st_size
    infos = store.list("outputs/s1")
    assert [o.key for o in infos] == ["outputs/s1/metrics.json",
                                      "outputs/s1/point_cloud/iteration_7/point_cloud.ply"]
    assert infos[0].size == 12 and infos[0].mtime > 1.6e9
    assert store.list("outputs/s1/") == infos
    assert len(store.list("")) == 3
    out = store.get_file("outputs/s1/point_cloud/iteration_7/point_cloud.ply",
                         tmp_path / "dl" / "p.ply")
    assert out.read_bytes() == src.read_bytes()
    assert store.get_bytes("outputs/s1/metrics.json") == b'{"psnr": 20}'
    store.put_bytes("outputs/s1/metrics.json", b"{}")  # replace
    assert store.get_bytes("outputs/s1/metrics.json") == b"{}"
    with pytest.raises(ObjectNotFound):
        store.get_file("outputs/s1/nope", tmp_path / "nope")
    with pytest.raises(ObjectNotFound):
        store.size("outputs/s1/nope")
    assert not (tmp_path / "nope").exists()
    store.delete("outputs/s1/metrics.json")
    store.delete("outputs/s1/metrics.json")  # absent: no error
    assert not store.exists("outputs/s1/metrics.json")
    assert store.delete_prefix("outputs/s1") == 1
    assert [o.key for o in store.list("outputs")] == ["outputs/s10/metrics.json"]


def test_open_range(store):
    data = os.urandom(2 * CHUNK_SIZE + 12345)
    store.put_bytes("media/s/video.mp4", data)
    cases = [(0, 0), (10, 99), (CHUNK_SIZE - 5, CHUNK_SIZE + 5), (0, None),
             (len(data) - 7, None), (100, len(data) + 1000), (len(data) - 1, len(data) - 1)]
    for start, end in cases:
        chunks = list(store.open_range("media/s/video.mp4", start, end))
        want = data[start:(None if end is None else end + 1)]
        assert b"".join(chunks) == want, (start, end)
        assert all(len(c) <= CHUNK_SIZE for c in chunks)
    with pytest.raises(InvalidRange):
        store.open_range("media/s/video.mp4", len(data), None)
    with pytest.raises(ValueError):
        store.open_range("media/s/video.mp4", -1, 5)
    with pytest.raises(ValueError):
        store.open_range("media/s/video.mp4", 10, 5)
    with pytest.raises(ObjectNotFound):  # raised on the call, before any iteration
        store.open_range("media/s/missing.mp4", 0, 10)


def test_s3_range_read_is_a_ranged_get(moto_endpoint):
    st = _s3(moto_endpoint, "rangecheck")
    st.put_bytes("big.bin", bytes(range(256)) * 4096)  # 1 MiB
    seen: list[str] = []
    st.client.meta.events.register(
        "before-send.s3.GetObject",
        lambda request, **kw: seen.append(request.headers.get("Range", b"")) and None)
    got = b"".join(st.open_range("big.bin", 1000, 1009))
    assert got == bytes((1000 + i) % 256 for i in range(10))
    assert [s.decode() if isinstance(s, bytes) else s for s in seen] == ["bytes=1000-1009"]


def test_upload_dir_and_parallel_download(store, tmp_path):
    src = tmp_path / "colmap"
    names = [f"images/{i:03d}.jpg" for i in range(30)] + [
        "sparse/0/cameras.bin", "sparse/0/images.bin", "sparse/0/points3D.bin"]
    for i, n in enumerate(names):
        p = src / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(1000 + i))
    keys = store.upload_dir(src, colmap_prefix("dog"))
    assert keys == sorted("colmap/dog/" + n for n in names)
    threads: set[str] = set()
    if isinstance(store, S3Store):
        store.client.meta.events.register(
            "before-send.s3.GetObject",
            lambda request, **kw: threads.add(threading.current_thread().name) and None)
    dest = tmp_path / "dl"
    paths = store.download_prefix("colmap/dog", dest)
    assert paths == sorted(dest / n for n in names)
    for n in names:
        assert (dest / n).read_bytes() == (src / n).read_bytes()
    assert not list(dest.rglob(TMP_PREFIX + "*"))
    if isinstance(store, S3Store):
        assert len(threads) > 1, threads  # the downloads ran on several threads
    with pytest.raises(ObjectNotFound):
        store.download_prefix("colmap/other", tmp_path / "none")
    if isinstance(store, S3Store):
        # folder markers the S3 console creates ("images/", 0 bytes) are not files
        store.client.put_object(Bucket=BUCKET, Key=store.prefix + "colmap/dog/images/",
                                Body=b"")
        assert [o.key for o in store.list("colmap/dog")] == keys
        assert store.download_prefix("colmap/dog", tmp_path / "dl2") == sorted(
            tmp_path / "dl2" / n for n in names)


# -- atomicity and retries ---------------------------------------------------------------------

def test_local_write_failing_midway_leaves_old_object(tmp_path):
    st = LocalStore(tmp_path / "s")
    st.put_bytes("a/obj", b"old")

    class Boom:  # a body whose write fails part-way (TypeError from file.write)
        pass

    with pytest.raises(TypeError):
        st.put_bytes("a/obj", Boom())  # type: ignore[arg-type]
    assert st.get_bytes("a/obj") == b"old"
    assert sorted(p.name for p in (tmp_path / "s" / "a").iterdir()) == ["obj"]
    with pytest.raises(FileNotFoundError):
        st.put_file("a/obj", tmp_path / "missing-source")
    assert st.get_bytes("a/obj") == b"old"


def test_local_readers_never_see_partial_writes(tmp_path):
    st = LocalStore(tmp_path / "s")
    blobs = [bytes([i]) * (3 * CHUNK_SIZE) for i in range(2)]
    st.put_bytes("k", blobs[0])
    stop = threading.Event()
    bad: list[int] = []

    def reader():
        while not stop.is_set():
            b = st.get_bytes("k")
            if b not in blobs:
                bad.append(len(b))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(20):
        st.put_bytes("k", blobs[i % 2])
    stop.set()
    t.join()
    assert bad == []


def test_s3_upload_retried_then_succeeds(moto_endpoint, tmp_path):
    retries: list[tuple] = []
    # botocore itself does not retry here (max_attempts=1): the store's own retry must
    st = _s3(moto_endpoint, "retry-ok", max_attempts=1, attempts=3,
             on_retry=lambda *a: retries.append(a))
    calls: list[str] = []
    st.client.meta.events.register("before-send.s3.PutObject", _fail(2, calls))
    src = tmp_path / "f.bin"
    src.write_bytes(b"payload" * 1000)
    st.put_file("outputs/s/f.bin", src)
    assert len(calls) == 3 and [r[2] for r in retries] == [1, 2]
    assert retries[0][0] == "upload"
    assert st.get_bytes("outputs/s/f.bin") == src.read_bytes()


def test_s3_upload_failing_for_good_leaves_nothing(moto_endpoint, tmp_path):
    st = _s3(moto_endpoint, "retry-bad", max_attempts=2, attempts=2)
    st.put_bytes("outputs/s/f.bin", b"previous")  # put_bytes is also PutObject: before hook
    calls: list[str] = []
    st.client.meta.events.register("before-send.s3.PutObject", _fail(None, calls))
    src = tmp_path / "f.bin"
    src.write_bytes(b"new" * 100)
    with pytest.raises(StorageError, match="after 2 attempts"):
        st.put_file("outputs/s/g.bin", src)
    assert len(calls) == 4  # 2 botocore attempts x 2 store attempts
    assert not st.exists("outputs/s/g.bin")
    assert st.get_bytes("outputs/s/f.bin") == b"previous"


def test_s3_multipart_upload_failing_at_complete_leaves_no_object(moto_endpoint, tmp_path):
    st = _s3(moto_endpoint, "multipart", max_attempts=1, attempts=2)
    calls: list[str] = []
    st.client.meta.events.register("before-send.s3.CompleteMultipartUpload",
                                   _fail(None, calls))
    parts: list[str] = []
    st.client.meta.events.register("before-send.s3.UploadPart",
                                   lambda request, **kw: parts.append(request.url) and None)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 * 1024 * 1024))  # > 8 MiB: two parts
    with pytest.raises(StorageError):
        st.put_file("outputs/s/big.bin", src)
    assert len(calls) == 2 and len(parts) >= 4  # every part was sent, twice
    assert not st.exists("outputs/s/big.bin")
    # s3transfer aborted the multipart uploads: nothing pending that could complete later
    pending = st.client.list_multipart_uploads(Bucket=BUCKET, Prefix="multipart/")
    assert pending.get("Uploads", []) == []


def test_s3_download_failure_keeps_existing_file(moto_endpoint, tmp_path):
    st = _s3(moto_endpoint, "dl-bad", max_attempts=1, attempts=2)
    st.put_bytes("colmap/s/sparse/0/cameras.bin", b"new content")
    dest = tmp_path / "cameras.bin"
    dest.write_bytes(b"old")
    calls: list[str] = []
    st.client.meta.events.register("before-send.s3.GetObject", _fail(None, calls))
    with pytest.raises(StorageError):
        st.get_file("colmap/s/sparse/0/cameras.bin", dest)
    assert dest.read_bytes() == b"old" and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cameras.bin"]
    with pytest.raises(StorageError):
        st.download_prefix("colmap/s", tmp_path / "d2")
    assert not list((tmp_path / "d2").rglob("*.bin"))
