"""The FastAPI application: :func:`create_app`.

Routers live in small modules: :mod:`.routes_scenes` (scenes, media, artifacts),
:mod:`.routes_jobs` (jobs, progress events, logs, cancel), :mod:`.routes_compat` (the
baking-server routes an existing frontend calls), :mod:`.routes_renders` (camera-path videos),
:mod:`.routes_web` (the web app at ``/``) and, when present, ``routes_view`` (the viewer).
They answer with the models of :mod:`.schemas` and call the logic they need (the job's life:
:mod:`.lifecycle`); they reach ``settings``, the database session, ``storage`` and
``executor`` (kept on ``app.state``) through the dependencies of :mod:`.deps`.

Two pure-ASGI middlewares run before any route: the bearer API key (when
``SPLATFORGE_API_KEY`` is set, every path but ``/healthz`` and the web app's pages
(:func:`.routes_web.is_web_page`) needs ``Authorization: Bearer <key>``; 401 otherwise; the
viewer proxy's paths carry their own signed token, see :mod:`.viewer_proxy`) and the
request-size limit (``Content-Length`` above the limit, or a
streamed body that grows past it, is answered 413 before the body is read or stored:
``multipart/form-data`` uploads may send ``SPLATFORGE_MAX_UPLOAD_MB``, any other body 1 MiB,
whatever its content type says). The same middleware drains requests at shutdown
(:class:`Drain`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from .db import get_engine, init_db
from .errors import install_error_handlers
from .routes_web import is_web_page, mount_web
from .viewer_proxy import PROXY_PATH
from .settings import ServiceSettings


async def _send_json(send: Any, status: int, body: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


#: Largest JSON request body (a job config is a few kB; uploads are multipart).
MAX_JSON_BYTES = 1 << 20


def body_limit(content_type: str, max_upload_bytes: int) -> tuple[int, str]:
    """The largest body, bytes, a request of ``content_type`` may send, and how a 413 names
    it: ``multipart/form-data`` (uploads, any case) may send ``max_upload_bytes``; every
    other body (``application/json`` in any case, any ``+json`` type, ``text/plain``, no
    content type at all) at most :data:`MAX_JSON_BYTES`, since no route takes more."""
    if content_type.split(";")[0].strip().lower() == "multipart/form-data":
        return max_upload_bytes, "upload body (SPLATFORGE_MAX_UPLOAD_MB)"
    return min(MAX_JSON_BYTES, max_upload_bytes), "request body (not an upload: " \
        "uploads are multipart/form-data)"


class Drain:
    """Set when the server starts its graceful shutdown (``splatforge serve`` sets it on
    SIGTERM / SIGINT, before uvicorn waits for open requests): a request still waiting for
    its body is then answered 503 and sees a disconnect, an open event stream ends, so
    nothing is cancelled mid-request when the graceful timeout runs out."""

    def __init__(self) -> None:
        self.draining = False
        self._future: asyncio.Future[None] | None = None

    def waiter(self) -> asyncio.Future[None]:
        """A future of the running loop, done once draining."""
        if self._future is None or self._future.get_loop() is not asyncio.get_running_loop():
            self._future = asyncio.get_running_loop().create_future()
            if self.draining:
                self._future.set_result(None)
        return self._future

    def set(self) -> None:
        """Start draining (idempotent)."""
        self.draining = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)


class GuardMiddleware:
    """API-key check, request-size limit and shutdown drain (see the module docstring)."""

    def __init__(self, app: Any, api_key: str | None, max_bytes: int,
                 drain: Drain | None = None):
        self.app = app
        self.api_key = api_key
        self.max_bytes = max_bytes
        self.drain = drain or Drain()

    def _authorized(self, headers: dict[str, str]) -> bool:
        """``Authorization: Bearer <key>`` with the right key (constant-time compare)."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), (self.api_key or "").encode())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if scope["type"] == "websocket":
            if (self.api_key and not self._authorized(headers)
                    and not PROXY_PATH.match(scope.get("path", ""))):
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if (self.api_key and path != "/healthz" and not is_web_page(path)
                and not PROXY_PATH.match(path)):
            if not self._authorized(headers):
                await _send_json(send, 401, {"detail": "missing or wrong API key "
                                             "(Authorization: Bearer <key>)"},
                                 [(b"www-authenticate", b"Bearer")])
                return
        length = headers.get("content-length")
        limit, what = body_limit(headers.get("content-type", ""), self.max_bytes)
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_json(send, 413, {"detail": f"{what} of {length} bytes exceeds the "
                                         f"limit of {limit} bytes"},
                             [(b"connection", b"close")])
            return
        seen = 0
        started = False
        rejected = False
        body_done = False
        # at shutdown, a request still waiting for its body is cut short; once the body is
        # in, only an event stream (which never ends by itself) is; a download keeps the
        # graceful timeout to finish
        drainable = path.endswith("/events")

        async def drained() -> dict[str, Any]:
            # the server is stopping while this request waits for its client: answer 503
            # (when nothing was answered yet) and let the app see a disconnect
            nonlocal started, rejected
            if not started:
                started = rejected = True
                await _send_json(send, 503, {"detail": "the server is shutting down; "
                                             "retry the request"},
                                 [(b"connection", b"close"), (b"retry-after", b"5")])
            return {"type": "http.disconnect"}

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen, started, rejected, body_done
            if rejected:
                return {"type": "http.disconnect"}
            if body_done and not drainable:
                return await receive()
            if self.drain.draining:
                return await drained()
            pending = asyncio.ensure_future(receive())
            stop = self.drain.waiter()
            await asyncio.wait((pending, stop), return_when=asyncio.FIRST_COMPLETED)
            if not pending.done():
                pending.cancel()
                return await drained()
            msg = pending.result()
            if msg["type"] == "http.request":
                body_done = not msg.get("more_body", False)
                seen += len(msg.get("body", b""))
                if seen > limit:
                    # answer 413 now and make the app stop reading (it sees a disconnect)
                    rejected = True
                    if not started:
                        started = True
                        await _send_json(send, 413, {
                            "detail": f"{what} exceeds the limit of {limit} bytes"},
                            [(b"connection", b"close")])
                    return {"type": "http.disconnect"}
            return msg

        async def tracking_send(msg: dict[str, Any]) -> None:
            nonlocal started
            if rejected:
                return  # the 413 answer was sent; drop whatever the app says after it
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not rejected:
                raise


