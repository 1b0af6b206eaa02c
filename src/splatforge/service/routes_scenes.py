"""Scenes, their media and their artifacts.

* ``POST /scenes`` -> ``{"id": ...}``; ``GET /scenes``; ``GET /scenes/{id}``.
* ``POST /scenes/{id}/media`` (multipart): ``files`` (many images, a zip, a video) and/or
  ``source_uri`` (``s3://bucket/prefix`` or a local path under an allowed root).
* ``GET /scenes/{id}/artifacts`` and ``GET /scenes/{id}/artifacts/{name}`` (HTTP Range).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from ..errors import InputError
from .db import Job, Scene, session_scope
from .deps import SessionDep, SettingsDep, StoreDep
from .schemas import (Artifact, ArtifactList, JobSummary, MediaAdded, SceneCreated, SceneDetail,
                      SceneOut, iso_time)
from .store import SCENE_ID_RE, media_prefix, outputs_prefix
from .uploads import (DATASET_MARKERS, ByteBudget, UploadRejected, UploadTooLarge, check_zip,
                      disambiguate, extract_zip, media_type, rewrite_references, stored_names)

router = APIRouter(tags=["scenes"])

#: Content types of artifacts by extension.
CONTENT_TYPES = {".ply": "application/octet-stream", ".splat": "application/octet-stream",
                 ".spz": "application/octet-stream", ".json": "application/json",
                 ".png": "image/png", ".jpg": "image/jpeg", ".csv": "text/csv",
                 ".jsonl": "application/x-ndjson", ".txt": "text/plain"}


class SceneCreate(BaseModel):
    name: str | None = Field(None, max_length=256, description="A label for people.")


def get_scene_or_404(session: Any, scene_id: str) -> Scene:
    """The ``scenes`` row ``scene_id``.

    Raises:
        HTTPException: 404 when there is none.
    """
    scene = session.get(Scene, scene_id)
    if scene is None:
        raise HTTPException(404, f"scene {scene_id!r} not found")
    return scene


@router.post("/scenes", status_code=201, response_model=SceneCreated)
def create_scene(session: SessionDep, body: SceneCreate | None = None) -> SceneCreated:
    """Create an empty scene; returns it (its id also as ``scene_id``)."""
    scene = Scene(name=body.name if body else None)
    session.add(scene)
    session.flush()
    return SceneCreated(scene_id=scene.id, **SceneOut.fields_of(scene))


@router.get("/scenes", response_model=list[SceneOut])
def list_scenes(session: SessionDep, limit: int = 100) -> list[SceneOut]:
    """The newest scenes first."""
    rows = session.execute(select(Scene).order_by(Scene.created_at.desc())
                           .limit(max(1, min(limit, 1000)))).scalars().all()
    return [SceneOut(**SceneOut.fields_of(r)) for r in rows]


@router.get("/scenes/{scene_id}", response_model=SceneDetail)
def get_scene(scene_id: str, session: SessionDep) -> SceneDetail:
    """The scene, its media and its jobs (oldest first)."""
    scene = get_scene_or_404(session, scene_id)
    jobs = session.execute(select(Job).where(Job.scene_id == scene_id)
                           .order_by(Job.created_at)).scalars().all()
    return SceneDetail(jobs=[JobSummary(id=j.id, kind=j.kind, status=j.status,
                                        created_at=iso_time(j.created_at)) for j in jobs],
                       **SceneOut.fields_of(scene))


def _check_source_uri(uri: str, settings: Any) -> str:
    from .store import check_allowed_path

    if uri.startswith("s3://"):
        if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\\\0]*)?", uri):
            raise HTTPException(400, f"source_uri {uri!r}: not an s3://bucket/prefix URL")
        if ".." in uri.split("/"):
            raise HTTPException(400, f"source_uri {uri!r}: '..' is not allowed")
        return uri
    if "://" in uri:
        raise HTTPException(400, f"source_uri {uri!r}: only s3:// URLs or local paths")
    try:
        return str(check_allowed_path(uri, settings))
    except InputError as e:
        raise HTTPException(400, str(e)) from None


@router.post("/scenes/{scene_id}/media", response_model=MediaAdded)
def upload_media(scene_id: str, settings: SettingsDep, store: StoreDep,
                 files: list[UploadFile] | None = File(
                     None, description="Images (.jpg/.jpeg/.png), a .zip (of images or of a "
                                       "COLMAP dataset: sparse/0 + images), or a video."),
                 source_uri: str | None = Form(
                     None, description="s3://bucket/prefix or a local folder under "
                                       "SPLATFORGE_ALLOWED_ROOTS (fetched when a job runs).")
                 ) -> MediaAdded:
    """Add media to a scene. Everything is checked first (types, names, every zip entry); a
    rejected request (400) stores nothing. A zip holding a COLMAP model or a
    transforms.json is extracted (a posed dataset: ingest and SfM are skipped); a zip of
    photos and a video are stored as they are.

    Names follow one rule (:func:`.uploads.stored_names`): sanitised to ``[A-Za-z0-9._-]``,
    and a name another file of the request or of the scene already has is disambiguated
    (``a_b-2.jpg``), never overwritten; a dataset's ``images.txt`` / ``images.bin`` /
    ``transforms.json`` are rewritten to the stored names. The answer's ``stored`` lists
    ``{"name", "stored_as", "bytes"}`` per file (zip members as ``zip:member``). A dataset
    file the scene already holds is a 409 (nothing stored). ``media_files`` /
    ``media_bytes`` grow atomically by what was stored..

    Budgets (413, nothing stored): the files and zip members of one request hold at most
    ``SPLATFORGE_MAX_UNCOMPRESSED_MB`` uncompressed, one zip member at most
    ``SPLATFORGE_MAX_MEMBER_MB``; checked from the zips' declared sizes first and again
    while extracting."""
    with session_scope(settings) as s:
        get_scene_or_404(s, scene_id)
    files = [f for f in (files or []) if f is not None and (f.filename or f.size)]
    if not files and not source_uri:
        raise HTTPException(400, "give files (images, a zip or a video) or a source_uri")
    checked_uri = _check_source_uri(source_uri, settings) if source_uri else None
    # -- check everything -------------------------------------------------------------------
    plans: list[tuple[UploadFile, str, str, Any]] = []
    kinds = set()
    budget = ByteBudget(settings.max_uncompressed_bytes, settings.max_member_bytes)
    try:
        wanted = stored_names([f.filename or "" for f in files])  # the one naming rule
        for f, name in zip(files, wanted):
            kind = media_type(name)
            plan = None
            if kind == "zip":
                f.file.seek(0)
                plan = check_zip(f.file, name, budget)
                if not plan.is_dataset:  # stored as it is: the zip itself lands on disk
                    budget.charge(_file_size(f), name)
            else:
                budget.charge(_file_size(f), name)
            plans.append((f, name, kind, plan))
            kinds.add(kind)
    except UploadTooLarge as e:
        raise HTTPException(413, str(e)) from None
    except UploadRejected as e:
        raise HTTPException(400, str(e)) from None
    if "video" in kinds and len(files) > 1:
        raise HTTPException(400, "a video is uploaded on its own (one file per request)")
    # -- stage, reserve the names, store ----------------------------------------------------
    stored: list[dict[str, Any]] = []
    if plans:
        tmp_root = settings.data_dir / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix="upload-", dir=tmp_root))
        try:
            items = _stage(plans, stage, settings.max_member_bytes)
            stored = _store_media(settings, store, scene_id, items, kinds)
        except UploadTooLarge as e:
            raise HTTPException(413, str(e)) from None
        except (UploadRejected, InputError) as e:
            raise HTTPException(400, str(e)) from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    with session_scope(settings) as s:
        scene = get_scene_or_404(s, scene_id)
        if checked_uri:
            scene.source_uri = checked_uri
            if not plans:
                scene.media_kind = "source_uri"
            scene.updated_at = time.time()
        return MediaAdded(scene_id=scene_id, files=[d["stored_as"] for d in stored],
                          stored=stored, **SceneOut.fields_of(scene))


#: Tries to reserve an upload's names when concurrent uploads keep taking them.
RESERVE_ATTEMPTS = 200


def _stage(plans: list[tuple[UploadFile, str, str, Any]], stage: Path,
           per_member: int | None = None) -> list[tuple[str, str, Path, bool]]:
    """Write the checked uploads into ``stage``: plain files as they are, dataset zips
    extracted with their references rewritten to the stored names
    (:func:`.uploads.rewrite_references`). Returns ``(client name, wanted stored name,
    staged file, fixed)`` per file; ``fixed`` names (a dataset's members) cannot be
    disambiguated against the scene's stored files.

    Raises:
        UploadRejected: a corrupt zip member.
        UploadTooLarge: a zip member inflating past ``per_member`` bytes.
    """
    items: list[tuple[str, str, Path, bool]] = []
    for k, (f, name, kind, plan) in enumerate(plans):
        f.file.seek(0)
        if kind == "zip" and plan.is_dataset:
            dest = stage / f"zip{k}"
            extract_zip(f.file, plan, dest, name, per_member)
            rewrite_references(dest, plan.renames)
            for orig, (_, rel) in zip(plan.originals, plan.members):
                items.append((f"{f.filename}:{orig}", rel, dest / rel, True))
        else:  # images, a video, a zip of photos: stored as they are
            out = stage / f"file{k}"
            with open(out, "wb") as dst:
                shutil.copyfileobj(f.file, dst, 1 << 20)
            items.append((f.filename or name, name, out, False))
    return items


def _store_media(settings: Any, store: Any, scene_id: str,
                 items: list[tuple[str, str, Path, bool]], kinds: set[str]
                 ) -> list[dict[str, Any]]:
    """Reserve a stored name per staged file (a unique row of ``media_objects``; a name
    taken meanwhile by a concurrent upload is disambiguated again), write the files, then
    add them to the scene's counts in one ``UPDATE ... SET n = n + k``.

    Returns:
        ``[{"name": client name, "stored_as": stored name, "bytes": size}]``.

    Raises:
        HTTPException: 409 when a dataset file would replace a file the scene already
            holds; 503 when the names could not be reserved (endless contention).
    """
    from sqlalchemy import update
    from sqlalchemy.exc import IntegrityError, OperationalError

    from ..storage import parallel_map
    from .db import MediaObject

    prefix = media_prefix(scene_id)
    legacy = {o.key[len(prefix):] for o in store.list(prefix)}  # stored before the rows
    sizes = [p.stat().st_size for _, _, p, _ in items]
    names: list[str] = []
    rows: list[int] = []
    for attempt in range(RESERVE_ATTEMPTS):
        try:
            with session_scope(settings) as s:
                get_scene_or_404(s, scene_id)
                taken = set(s.execute(select(MediaObject.name)
                                      .where(MediaObject.scene_id == scene_id)).scalars())
                taken |= legacy
                fixed = [want for _, want, _, is_fixed in items if is_fixed]
                clash = sorted(set(fixed) & taken)
                if clash:
                    raise HTTPException(409, f"the scene already holds {clash[0]!r}"
                                             f"{f' (and {len(clash) - 1} more)' if len(clash) > 1 else ''}"
                                             ": a dataset is uploaded into a new scene")
                taken |= set(fixed)
                names = []
                for _, want, _, is_fixed in items:
                    name = want if is_fixed else disambiguate(want, taken)
                    taken.add(name)
                    names.append(name)
                objs = [MediaObject(scene_id=scene_id, name=n, original=orig[:2000], size=z)
                        for n, (orig, _, _, _), z in zip(names, items, sizes)]
                s.add_all(objs)
                s.flush()
                rows = [o.id for o in objs]
            break
        except (IntegrityError, OperationalError):
            time.sleep(0.005 * (1 + attempt % 10))  # a concurrent upload took a name
    else:
        raise HTTPException(503, "could not reserve the upload's file names (too many "
                                 "concurrent uploads to this scene); try again")
    written: list[str] = []
    try:
        def put(k: int) -> None:
            store.put_file(prefix + names[k], items[k][2])
            written.append(prefix + names[k])

        parallel_map(put, list(range(len(items))), store.workers)
    except BaseException:
        for key in written:
            try:
                store.delete(key)
            except Exception:  # noqa: BLE001
                pass
        with session_scope(settings) as s:
            s.execute(MediaObject.__table__.delete().where(MediaObject.id.in_(rows)))
        raise
    dataset = any(is_fixed for *_, is_fixed in items) or any(
        n.rsplit("/", 1)[-1] in DATASET_MARKERS for n in names)
    with session_scope(settings) as s:
        scene = s.get(Scene, scene_id, with_for_update=True)
        before = scene.media_files or 0
        if dataset or scene.media_kind == "dataset":
            kind = "dataset"
        elif "video" in kinds:
            kind = "video"
        elif kinds == {"zip"} and before == 0 and len(names) == 1:
            kind = "zip"
        else:
            kind = "images"
        s.execute(update(Scene).where(Scene.id == scene_id).values(
            media_files=Scene.media_files + len(names),
            media_bytes=Scene.media_bytes + sum(sizes),
            media_kind=kind, updated_at=time.time()))
    return [{"name": orig, "stored_as": n, "bytes": z}
            for (orig, _, _, _), n, z in zip(items, names, sizes)]


def _file_size(f: UploadFile) -> int:
    """Bytes of an uploaded file (its spooled copy), without reading it."""
    f.file.seek(0, 2)
    n = f.file.tell()
    f.file.seek(0)
    return n


# --------------------------------------------------------------------------------------------
# artifacts
# --------------------------------------------------------------------------------------------

def check_artifact_name(name: str) -> str:
    """``name`` when it is a clean relative artifact name; else 400."""
    from ..paths import check_name

    try:
        check_name(name, "artifact name")
    except InputError as e:
        raise HTTPException(400, str(e)) from None
    if (not name or name.startswith("/") or "\\" in name or "\0" in name
            or any(p in ("", ".", "..") for p in name.split("/"))
            or re.match(r"^[A-Za-z]:", name)):
        raise HTTPException(400, f"invalid artifact name {name!r} (no '..', absolute paths "
                                 "or backslashes)")
    return name


@router.get("/scenes/{scene_id}/artifacts", response_model=ArtifactList)
def list_artifacts(scene_id: str, session: SessionDep, store: StoreDep) -> ArtifactList:
    """Artifacts of the scene's latest finished job: name, size (bytes), mtime, url."""
    if session.get(Scene, scene_id) is None and not (SCENE_ID_RE.match(scene_id)
                                                     and store.list(outputs_prefix(scene_id))):
        raise HTTPException(404, f"scene {scene_id!r} not found")
    job_id = session.execute(select(Job.id).where(Job.scene_id == scene_id,
                                                  Job.status == "succeeded")
                             .order_by(Job.finished_at.desc()).limit(1)).scalar()
    prefix = outputs_prefix(scene_id)
    items = [Artifact(name=o.key[len(prefix):], size=o.size, mtime=o.mtime,
                      url=f"/scenes/{scene_id}/artifacts/{o.key[len(prefix):]}")
             for o in store.list(prefix)]
    return ArtifactList(scene_id=scene_id, job_id=job_id,
                        artifacts=sorted(items, key=lambda a: a.name))


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range as (start, end inclusive);
    None for a header this server ignores (several ranges: the whole file is sent).

    Raises:
        HTTPException: 416 when unsatisfiable.
    """
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
    else:
        n = int(m.group(2))
        start, end = max(0, size - n), size - 1
    end = min(end, size - 1)
    if start >= size or start > end:
        raise HTTPException(416, "range not satisfiable",
                            headers={"Content-Range": f"bytes */{size}"})
    return start, end


class ArtifactFileResponse(FileResponse):
    """Starlette's ``FileResponse`` (HEAD, ``Range: bytes=...``, ``If-Range``, ``ETag`` and
    ``Last-Modified``) that ignores a ``Range`` header of another unit (``items=0-10``) and
    sends the whole file, as RFC 9110 section 14.2 asks, instead of a 400."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        units, eq, _ = http_range.partition("=")
        if not eq or units.strip().lower() != "bytes":
            return []  # an empty list: the whole file, 200
        return super()._parse_range_header(http_range, file_size)


