"""Where :mod:`splatforge.cli` still imports the ``splatforge client`` command from (its
owner moves that import to :mod:`splatforge.client.commands`, where the code lives; then
this file goes). Nothing of the server uses it."""

from ..client.commands import client

__all__ = ["client"]
