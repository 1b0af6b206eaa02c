"""Artifact storage: a local directory or an S3 bucket (any endpoint URL), one interface.

The service, the batch worker and the CLI keep every artifact under '/'-separated relative
keys in one store, in the seeds' layout::

    media/{sceneId}/       uploaded photos / video
    colmap/{sceneId}/      a COLMAP output: sparse/0/*.bin, images/
    outputs/{sceneId}/     the INRIA model directory, scene.splat, scene.spz, metrics.json

:func:`open_store` picks the backend from a URL: a directory path or ``file://...`` gives a
:class:`LocalStore`, ``s3://bucket/prefix`` an :class:`S3Store` (boto3; ``endpoint_url`` or
``AWS_ENDPOINT_URL`` selects MinIO, moto, LocalStack ...).

Guarantees:
    * Writes are complete or absent. A local write goes to a hidden temporary file beside
      the target and is renamed onto it; an S3 write goes straight to the final key through
      ``PutObject`` or a multipart upload, both of which create the object only once the
      whole body has arrived (an aborted multipart upload leaves no object). Downloads are
      written to a temporary file and renamed the same way.
    * What a writer killed mid-write leaves (a local temp file in ``<root>/.splatforge-tmp``,
      an unfinished S3 multipart upload) is never under a servable key, and
      ``sweep_temp()`` removes it: each publish and each server start call it.
    * Transient failures are retried twice over: botocore's ``standard`` retry mode retries
      each HTTP request (throttling, 5xx, connection errors), and every whole-file upload or
      download is wrapped in a bounded retry with exponential backoff for what botocore does
      not retry (a response body cut off mid-stream, an upload that failed after botocore
      gave up). Each retry is logged on the ``splatforge.storage`` logger and reported to
      the store's ``on_retry`` callback.

Prefixes name folders: ``"outputs/a"`` and ``"outputs/a/"`` both mean every key under
``outputs/a/`` (never ``outputs/ab/...``); the empty prefix means the whole store.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

log = logging.getLogger("splatforge.storage")

T = TypeVar("T")

#: Name prefix of the temporary files a local write or a download creates;
#: :meth:`ArtifactStore.list` never reports them.
TMP_PREFIX = ".splatforge-tmp-"
#: The one folder (at a :class:`LocalStore`'s root) where its writes are staged: no key can
#: name it, nothing lists it, and :meth:`LocalStore.sweep_temp` empties it of dead writers'
#: files.
TMP_DIR = ".splatforge-tmp"
#: Seconds after which a temp file of another host (or an unparseable name) counts as dead.
TMP_MAX_AGE_S = 24 * 3600.0

#: Bytes per chunk yielded by :meth:`ArtifactStore.open_range`.
CHUNK_SIZE = 1 << 20

#: Default number of files moved at once by upload_dir / download_prefix.
DEFAULT_WORKERS = 8

#: ``on_retry(operation, key, attempt, error, delay_s)``: called before each retry; attempt
#: is the 1-based number of the attempt that failed.
RetryCallback = Callable[[str, str, int, BaseException, float], None]


class StorageError(RuntimeError):
    """A storage operation failed for good (after its retries); the message names the key."""


class InvalidKey(ValueError):
    """A key or prefix that is not a clean relative '/'-separated path."""


class ObjectNotFound(FileNotFoundError):
    """No object under this key."""


class InvalidRange(ValueError):
    """A byte range that does not overlap the object (HTTP 416)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object.

    Attributes:
        key: its key, relative to the store's root.
        size: bytes.
        mtime: last modification, seconds since the epoch (UTC).
    """

    key: str
    size: int
    mtime: float


# -- keys ---------------------------------------------------------------------------------

def validate_key(key: str) -> str:
    """Return ``key`` when it is a clean relative key, else raise :class:`InvalidKey`.

    A key is a non-empty '/'-separated relative path: no leading '/', no empty, ``.`` or
    ``..`` segments, no backslash, no NUL, no trailing '/'.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"invalid key {key!r}: empty")
    _check_chars(key)
    if key.startswith("/"):
        raise InvalidKey(f"invalid key {key!r}: absolute path (a key is relative)")
    if key.endswith("/"):
        raise InvalidKey(f"invalid key {key!r}: ends with '/' (that is a prefix, not a key)")
    for seg in key.split("/"):
        if seg in ("", ".", ".."):
            raise InvalidKey(f"invalid key {key!r}: empty, '.' or '..' path segment")
    return key


