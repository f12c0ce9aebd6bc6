"""progress.py: long activities announce themselves; instant ones stay silent; the CLI shows them on stderr."""

from __future__ import annotations

import io
import logging
import time

import pytest

from torchkiln import progress


def test_an_activity_is_logged_with_its_duration(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="torchkiln.progress"), progress.activity("compiling k"):
        pass
    assert next(r.getMessage() for r in caplog.records) == "compiling k ..."
    assert caplog.records[-1].getMessage().startswith("compiling k: done in ")


def test_a_wait_is_announced_only_once_it_lasts(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="torchkiln.progress"):
        with progress.activity("waiting for a free lock", after=30.0):
            pass
        assert caplog.records == []  # a lock that was free at once is not news
        with progress.activity("waiting for a busy lock", after=0.05):
            time.sleep(0.5)
    assert next(r.getMessage() for r in caplog.records) == "waiting for a busy lock ..."


def test_the_cli_display_writes_lines_to_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    progress.show_on(stream_is_tty=False)
    try:
        with progress.activity("compiling k"):
            pass
    finally:
        progress.hide()
    lines = err.getvalue().splitlines()
    assert lines[0] == "torchkiln: compiling k ..." and lines[1].startswith("torchkiln: compiling k: done in ")
