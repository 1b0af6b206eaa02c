"""Turning stage events into what a person at a terminal sees.

On a terminal: a rich progress bar per counter (step k of n, ETA) and coloured stage lines.
Elsewhere (CI logs, pipes): plain lines, progress throttled to one line every few seconds per
counter plus the first and last step, so logs stay short but show that work moves.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from .events import Event


def format_eta(seconds: float | None) -> str:
    """``'ETA 1:05'`` style text; empty when unknown."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"ETA {h}:{m:02d}:{sec:02d}" if h else f"ETA {m}:{sec:02d}"


class ConsoleEvents:
    """An events callback that renders events on a console (stderr by default)."""

    def __init__(self, console: Console | None = None, min_interval_s: float = 5.0):
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.min_interval_s = min_interval_s
        self._progress: Progress | None = None
        self._tasks: dict[tuple[str, str], TaskID] = {}
        self._last_print: dict[tuple[str, str], float] = {}

    def _bar(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold blue]{task.description}"), BarColumn(),
                MofNCompleteColumn(), TextColumn("{task.fields[eta]}"),
                TextColumn("{task.fields[extra]}"), console=self.console, transient=False)
            self._progress.start()
        return self._progress

    def close(self) -> None:
        """Stop the live display (call once the command is done)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks.clear()

    def __call__(self, ev: Event) -> None:
        if ev.kind == "progress":
            self._on_progress(ev)
        elif ev.kind == "stage_started":
            self.console.print(f"[bold]{ev.stage}[/]: started" + (f" - {ev.message}" if ev.message else ""))
        elif ev.kind == "stage_finished":
            secs = ev.data.get("seconds")
            tail = f" ({secs:.1f} s)" if isinstance(secs, (int, float)) else ""
            self.console.print(f"[bold green]{ev.stage}[/]: done{tail}" + (f" - {ev.message}" if ev.message else ""))
        elif ev.kind == "warning":
            self.console.print(f"[yellow]{ev.stage}: warning:[/] {ev.message}", highlight=False)
        else:
            self.console.print(f"[dim]{ev.stage}: {ev.message}[/]", highlight=False)

    @staticmethod
    def _extra(data: dict[str, Any]) -> str:
        return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in data.items())

    def _on_progress(self, ev: Event) -> None:
        key = (ev.stage, ev.message)
        step = ev.step or 0
        if self.live:
            bar = self._bar()
            if key not in self._tasks:
                self._tasks[key] = bar.add_task(f"{ev.stage}: {ev.message}", total=ev.total,
                                                eta="", extra="")
            bar.update(self._tasks[key], completed=step, total=ev.total,
                       eta=format_eta(ev.eta_s), extra=self._extra(ev.data))
            return
        now = time.monotonic()
        last = self._last_print.get(key)
        final = ev.total is not None and step >= ev.total
        if step == 0 or final or last is None or now - last >= self.min_interval_s:
            self._last_print[key] = now
            of = f"{step}/{ev.total}" if ev.total else f"{step}"
            parts = [f"{ev.stage}: {ev.message} {of}", format_eta(ev.eta_s), self._extra(ev.data)]
            print("  ".join(p for p in parts if p), file=sys.stderr, flush=True)