def is_not_modified(response_headers: Any, request_headers: Any) -> bool:
    """True when the request's ``If-None-Match`` (any listed tag, weak or strong, or ``*``)
    or, without it, its ``If-Modified-Since`` matches the response's ``ETag`` /
    ``Last-Modified`` (RFC 9110 section 13.1.2-3; Starlette's ``StaticFiles`` rule)."""
    from email.utils import parsedate_to_datetime

    if_none_match = request_headers.get("if-none-match")
    if if_none_match:
        if if_none_match.strip() == "*":
            return True
        etag = response_headers.get("etag")
        return etag is not None and etag in [
            t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    since, modified = request_headers.get("if-modified-since"), \
        response_headers.get("last-modified")
    if not since or not modified:
        return False
    try:
        return parsedate_to_datetime(since) >= parsedate_to_datetime(modified)
    except (TypeError, ValueError):
        return False  # an unparsable date is ignored


def serve_object(request: Request, store: Any, key: str, filename: str) -> Response:
    """Stream object ``key`` for GET or HEAD: a local store through Starlette's
    ``FileResponse`` (``Range``, ``If-Range``, ``ETag``, ``Last-Modified``, and 304 for a
    matching ``If-None-Match`` / ``If-Modified-Since``), S3 through ranged reads (206 with
    ``Content-Range``). A ``Range`` of an unknown unit is ignored (200).

    Raises:
        HTTPException: 400 for an invalid key, 404 when the object does not exist, 416 for
            an unsatisfiable byte range.
    """
    import os

    from starlette.staticfiles import NotModifiedResponse

    from ..storage import InvalidKey

    try:
        exists = store.exists(key)
    except InvalidKey as e:
        raise HTTPException(400, str(e)) from None
    if not exists:
        raise HTTPException(404, f"{filename}: no such artifact")
    ctype = CONTENT_TYPES.get(Path(filename).suffix.lower(), "application/octet-stream")
    local = store.local_path(key)
    if local is not None:
        try:
            st = os.stat(local)
        except FileNotFoundError:
            raise HTTPException(404, f"{filename}: no such artifact") from None
        resp = ArtifactFileResponse(local, media_type=ctype, filename=filename,
                                    stat_result=st, content_disposition_type="attachment")
        if is_not_modified(resp.headers, request.headers):
            return NotModifiedResponse(resp.headers)
        return resp
    size = store.size(key)
    headers = {"Accept-Ranges": "bytes",
               "Content-Disposition": f'attachment; filename="{filename}"'}
    rng = parse_range(request.headers.get("range", ""), size) if size else None
    if request.method == "HEAD":
        headers["Content-Length"] = str(size)
        return Response(status_code=200, media_type=ctype, headers=headers)
    if rng is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(store.open_range(key, 0, None) if size else iter([b""]),
                                 media_type=ctype, headers=headers)
    start, end = rng
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    return StreamingResponse(store.open_range(key, start, end), status_code=206,
                             media_type=ctype, headers=headers)


@router.api_route("/scenes/{scene_id}/artifacts/{name:path}", methods=["GET", "HEAD"])
def get_artifact(request: Request, scene_id: str, name: str, store: StoreDep) -> Response:
    """Download one artifact (large files streamed; ``Range: bytes=a-b`` gives 206; HEAD
    and conditional GETs (304) as :func:`serve_object` says)."""
    check_artifact_name(name)
    if not SCENE_ID_RE.match(scene_id):
        raise HTTPException(400, f"invalid scene id {scene_id!r}")
    return serve_object(request, store, outputs_prefix(scene_id) + name, Path(name).name)
