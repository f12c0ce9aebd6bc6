"""Progress on everything long: a compile, a wait for another process's lock or lease, a slow remote call.

The library logs each activity at INFO (``TORCHKILN_LOG=info`` shows them) when it starts and when it ends, with
its duration; an activity that may be instant (a lock that is usually free) is announced only once it has lasted
``after`` seconds. The CLI registers a display (``show_on``): a rich spinner with the elapsed time on a TTY,
plain lines on stderr otherwise; never on stdout, so ``--json`` output stays pure (issue 11: a compile printed
nothing for 25-60 s, a 43 s lock wait was silent).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

__all__ = ["Display", "activity", "hide", "show_on"]

log = logging.getLogger("torchkiln.progress")


class Display(Protocol):
    def start(self, label: str) -> None: ...
    def stop(self, label: str, seconds: float) -> None: ...


class _Lines:
    """Non-TTY display: one line when an activity starts, one when it ends."""

    def start(self, label: str) -> None:
        sys.stderr.write(f"torchkiln: {label} ...\n")
        sys.stderr.flush()

    def stop(self, label: str, seconds: float) -> None:
        sys.stderr.write(f"torchkiln: {label}: done in {seconds:.1f} s\n")
        sys.stderr.flush()


class _Spinner:
    """TTY display: rich's status line (spinner, label, elapsed seconds), cleared when the activity ends."""

    def __init__(self, console: Any) -> None:
        self._console = console
        self._status: Any = None
        self._started = 0.0
        self._ticker: threading.Thread | None = None
        self._done = threading.Event()

    def start(self, label: str) -> None:
        self._started = time.monotonic()
        self._done.clear()
        self._status = self._console.status(f"torchkiln: {label}")
        self._status.start()

        def tick() -> None:
            while not self._done.wait(1.0):
                self._status.update(f"torchkiln: {label} ({time.monotonic() - self._started:.0f} s)")

        self._ticker = threading.Thread(target=tick, name="torchkiln-progress", daemon=True)
        self._ticker.start()

    def stop(self, label: str, seconds: float) -> None:
        self._done.set()
        if self._status is not None:
            self._status.stop()
        self._console.print(f"torchkiln: {label}: done in {seconds:.1f} s", highlight=False)


_display: Display | None = None


def show_on(stream_is_tty: bool | None = None) -> None:
    """Show activities to a person (the CLI calls this): a spinner on a TTY, lines on stderr otherwise."""
    global _display
    tty = sys.stderr.isatty() if stream_is_tty is None else stream_is_tty
    if tty:
        from rich.console import Console

        _display = _Spinner(Console(stderr=True))
    else:
        _display = _Lines()


def hide() -> None:
    """Back to log records only (the CLI calls this when its command ends)."""
    global _display
    _display = None


@contextlib.contextmanager
def activity(label: str, *, after: float = 0.0) -> Iterator[None]:
    """Announce ``label`` (at once, or once it has lasted ``after`` seconds) and its duration when it ends."""
    start = time.perf_counter()
    announced = threading.Event()
    lock = threading.Lock()
    display = _display

    def announce() -> None:
        with lock:
            if announced.is_set():
                return
            announced.set()
            log.info("%s ...", label)
            if display is not None:
                display.start(label)

    timer: threading.Timer | None = None
    if after <= 0:
        announce()
    else:
        timer = threading.Timer(after, announce)
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
        with lock:
            shown = announced.is_set()
            announced.set()  # a timer that fires now must not announce an activity that is over
        if shown:
            seconds = time.perf_counter() - start
            log.info("%s: done in %.1f s", label, seconds)
            if display is not None:
                display.stop(label, seconds)
