"""Clients of the splatforge job service (no server code): :class:`ServiceClient` (the HTTP
API from Python), the ``splatforge client`` / ``splatforge-client`` commands
(:mod:`.commands`) and the ``splatforge-loadtest`` load generator (:mod:`.loadtest`)."""

from .api import ClientError, ServiceClient, wait_for_job

__all__ = ["ClientError", "ServiceClient", "wait_for_job"]