def create_app(settings: ServiceSettings | None = None, *, start_executor: bool = True
               ) -> FastAPI:
    """The job service's FastAPI application.

    Args:
        settings: service settings (default :meth:`ServiceSettings.from_env`).
        start_executor: start the executor at startup (recover queued and orphaned jobs);
            False serves the API only (jobs stay queued).

    Startup runs the Alembic migrations (:func:`splatforge.service.db.init_db`), opens the
    artifact store (sweeping temp files dead writers left, :meth:`LocalStore.sweep_temp`)
    and starts the executor (``recover()``); shutdown stops it.
    """
    from .executors import make_executor
    from .routes_renders import router as render_router
    from .routes_compat import router as compat_router
    from .routes_jobs import _streams as streams
    from .routes_jobs import router as jobs_router
    from .routes_scenes import router as scenes_router
    from .store import get_store

    settings = settings or ServiceSettings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        init_db(settings)
        app.state.storage = get_store(settings)
        sweep = getattr(app.state.storage, "sweep_temp", None)
        if sweep is not None:  # temp files of writers killed before this start
            sweep(deep=True)
        app.state.executor = None
        if start_executor:
            app.state.executor = make_executor(settings)
            app.state.executor.recover()
        app.state.started_at = time.time()
        try:
            yield
        finally:
            if app.state.executor is not None:
                app.state.executor.shutdown()

    app = FastAPI(
        title="splatforge job service",
        version="0.1.0",
        description="Upload media, start reconstruction jobs, watch their progress and "
                    "download the trained Gaussian splats.",
        lifespan=lifespan)
    app.state.settings = settings
    app.state.viewer_secret = (settings.api_key.encode() if settings.api_key
                               else secrets.token_bytes(32))
    app.state.storage = get_store(settings)
    app.state.executor = None

    install_error_handlers(app, [settings.data_dir, settings.work_dir,
                                 *settings.allowed_roots])
    app.state.drain = Drain()
    app.add_middleware(GuardMiddleware, api_key=settings.api_key,
                       max_bytes=settings.max_upload_bytes, drain=app.state.drain)

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        """Liveness and database reachability (no API key needed)."""
        try:
            with get_engine(settings).connect() as conn:
                conn.execute(text("SELECT 1"))
            db_ok = True
        except Exception:  # noqa: BLE001
            db_ok = False
        body = {"status": "ok" if db_ok else "degraded", "database": db_ok,
                "executor": settings.executor}
        if not db_ok:
            return JSONResponse(body, status_code=503)  # type: ignore[return-value]
        return body

    streams(app)  # the event-stream caps and poller hub, made once here (not in a thread race)
    app.include_router(scenes_router)
    app.include_router(jobs_router)
    app.include_router(compat_router)
    app.include_router(render_router)  # POST /scenes/{id}/renders
    mount_web(app)  # the web app at /
    try:
        from .routes_view import router as view_router
    except ImportError:
        view_router = None
    if view_router is not None:
        from .viewer_proxy import router as proxy_router

        app.include_router(view_router)
        app.include_router(proxy_router)
    return app
