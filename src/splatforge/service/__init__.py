"""``splatforge serve``: the HTTP job service.

Modules: :mod:`.settings` (environment), :mod:`.db` (SQLAlchemy models, Alembic migrations),
:mod:`.lifecycle` (a job's states: the one place they change, the one way to stop a job),
:mod:`.runner` (one job in the current process), :mod:`.executors` (where jobs run),
:mod:`.app` (the FastAPI application; routes in ``routes_*``, their dependencies in
:mod:`.deps`, their response models in :mod:`.schemas`), :mod:`.cli` (the ``serve`` command).
The client is :mod:`splatforge.client`.
"""
