"""Alembic migrations of the job store (run by :func:`splatforge.service.db.init_db`)."""
