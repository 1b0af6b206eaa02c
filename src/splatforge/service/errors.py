"""The one error mapping of every route: :func:`install_error_handlers`.

* a request that fails validation (FastAPI's ``RequestValidationError``, our
  :class:`~splatforge.errors.ConfigError`) -> 422 ``{"detail": [{"loc", "msg", "type"}]}``
  naming the field, without echoing the input back (a 10 MB body is not returned whole, and a
  ``NaN`` in it cannot break the answer's encoding);
* bad input (:class:`~splatforge.errors.InputError`, an invalid store key) -> 400 with the
  message;
* an ``OSError`` of a user-supplied name (too long, a symlink loop) -> 400;
* anything else -> 500 ``internal error`` with no traceback and no server path (the log has
  them).

Messages pass through :func:`splatforge.paths.redact_paths`, so no server path reaches a
client.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..errors import ConfigError, InputError
from ..paths import redact_paths

log = logging.getLogger("splatforge.service")

#: Longest message text returned for one validation error.
MAX_MSG = 500


def _clean(value: Any) -> Any:
    """``value`` made JSON-safe (non-finite floats become strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def install_error_handlers(app: FastAPI, roots: list[Any]) -> None:
    """Register the handlers described in the module docstring on ``app``; ``roots`` are
    the server folders whose paths messages must not show."""

    def red(text: str) -> str:
        return redact_paths(str(text), roots)[:MAX_MSG * 4]

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = []
        for e in exc.errors()[:20]:
            loc = [str(x) for x in _clean(list(e.get("loc", ())))]
            msg = red(str(e.get("msg", "invalid value")))[:MAX_MSG]
            detail.append({"loc": loc, "msg": msg, "type": str(e.get("type", "value_error"))})
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": ["body"], "msg": red(str(exc)),
                                         "type": "config_error"}]}, status_code=422)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": red(str(exc))}, status_code=400)

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError) -> JSONResponse:
        from ..storage import InvalidKey

        if isinstance(exc, InvalidKey):
            return JSONResponse({"detail": red(str(exc))}, status_code=400)
        return await internal_error(request, exc)

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError) -> JSONResponse:
        import errno

        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL):
            return JSONResponse({"detail": f"invalid name: {exc.strerror or 'bad path'}"},
                                status_code=400)
        return await internal_error(request, exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path,
                      exc_info=exc)
        return JSONResponse({"detail": "internal error (see the server log)"},
                            status_code=500)
