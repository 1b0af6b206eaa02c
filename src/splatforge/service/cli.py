"""The ``splatforge serve`` command."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(host: str = "127.0.0.1", port: int = 8000, data_dir: Path | None = None,
          executor: Literal["local", "celery"] | None = None, max_jobs: int | None = None,
          log_level: str = "info") -> None:
    """Run the HTTP job service (FastAPI + uvicorn): upload media, start reconstruction
    jobs, watch progress, download splats. Settings come from SPLATFORGE_* variables (see
    the README); options given here win.

    Args:
        host: address to bind; anything but loopback needs SPLATFORGE_API_KEY.
        port: TCP port.
        data_dir: data directory (database, artifacts, work dirs); SPLATFORGE_DATA_DIR.
        executor: local (worker processes here) or celery; SPLATFORGE_EXECUTOR.
        max_jobs: local executor: jobs at once (default: CUDA GPUs, else 1);
            SPLATFORGE_MAX_JOBS.
        log_level: uvicorn log level.
    """
    import uvicorn

    from .app import create_app
    from .settings import ServiceSettings

    settings = ServiceSettings.from_env(data_dir=data_dir, executor=executor,
                                        max_concurrent_jobs=max_jobs)
    if not is_loopback(host) and not settings.api_key:
        raise ConfigError(f"--host {host}: serving beyond this machine needs an API key; set "
                          "SPLATFORGE_API_KEY (clients send 'Authorization: Bearer <key>')")
    app = create_app(settings)
    shown = f"[{host}]" if ":" in host else host
    print(f"splatforge serve: http://{shown}:{port} (API docs: http://{shown}:{port}/docs)\n"
          f"  data {Path(settings.data_dir).resolve()}, database "
          f"{settings.database.split('@')[-1]}, storage {settings.storage_url}, executor "
          f"{settings.executor}" + (", API key required" if settings.api_key else ""),
          flush=True)
    drain = app.state.drain

    class DrainingServer(uvicorn.Server):
        """uvicorn's server that drains the app (:class:`.app.Drain`) as shutdown starts."""

        async def shutdown(self, sockets: Any = None) -> None:
            drain.set()
            await super().shutdown(sockets=sockets)

    DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                  timeout_graceful_shutdown=5)).run()


def main(argv: list[str] | None = None) -> int:
    """``python -m splatforge.service.cli [args]``: the same as ``splatforge serve``."""
    import tyro

    from ..errors import SplatforgeError

    try:
        tyro.cli(serve, args=argv, config=(tyro.conf.OmitArgPrefixes,))
    except SplatforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
