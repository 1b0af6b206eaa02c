"""``python -m splatforge.service.worker_main JOB_ID``: one job in this process.

The local executor starts one of these per job, with the service settings in the environment
(:meth:`ServiceSettings.from_env`). SIGTERM (server shutdown) stops the job at the next
progress callback and queues it again; the exit status is 0 whenever the job's end was
recorded (whatever the job's status), non-zero only when the process itself failed.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    import numpy  # noqa: F401  (import-order guard: numpy before pycolmap, see NOTES.md)

    from .runner import request_stop, run_job
    from .settings import ServiceSettings

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m splatforge.service.worker_main JOB_ID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: request_stop("shutdown"))
    status = run_job(args[0], ServiceSettings.from_env())
    print(f"job {args[0]}: {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
