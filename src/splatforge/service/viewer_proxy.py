"""The scene viewer behind the service's key: a signed link and a proxy.

A viewer (viser) listens on 127.0.0.1 only; browsers reach it through the service:

* ``GET /scenes/{id}/view`` (with the API key) answers 307 to
  ``/scenes/{id}/viewer/?token=T``, where ``T`` = ``<expiry>.<HMAC-SHA256(secret,
  "{id}:{expiry}")>`` (the secret is the API key, else a random per-process key);
* ``GET /scenes/{id}/viewer/...`` checks the token (the link's, or the cookie the first page
  sets, path ``/scenes/{id}/viewer``) and forwards the request to the scene's viewer; a
  ``token`` in the query must itself be valid (401 otherwise, whatever the cookie holds, and
  the cookie is left as it was): only a valid link sets the cookie;
* ``WS /scenes/{id}/viewer`` (the address viser's page connects back to) checks the cookie
  and relays every message both ways.

A request without a valid token for *that* scene is answered 401 (a websocket is closed
with 1008) before anything reaches the viewer. The API-key middleware lets these two paths
through because the token is their key (a browser cannot send an ``Authorization`` header
on a navigation or a websocket).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Request, WebSocket
from fastapi.responses import RedirectResponse, Response

router = APIRouter(tags=["viewer"])

#: Paths the proxy serves (the API-key middleware leaves them to the token check).
PROXY_PATH = re.compile(r"^/scenes/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/viewer(/.*)?$")
#: Seconds a viewer link stays valid.
TOKEN_TTL_S = 12 * 3600
COOKIE = "splatforge_viewer"


def make_token(secret: bytes, scene_id: str, now: float | None = None) -> str:
    """A viewer token for ``scene_id`` valid for :data:`TOKEN_TTL_S`."""
    exp = int((time.time() if now is None else now) + TOKEN_TTL_S)
    mac = hmac.new(secret, f"{scene_id}:{exp}".encode(), hashlib.sha256).hexdigest()
    return f"{exp}.{mac}"


def check_token(secret: bytes, scene_id: str, token: str | None) -> bool:
    """True when ``token`` was made for ``scene_id`` with ``secret`` and has not expired."""
    if not token or "." not in token or len(token) > 200:
        return False
    exp, _, mac = token.partition(".")
    if not exp.isdigit() or int(exp) < time.time():
        return False
    want = hmac.new(secret, f"{scene_id}:{exp}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, want)


def viewer_secret(app: Any) -> bytes:
    """The app's token key (``app.state.viewer_secret``, set by :func:`create_app`)."""
    return app.state.viewer_secret


def _viewer_port(app: Any, scene_id: str) -> int:
    manager = getattr(app.state, "viewer_manager", None)
    mv = manager.get(scene_id) if manager is not None else None
    if mv is None:
        raise HTTPException(404, f"no viewer runs for scene {scene_id!r}; open "
                                 f"/scenes/{scene_id}/view again")
    mv.last_active = time.monotonic()
    return mv.port


@router.get("/scenes/{scene_id}/viewer", include_in_schema=False)
def viewer_root(scene_id: str, request: Request) -> RedirectResponse:
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/scenes/{scene_id}/viewer/{query}", status_code=307)


@router.get("/scenes/{scene_id}/viewer/{path:path}", include_in_schema=False)
def viewer_http(scene_id: str, path: str, request: Request) -> Response:
    """Forward one GET to the scene's viewer when the token (link or cookie) is valid."""
    secret = viewer_secret(request.app)
    link = request.query_params.get("token")
    # a token in the query is checked on its own: a bad one is refused even beside a good
    # cookie (and never replaces it); only a request without one falls back to the cookie
    ok = (check_token(secret, scene_id, link) if link is not None
          else check_token(secret, scene_id, request.cookies.get(COOKIE)))
    if not ok:
        raise HTTPException(401, "missing, wrong or expired viewer link: open "
                                 f"/scenes/{scene_id}/view (with the API key) again")
    port = _viewer_port(request.app, scene_id)
    try:
        up = httpx.get(f"http://127.0.0.1:{port}/{path}", timeout=30)
    except httpx.HTTPError:
        raise HTTPException(502, "the scene's viewer did not answer") from None
    keep = {k: v for k, v in up.headers.items()
            if k.lower() in ("content-type", "cache-control", "etag", "last-modified")}
    resp = Response(up.content, status_code=up.status_code, headers=keep)
    if link:
        resp.set_cookie(COOKIE, link, max_age=TOKEN_TTL_S, path=f"/scenes/{scene_id}/viewer",
                        httponly=True, samesite="strict")
    return resp


@router.websocket("/scenes/{scene_id}/viewer")
async def viewer_ws(websocket: WebSocket, scene_id: str) -> None:
    """Relay the viewer's websocket when the cookie (or a ``token`` query) is valid."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    secret = viewer_secret(websocket.app)
    query = websocket.query_params.get("token")
    token = query if query is not None else websocket.cookies.get(COOKIE)
    if not check_token(secret, scene_id, token):
        await websocket.close(code=1008)
        return
    try:
        port = _viewer_port(websocket.app, scene_id)
    except HTTPException:
        await websocket.close(code=1011)
        return
    wanted = list(websocket.scope.get("subprotocols") or [])
    try:
        upstream = await connect(f"ws://127.0.0.1:{port}", subprotocols=wanted or None,
                                 max_size=None, compression=None, open_timeout=30)
    except (OSError, asyncio.TimeoutError, ConnectionClosed):
        await websocket.close(code=1011)
        return
    await websocket.accept(subprotocol=upstream.subprotocol)

    async def down() -> None:
        async for msg in upstream:
            if isinstance(msg, bytes):
                await websocket.send_bytes(msg)
            else:
                await websocket.send_text(msg)

    async def up() -> None:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes") is not None:
                await upstream.send(msg["bytes"])
            elif msg.get("text") is not None:
                await upstream.send(msg["text"])

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except Exception:  # noqa: BLE001  (either side went away)
        pass
    finally:
        for t in tasks:
            t.cancel()
        await upstream.close()
        try:
            await websocket.close()
        except RuntimeError:
            pass