def normalize_prefix(prefix: str) -> str:
    """``prefix`` as a folder: ``""`` (everything) or ``"a/b/"`` (validated like a key)."""
    if not isinstance(prefix, str):
        raise InvalidKey(f"invalid prefix {prefix!r}: not a string")
    if prefix == "":
        return ""
    _check_chars(prefix)
    body = prefix[:-1] if prefix.endswith("/") else prefix
    try:
        validate_key(body)
    except InvalidKey as e:
        raise InvalidKey(str(e).replace("invalid key", "invalid prefix", 1)) from None
    return body + "/"


def _check_chars(s: str) -> None:
    if "\\" in s:
        raise InvalidKey(f"invalid key {s!r}: backslash (keys use '/')")
    if "\x00" in s:
        raise InvalidKey(f"invalid key {s!r}: NUL character")


def join_key(prefix: str, rel: str) -> str:
    """``prefix`` (a folder, see :func:`normalize_prefix`) joined with relative key ``rel``."""
    return validate_key(normalize_prefix(prefix) + rel)


def colmap_prefix(scene_id: str) -> str:
    """``colmap/{scene_id}/``: a COLMAP output (``sparse/0/``, ``images/``)."""
    return normalize_prefix(f"colmap/{_scene_segment(scene_id)}")


def outputs_prefix(scene_id: str) -> str:
    """``outputs/{scene_id}/``: the trained model directory and exports."""
    return normalize_prefix(f"outputs/{_scene_segment(scene_id)}")


def media_prefix(scene_id: str) -> str:
    """``media/{scene_id}/``: uploaded photos or video."""
    return normalize_prefix(f"media/{_scene_segment(scene_id)}")


def _scene_segment(scene_id: str) -> str:
    if not isinstance(scene_id, str) or not scene_id or "/" in scene_id:
        raise InvalidKey(f"invalid scene id {scene_id!r}: must be one non-empty key segment")
    _check_chars(scene_id)
    if scene_id in (".", ".."):
        raise InvalidKey(f"invalid scene id {scene_id!r}")
    return scene_id


# -- retries ------------------------------------------------------------------------------

def _log_retry(op: str, key: str, attempt: int, err: BaseException, delay: float) -> None:
    log.warning("%s %s failed (attempt %d: %s: %s); retrying in %.2f s", op, key, attempt,
                type(err).__name__, err, delay)


def retry_call(fn: Callable[[], T], *, op: str, key: str, attempts: int,
               is_transient: Callable[[BaseException], bool], base_delay: float = 0.2,
               max_delay: float = 5.0, on_retry: RetryCallback | None = None) -> T:
    """Call ``fn`` until it succeeds, at most ``attempts`` times, while it raises transient
    errors; wait ``min(max_delay, base_delay * 2**(k-1))`` times a random factor in [0.5, 1]
    after failure k (exponential backoff with jitter, AWS Architecture Blog, "Exponential
    Backoff and Jitter", 2015). Non-transient errors and the last failure propagate."""
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  (classified below)
            if attempt >= attempts or not is_transient(e):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1)
            _log_retry(op, key, attempt, e, delay)
            if on_retry is not None:
                on_retry(op, key, attempt, e, delay)
            time.sleep(delay)
            attempt += 1


