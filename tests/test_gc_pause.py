"""gc_pause.py: the collector is paused inside, resumed by the last of nested or concurrent pauses, left as found."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from torchkiln import gc_pause, settings
from torchkiln.errors import ConfigError


@pytest.fixture(autouse=True)
def _collector_running(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(settings.ENV_GC_PAUSE, raising=False)
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:  # pragma: no cover - pytest runs with the collector on
        gc.disable()


def test_paused_inside_and_running_after() -> None:
    with gc_pause.paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_resumed_after_an_exception() -> None:
    with pytest.raises(KeyError), gc_pause.paused():
        raise KeyError("x")
    assert gc.isenabled()


def test_nested_pauses_resume_only_at_the_outermost() -> None:
    with gc_pause.paused():
        with gc_pause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_pause_on_another_thread_keeps_it_paused_until_both_end() -> None:
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with gc_pause.paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    with gc_pause.paused():
        thread.start()
        assert inside.wait(10)
    assert not gc.isenabled()  # the other thread's pause is still open
    release.set()
    thread.join(10)
    assert gc.isenabled()


def test_a_program_that_disabled_the_collector_keeps_it_disabled() -> None:
    gc.disable()
    with gc_pause.paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_off_leaves_the_collector_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.ENV_GC_PAUSE, "0")
    with gc_pause.paused():
        assert gc.isenabled()


def test_a_bad_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.ENV_GC_PAUSE, "sometimes")
    with pytest.raises(ConfigError, match="TORCHKILN_GC_PAUSE"):
        settings.current()
    assert settings.current({settings.ENV_GC_PAUSE: "off"}).gc_pause is False
    assert settings.current({}).gc_pause is True


def test_as_a_decorator_it_pauses_each_call() -> None:
    @gc_pause.paused()
    def inside() -> bool:
        return gc.isenabled()

    assert inside() is False and gc.isenabled()
    assert inside() is False and gc.isenabled()  # a fresh pause per call, not one for the decorator's lifetime
