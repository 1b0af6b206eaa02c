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


#: Seconds a host name may take to resolve when a URL is checked (then it is checked again
#: when the notification is sent).
RESOLVE_TIMEOUT_S = 3.0


class NotifyURLRefused(ValueError):
    """A notification URL whose host is not allowed (the message says why)."""


def _link_local(ip: str) -> bool:
    import ipaddress

    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_link_local or (mapped is not None and mapped.is_link_local))


def _resolve(host: str, timeout_s: float) -> list[str] | None:
    """The addresses ``host`` resolves to; None when it does not resolve in time."""
    import socket

    out: list[list[str]] = []

    def run() -> None:
        try:
            out.append([ai[4][0] for ai in socket.getaddrinfo(host, None)])
        except (OSError, UnicodeError):
            out.append([])

    t = threading.Thread(target=run, daemon=True, name="notify-resolve")
    t.start()
    t.join(timeout_s)
    return out[0] if out else None


def host_allowed(host: str, allowed: "tuple[str, ...] | list[str]") -> bool:
    """True when ``host`` matches an entry of ``allowed``: a host name (case-insensitive),
    ``.example.com`` (that domain and every name under it), an IP address or a network
    (``10.0.0.0/8``)."""
    import ipaddress

    host = host.lower().strip("[]")
    for entry in allowed:
        e = entry.strip().lower()
        if not e:
            continue
        if e.startswith("."):
            if host == e[1:] or host.endswith(e):
                return True
            continue
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(e.strip("[]"), strict=False):
                return True
            continue
        except ValueError:
            pass
        if host == e:
            return True
    return False


def check_notify_url(url: str, allowed_hosts: "tuple[str, ...] | list[str]" = (), *,
                     resolve_timeout_s: float = RESOLVE_TIMEOUT_S) -> None:
    """Refuse a notification URL a key holder must not point the service at.

    * With ``allowed_hosts`` (``SPLATFORGE_NOTIFY_HOSTS``), the URL's host must match one
      entry (:func:`host_allowed`).
    * A link-local host (169.254.0.0/16, fe80::/10: cloud metadata services), as a literal
      or as a name that resolves to one, is refused unless ``allowed_hosts`` names it.

    A name that does not resolve within ``resolve_timeout_s`` passes here; it is checked
    again when the notification is sent (:func:`post_notice`).

    Raises:
        NotifyURLRefused: naming the host and the rule.
    """
    from urllib.parse import urlsplit

    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        raise NotifyURLRefused("notify_url is not a valid URL") from None
    if not host:
        raise NotifyURLRefused("notify_url has no host")
    listed = bool(allowed_hosts) and host_allowed(host, allowed_hosts)
    if allowed_hosts and not listed:
        raise NotifyURLRefused(f"notify_url host {host!r} is not in SPLATFORGE_NOTIFY_HOSTS "
                               f"({', '.join(allowed_hosts)})")
    if listed:
        return
    addrs = [host] if _is_ip(host) else (_resolve(host, resolve_timeout_s) or [])
    bad = [a for a in addrs if _link_local(a)]
    if bad:
        shown = host if bad[0] == host else f"{host} ({bad[0]})"
        raise NotifyURLRefused(f"notify_url host {shown} is a link-local address (cloud "
                               "metadata services live there); list it in "
                               "SPLATFORGE_NOTIFY_HOSTS to allow it")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        return True
    except ValueError:
        return False


def post_notice(url: str, notice: dict[str, Any], secret: str | None = None, *,
                attempts: int = DEFAULT_ATTEMPTS, backoff_s: float = DEFAULT_BACKOFF_S,
                timeout_s: float = DEFAULT_TIMEOUT_S,
                allowed_hosts: "tuple[str, ...] | list[str]" = ()) -> bool:
    """POST ``notice`` to ``url`` now, in this thread, with retries; True when delivered
    (a 2xx answer). A URL :func:`check_notify_url` refuses (checked again here: a name may
    resolve differently now) is not contacted. Never raises."""
    try:
        check_notify_url(url, allowed_hosts, resolve_timeout_s=timeout_s)
    except NotifyURLRefused as e:
        log.warning("notification of job %s not sent: %s", notice.get("id"), e)
        return False
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
