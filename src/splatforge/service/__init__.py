"""``splatforge serve``: the HTTP job service.

Modules: :mod:`.settings` (environment), :mod:`.db` (SQLAlchemy models, Alembic migrations),
:mod:`.runner` (one job in the current process), :mod:`.executors` (where jobs run),
:mod:`.app` (the FastAPI application), :mod:`.cli` (the ``serve`` command).
"""