def parallel_map(fn: Callable[[Any], T], items: Iterable[Any], workers: int) -> list[T]:
    """``[fn(x) for x in items]`` on a thread pool; the first error propagates after every
    started call has finished."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as ex:
        futures = [ex.submit(fn, x) for x in items]
        results: list[T] = []
        first: BaseException | None = None
        for f in futures:
            try:
                results.append(f.result())
            except BaseException as e:  # noqa: BLE001
                first = first or e
    if first is not None:
        raise first
    return results


def _local_files(local_dir: Path) -> list[tuple[Path, str]]:
    """Regular files under ``local_dir`` as ``(path, relative '/'-key)``, sorted."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"{local_dir}: not a folder")
    out = []
    for p in sorted(local_dir.rglob("*")):
        if p.is_file() and not p.name.startswith(TMP_PREFIX):
            out.append((p, p.relative_to(local_dir).as_posix()))
    return out


def _check_range(key: str, start: int, end: int | None, size: int) -> int:
    """Validate ``start..end`` (inclusive) against an object of ``size`` bytes; return the
    clipped inclusive end."""
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"bad byte range {start}-{end} for {key}")
    if start >= size:
        raise InvalidRange(f"range start {start} is beyond the end of {key} ({size} bytes)")
    return size - 1 if end is None else min(end, size - 1)


# -- the interface ------------------------------------------------------------------------

