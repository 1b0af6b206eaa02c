"""Completion notifications: one signed HTTP POST of a job's final status.

When a job ends (succeeded, failed, cancelled, worker lost) its front door calls
:func:`notify_job_end` with the notification URL (``--notify-url``,
``SPLATFORGE_NOTIFY_URL`` or the job's ``notify_url`` field). The body is the JSON of
:func:`job_notice`::

    {"id": ..., "status": "succeeded" | "failed" | "cancelled", "metrics": {...},
     "artifacts": [names], "error": null | "message", "finished_at": ISO 8601 UTC}

signed with HMAC-SHA256 over the exact body bytes, keyed by ``SPLATFORGE_NOTIFY_SECRET``, in
the header ``X-Splatforge-Signature: sha256=<hex>`` (the scheme GitHub webhooks use; verify
with :func:`verify_signature`). The POST runs in a background thread and is retried with
exponential backoff (``attempts`` tries, ``backoff_s`` doubling) on a connection error, a
timeout or an HTTP 5xx / 429; it never blocks or fails the job: every failure is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger("splatforge.notify")

#: The signature header.
SIGNATURE_HEADER = "X-Splatforge-Signature"
#: Tries of one notification, and the first pause between two (doubling).
DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF_S = 0.5
#: Seconds one POST may take.
DEFAULT_TIMEOUT_S = 10.0

_threads: list[threading.Thread] = []
_lock = threading.Lock()


def sign(body: bytes, secret: str | None) -> str | None:
    """``sha256=<hex HMAC-SHA256 of body keyed by secret>``, or None without a secret."""
    if not secret:
        return None
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: str) -> bool:
    """True when ``header`` is the signature of ``body`` under ``secret`` (constant time)."""
    expected = sign(body, secret)
    return bool(header) and expected is not None and hmac.compare_digest(header, expected)


def job_notice(job_id: str, status: str, *, metrics: dict[str, Any] | None = None,
               artifacts: list[str] | None = None, error: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """The notification body (see the module docstring); ``extra`` adds fields
    (``scene_id``)."""
    return {"id": job_id, "status": status, "metrics": metrics or {},
            "artifacts": sorted(artifacts or []), "error": error,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")
            .replace("+00:00", "Z"), **extra}


def _finite(o: Any) -> Any:
    """``o`` with non-finite floats as None (JSON has no NaN), other objects as numbers or
    text."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if o is None or isinstance(o, (str, bool, int)):
        return o
    try:
        return _finite(float(o))
    except (TypeError, ValueError):
        return str(o)


def _body(notice: dict[str, Any]) -> bytes:
    return json.dumps(_finite(notice), sort_keys=True, allow_nan=False).encode()


def post_notice(url: str, notice: dict[str, Any], secret: str | None = None, *,
                attempts: int = DEFAULT_ATTEMPTS, backoff_s: float = DEFAULT_BACKOFF_S,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """POST ``notice`` to ``url`` now, in this thread, with retries; True when delivered
    (a 2xx answer). Never raises."""
    body = _body(notice)
    headers = {"Content-Type": "application/json", "User-Agent": "splatforge-notify"}
    sig = sign(body, secret)
    if sig:
        headers[SIGNATURE_HEADER] = sig
    delay = backoff_s
    for k in range(1, max(1, attempts) + 1):
        try:
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
                if 200 <= resp.status < 300:
                    return True
                retry = False
                why = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            retry = e.code >= 500 or e.code == 429
            why = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            retry = not isinstance(e, ValueError)  # ValueError: a malformed URL
            why = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        if not retry or k == attempts:
            log.warning("notification of job %s to %s failed (%s) after %d attempt(s)",
                        notice.get("id"), _safe_url(url), why, k)
            return False
        time.sleep(delay)
        delay *= 2
    return False


def _safe_url(url: str) -> str:
    """``url`` without credentials or query (logs must not leak tokens)."""
    from urllib.parse import urlsplit

    try:
        p = urlsplit(url)
        return f"{p.scheme}://{p.hostname or ''}{':' + str(p.port) if p.port else ''}{p.path}"
    except ValueError:
        return "<invalid url>"


def notify_job_end(url: str | None, notice: dict[str, Any], secret: str | None = None,
                   **kwargs: Any) -> threading.Thread | None:
    """Send ``notice`` to ``url`` in a background thread (see the module docstring); None
    when ``url`` is empty. The thread is not a daemon, so a worker process that exits right
    after the job still delivers (bounded by ``attempts`` x ``timeout_s`` plus backoff)."""
    if not url:
        return None
    t = threading.Thread(target=post_notice, args=(url, notice, secret), kwargs=kwargs,
                         name=f"notify-{notice.get('id')}", daemon=False)
    with _lock:
        _threads[:] = [x for x in _threads if x.is_alive()]
        _threads.append(t)
    t.start()
    return t


def wait_for_notifications(timeout_s: float | None = None) -> None:
    """Wait for pending notifications (tests; a worker about to exit)."""
    end = None if timeout_s is None else time.monotonic() + timeout_s
    with _lock:
        pending = list(_threads)
    for t in pending:
        t.join(None if end is None else max(0.0, end - time.monotonic()))
