"""FastAPI dependencies of the routes: the service settings, a database session, the artifact
store and the executor of the running app.

:func:`.app.create_app` makes them once and keeps them on ``app.state``; these functions are
the only readers, so a route names what it needs in its signature (``settings:
SettingsDep``, ``session: SessionDep``, ...) and a test can override any of them
(``app.dependency_overrides``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from .db import session_scope
from .settings import ServiceSettings


def get_settings(request: Request) -> ServiceSettings:
    """The app's :class:`ServiceSettings`."""
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A database session for one request: committed when the route returns (before the
    response is sent), rolled back when it raises."""
    with session_scope(request.app.state.settings) as session:
        yield session


def get_storage(request: Request) -> Any:
    """The app's artifact store (:func:`.store.get_store` of its settings)."""
    return request.app.state.storage


def get_executor(request: Request) -> Any:
    """The app's executor (:class:`.executors.Executor`: ``submit`` / ``cancel``), or None
    while the app runs without one (tests that only read)."""
    return request.app.state.executor


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StoreDep = Annotated[Any, Depends(get_storage)]
ExecutorDep = Annotated[Any, Depends(get_executor)]