class ArtifactStore(ABC):
    """Where artifacts live; see the module docstring for keys, prefixes and guarantees.

    Every method taking a key raises :class:`InvalidKey` for a bad one and
    :class:`ObjectNotFound` when a key it reads is absent.
    """

    workers: int = DEFAULT_WORKERS

    @property
    @abstractmethod
    def url(self) -> str:
        """The store's URL (``file:///abs/path`` or ``s3://bucket/prefix``)."""

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Store the file ``path`` under ``key`` (complete or absent; replaces any object)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (complete or absent)."""

    @abstractmethod
    def get_file(self, key: str, dest: str | Path) -> Path:
        """Copy object ``key`` to the file ``dest`` (written atomically); returns ``dest``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under the folder ``prefix``, sorted by key (S3 "folder" markers,
        keys ending in '/', and other keys that are not valid here are left out)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size of object ``key`` in bytes."""

    @abstractmethod
    def open_range(self, key: str, start: int = 0, end: int | None = None
                   ) -> Iterator[bytes]:
        """Stream bytes ``start..end`` (inclusive, like an HTTP Range; ``end`` None or past
        the end = to the last byte) of object ``key`` in chunks of at most
        :data:`CHUNK_SIZE` bytes.

        The object and the range are checked before this returns: :class:`ObjectNotFound`,
        :class:`InvalidRange` (``start`` at or past the end) and ``ValueError`` (negative
        ``start`` or ``end < start``) are raised here, not while iterating.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove object ``key`` (nothing happens when it is absent)."""

    def local_path(self, key: str) -> Path | None:
        """The object's file on this machine (LocalStore), or None (S3)."""
        return None

    def get_bytes(self, key: str) -> bytes:
        """The whole object ``key``."""
        return b"".join(self.open_range(key, 0, None)) if self.size(key) else b""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under the folder ``prefix``; returns how many."""
        keys = [o.key for o in self.list(prefix)]
        parallel_map(self.delete, keys, self.workers)
        return len(keys)

    def upload_dir(self, local_dir: str | Path, prefix: str) -> list[str]:
        """Store every regular file under ``local_dir`` at ``prefix + relative path``, in
        parallel (each file complete or absent). Returns the keys, sorted.

        Raises:
            FileNotFoundError: ``local_dir`` is not a folder.
            StorageError: a file failed for good (the others that finished stay stored).
        """
        prefix = normalize_prefix(prefix)
        files = _local_files(Path(local_dir))
        pairs = [(p, validate_key(prefix + rel)) for p, rel in files]
        parallel_map(lambda pk: self.put_file(pk[1], pk[0]), pairs, self.workers)
        return sorted(k for _, k in pairs)

    def download_prefix(self, prefix: str, dest_dir: str | Path) -> list[Path]:
        """Copy every object under ``prefix`` to ``dest_dir / <key relative to prefix>``, in
        parallel, each file written atomically. Returns the local paths, sorted.

        Raises:
            ObjectNotFound: nothing is stored under ``prefix``.
            StorageError: a file failed for good after its retries.
        """
        prefix = normalize_prefix(prefix)
        objs = self.list(prefix)
        if not objs:
            raise ObjectNotFound(f"{self.url}: nothing under {prefix or '/'}")
        dest_dir = Path(dest_dir)

        def one(o: ObjectInfo) -> Path:
            return self.get_file(o.key, dest_dir.joinpath(*o.key[len(prefix):].split("/")))

        return sorted(parallel_map(one, objs, self.workers))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


# -- local directory ----------------------------------------------------------------------

class LocalStore(ArtifactStore):
    """A directory on this machine; key ``a/b`` is the file ``root/a/b``.

    Args:
        root: the directory (created when missing).
        workers: files copied at once by upload_dir / download_prefix.
    """

    def __init__(self, root: str | Path, workers: int = DEFAULT_WORKERS):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.workers = workers

    @property
    def url(self) -> str:
        return self.root.as_uri()

    @property
    def temp_dir(self) -> Path:
        """``<root>/.splatforge-tmp``: where writes are staged before their rename."""
        return self.root / TMP_DIR

    def _path(self, key: str) -> Path:
        parts = validate_key(key).split("/")
        if parts[0] == TMP_DIR or any(p.startswith(TMP_PREFIX) for p in parts):
            raise InvalidKey(f"invalid key {key!r}: a reserved temporary name")
        return self.root.joinpath(*parts)

    def _existing(self, key: str) -> Path:
        p = self._path(key)
        if not p.is_file():
            raise ObjectNotFound(f"{self.url}: no object {key}")
        return p

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def _temp_name(self) -> str:
        """``.splatforge-tmp-<pid>-<random>-<host>``: who wrote it, for the sweep."""
        import socket

        return f"{TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}-{socket.gethostname()}"

    def sweep_temp(self, deep: bool = False, older_than_s: float = TMP_MAX_AGE_S) -> int:
        """Remove temp files whose writer is gone: in :attr:`temp_dir`, those of a dead
        process of this host, or older than ``older_than_s`` seconds (another host's); with
        ``deep`` also every ``.splatforge-tmp-*`` file an older version left beside its
        target anywhere under the root (a start-up sweep: it walks the whole store).
        Returns how many were removed; never raises for a file that vanished meanwhile."""
        import socket

        host = socket.gethostname()
        removed = 0
        now = time.time()
        if self.temp_dir.is_dir():
            for p in self.temp_dir.iterdir():
                rest = p.name[len(TMP_PREFIX):] if p.name.startswith(TMP_PREFIX) else ""
                pid, _, tail = rest.partition("-")
                owner = tail.partition("-")[2]
                try:
                    old = now - p.stat().st_mtime > older_than_s
                except OSError:
                    continue
                ours = pid.isdigit() and owner == host
                if (ours and not _pid_alive(int(pid))) or (not ours and old):
                    removed += _unlink(p)
        if deep:
            for p in self.root.rglob(TMP_PREFIX + "*"):
                if p.parent != self.temp_dir and p.is_file():
                    removed += _unlink(p)
        return removed

    def _write_atomic(self, key: str, write: Callable[[Any], None]) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # staged in the store's temp folder (same file system: the rename is atomic), never
        # beside the target, where a kill -9 would leave it under a servable key
        self.temp_dir.mkdir(exist_ok=True)
        tmp = self.temp_dir / self._temp_name()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: str | Path) -> None:
        with open(path, "rb") as src:
            self._write_atomic(key, lambda f: shutil.copyfileobj(src, f, CHUNK_SIZE))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomic(key, lambda f: f.write(data))

    def get_file(self, key: str, dest: str | Path) -> Path:
        from .util import atomic_path

        src = self._existing(key)
        dest = Path(dest)
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        return dest

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        prefix = normalize_prefix(prefix)
        base = self.root.joinpath(*prefix.rstrip("/").split("/")) if prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for p in base.rglob("*"):
            if p.name.startswith(TMP_PREFIX) or not p.is_file():
                continue
            if p.relative_to(self.root).parts[0] == TMP_DIR:
                continue
            st = p.stat()
            out.append(ObjectInfo(p.relative_to(self.root).as_posix(), st.st_size,
                                  st.st_mtime))
        return sorted(out, key=lambda o: o.key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._existing(key).stat().st_size

    def open_range(self, key: str, start: int = 0, end: int | None = None
                   ) -> Iterator[bytes]:
        p = self._existing(key)
        last = _check_range(key, start, end, p.stat().st_size)
        f = open(p, "rb")

        def chunks() -> Iterator[bytes]:
            with f:
                f.seek(start)
                left = last - start + 1
                while left > 0:
                    b = f.read(min(CHUNK_SIZE, left))
                    if not b:
                        break
                    left -= len(b)
                    yield b

        return chunks()

    def delete(self, key: str) -> None:
        p = self._path(key)
        p.unlink(missing_ok=True)
        # prune folders left empty, up to the root
        d = p.parent
        while d != self.root and d.is_dir():
            try:
                d.rmdir()
            except OSError:
                break
            d = d.parent


def _pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _unlink(p: Path) -> int:
    try:
        p.unlink()
        return 1
    except FileNotFoundError:
        return 0
    except OSError as e:
        log.warning("could not remove the temp file %s: %s", p, e)
        return 0


# -- S3 -------------------------------------------------------------------------------------

def _s3_transient(err: BaseException) -> bool:
    """Whether an S3 error is worth another try (network trouble, throttling, 5xx, a body cut
    off mid-stream); 4xx errors other than throttling are not."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError,
                                     IncompleteReadError, ResponseStreamingError)

    if isinstance(err, (ConnectionError, IncompleteReadError, ResponseStreamingError)):
        return True
    if isinstance(err, ClientError):
        r = err.response
        status = int((r.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        code = str((r.get("Error") or {}).get("Code") or "")
        return status >= 500 or status == 429 or code in {
            "Throttling", "ThrottlingException", "SlowDown", "RequestTimeout",
            "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable"}
    if isinstance(err, S3UploadFailedError):
        # boto3 wraps the ClientError of a failed upload in its message only
        msg = str(err)
        return not any(c in msg for c in ("AccessDenied", "NoSuchBucket", "InvalidAccessKeyId",
                                          "SignatureDoesNotMatch", "(403)", "(404)", "(400)"))
    if isinstance(err, BotoCoreError):
        return "timeout" in type(err).__name__.lower()
    return isinstance(err, (TimeoutError, OSError)) and not isinstance(err, FileNotFoundError)


class S3Store(ArtifactStore):
    """Objects in ``s3://bucket/prefix`` through boto3.

    Args:
        bucket: bucket name.
        prefix: key prefix inside the bucket under which this store's keys live ("" = the
            bucket root).
        endpoint_url: S3-compatible endpoint (MinIO, moto, LocalStack); default: boto3's
            (which honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``).
        client: a ready boto3 S3 client (its own retry config then applies).
        max_attempts: botocore ``standard``-mode attempts per HTTP request, the first
            included (default: ``AWS_MAX_ATTEMPTS``, else 5).
        attempts: attempts per whole-file upload/download on top of botocore's.
        workers: files moved at once by upload_dir / download_prefix.
        on_retry: called before each whole-file retry (see :data:`RetryCallback`).
        retry_base_delay: seconds of the first backoff.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 client: Any = None, *, max_attempts: int | None = None, attempts: int = 3,
                 workers: int = DEFAULT_WORKERS, on_retry: RetryCallback | None = None,
                 retry_base_delay: float = 0.2):
        if not bucket or "/" in bucket:
            raise InvalidKey(f"invalid bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.endpoint_url = endpoint_url
        self.workers = workers
        self.attempts = max(1, attempts)
        self.on_retry = on_retry
        self.retry_base_delay = retry_base_delay
        if client is None:
            import boto3
            from botocore.config import Config

            if max_attempts is None:
                max_attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or 5)
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url,
                # total_max_attempts counts the first try (``max_attempts`` would not), as
                # AWS_MAX_ATTEMPTS does
                config=Config(retries={"total_max_attempts": max_attempts, "mode": "standard"},
                              max_pool_connections=max(10, 2 * workers)))
        self.client = client

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _k(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _retry(self, op: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return retry_call(fn, op=op, key=f"{self.url}{key}", attempts=self.attempts,
                              is_transient=_s3_transient, base_delay=self.retry_base_delay,
                              on_retry=self.on_retry)
        except Exception as e:
            if _not_found(e):
                raise ObjectNotFound(f"{self.url}: no object {key}") from None
            if _s3_transient(e):
                raise StorageError(f"{op} {self.url}{key} failed after {self.attempts} "
                                   f"attempts: {e}") from e
            raise

    def put_file(self, key: str, path: str | Path) -> None:
        from boto3.s3.transfer import TransferConfig

        k = self._k(key)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a file")
        # a few threads per file for the parts of a large (multipart) upload
        cfg = TransferConfig(use_threads=True, max_concurrency=4)
        # upload_file: PutObject, or a multipart upload that only becomes an object on
        # CompleteMultipartUpload (s3transfer aborts it on failure): complete or absent.
        self._retry("upload", key, lambda: self.client.upload_file(
            str(path), self.bucket, k, Config=cfg))

    def sweep_temp(self, deep: bool = False, older_than_s: float = TMP_MAX_AGE_S) -> int:
        """Abort the multipart uploads under this store's prefix started more than
        ``older_than_s`` seconds ago: what a writer killed mid-upload leaves (never an object,
        but billed storage). An S3 upload's writer cannot be asked whether it lives, so
        only age counts (a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` does the
        same). ``deep`` changes nothing here. Returns how many were aborted; a store
        that cannot list them (no permission) is left as it is."""
        import datetime as _dt

        cutoff = time.time() - older_than_s
        aborted = 0
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        try:
            while True:
                page = self.client.list_multipart_uploads(**kwargs)
                for up in page.get("Uploads", []):
                    started = up.get("Initiated")
                    if isinstance(started, _dt.datetime) and started.timestamp() > cutoff:
                        continue
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"],
                                                       UploadId=up["UploadId"])
                    aborted += 1
                if not page.get("IsTruncated"):
                    return aborted
                kwargs.update(KeyMarker=page.get("NextKeyMarker"),
                              UploadIdMarker=page.get("NextUploadIdMarker"))
        except Exception as e:  # noqa: BLE001  (a sweep never fails a publish or a start)
            log.warning("could not sweep the multipart uploads of %s: %s", self.url, e)
            return aborted

    def put_bytes(self, key: str, data: bytes) -> None:
        k = self._k(key)
        self._retry("upload", key, lambda: self.client.put_object(
            Bucket=self.bucket, Key=k, Body=bytes(data)))

    def get_file(self, key: str, dest: str | Path) -> Path:
        k = self._k(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def once() -> None:
            r = self.client.get_object(Bucket=self.bucket, Key=k)
            expected = int(r["ContentLength"])
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=dest.parent)
            try:
                n = 0
                with os.fdopen(fd, "wb") as f:
                    for chunk in r["Body"].iter_chunks(CHUNK_SIZE):
                        f.write(chunk)
                        n += len(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                if n != expected:
                    from botocore.exceptions import IncompleteReadError

                    raise IncompleteReadError(actual_bytes=n, expected_bytes=expected)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

        self._retry("download", key, once)
        return dest

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        full = self.prefix + normalize_prefix(prefix)
        out = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full)
        for page in pages:
            for o in page.get("Contents", []):
                key = o["Key"][len(self.prefix):]
                if key.endswith("/"):  # a "folder" marker made by the S3 console: no file
                    continue
                try:
                    validate_key(key)
                except InvalidKey as e:
                    log.warning("%s: skipping an object this store cannot address: %s",
                                self.url, e)
                    continue
                out.append(ObjectInfo(key, int(o["Size"]), o["LastModified"].timestamp()))
        return sorted(out, key=lambda o: o.key)

    def _head(self, key: str) -> dict[str, Any]:
        k = self._k(key)
        try:
            return self.client.head_object(Bucket=self.bucket, Key=k)
        except Exception as e:
            if _not_found(e):
                raise ObjectNotFound(f"{self.url}: no object {key}") from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
            return True
        except ObjectNotFound:
            return False

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def open_range(self, key: str, start: int = 0, end: int | None = None
                   ) -> Iterator[bytes]:
        k = self._k(key)
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"bad byte range {start}-{end} for {key}")
        rng = f"bytes={start}-" + ("" if end is None else str(end))
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=k, Range=rng)
        except Exception as e:
            if _not_found(e):
                raise ObjectNotFound(f"{self.url}: no object {key}") from None
            code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
            if code == "InvalidRange":
                raise InvalidRange(f"range start {start} is beyond the end of {key}") from None
            raise
        body = r["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK_SIZE)
            finally:
                body.close()

        return chunks()

    def delete(self, key: str) -> None:
        k = self._k(key)
        self.client.delete_object(Bucket=self.bucket, Key=k)

    def delete_prefix(self, prefix: str) -> int:
        keys = [self.prefix + o.key for o in self.list(prefix)]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = keys[i:i + 1000]
            r = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            if r.get("Errors"):
                e = r["Errors"][0]
                raise StorageError(f"delete {self.url}: {e.get('Key')}: {e.get('Message')}")
        return len(keys)


def _not_found(err: BaseException) -> bool:
    r = getattr(err, "response", None)
    if not isinstance(r, dict):
        return False
    code = str((r.get("Error") or {}).get("Code") or "")
    status = int((r.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return code in {"NoSuchKey", "404", "NotFound"} or status == 404 and code != "NoSuchBucket"


# -- opening a store by URL -----------------------------------------------------------------

def open_store(url: str | Path, endpoint_url: str | None = None, **kwargs: Any
               ) -> ArtifactStore:
    """The store named by ``url``.

    Args:
        url: a directory path, ``file:///abs/dir``, or ``s3://bucket[/prefix]``.
        endpoint_url: S3 endpoint (default: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``
            through boto3).
        **kwargs: passed to :class:`LocalStore` / :class:`S3Store` (``workers``,
            ``on_retry``, ...).

    Raises:
        ValueError: an unknown URL scheme or a malformed S3 URL.
    """
    s = str(url)
    parsed = urlparse(s)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"{s}: an S3 URL is s3://bucket[/prefix]")
        return S3Store(parsed.netloc, parsed.path.lstrip("/"), endpoint_url=endpoint_url,
                       **{k: v for k, v in kwargs.items()
                          if k in {"client", "max_attempts", "attempts", "workers",
                                   "on_retry", "retry_base_delay"}})
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{s}: file URLs must name a local path (file:///dir)")
        return LocalStore(unquote(parsed.path),
                          **{k: v for k, v in kwargs.items() if k == "workers"})
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" on Windows is a drive, not a scheme
        raise ValueError(f"{s}: unsupported store URL (use a folder, file:// or s3://)")
    return LocalStore(s, **{k: v for k, v in kwargs.items() if k == "workers"})
