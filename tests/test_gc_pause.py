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


class _Marker:
    """A container object whose generation the tests look up."""


def _generation_of(obj: object) -> int | None:
    return next((g for g in range(3) if any(o is obj for o in gc.get_objects(generation=g))), None)


def test_what_the_pause_allocated_goes_to_the_oldest_generation_unwalked() -> None:
    gc.collect()
    with gc_pause.paused():
        marker = _Marker()
        filler = [[i] for i in range(5000)]  # more allocations than a young collection's threshold
    assert gc.get_count()[0] < 100  # no young collection pending over the pause's objects
    assert _generation_of(marker) == 2
    assert gc.get_freeze_count() == 0  # handed over, not left frozen
    del filler


def test_a_cycle_made_during_the_pause_is_still_collected() -> None:
    with gc_pause.paused():
        cycle: list[object] = []
        cycle.append(cycle)
        marker = _Marker()
        cycle.append(marker)
    import weakref

    gone = weakref.ref(marker)
    del cycle, marker
    gc.collect()  # the next full collection frees it: only *when* changed
    assert gone() is None


def test_objects_the_program_froze_stay_frozen() -> None:
    frozen_before = _Marker()
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        with gc_pause.paused():
            marker = _Marker()
        assert gc.get_freeze_count() == count  # gc.unfreeze would have released the program's frozen objects
        assert _generation_of(frozen_before) is None  # still in the permanent generation
        assert _generation_of(marker) in (0, 1)  # left to the young collections, as without torchkiln
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("how", ["switch off", "collector disabled"])
def test_nothing_moves_where_the_collector_is_left_alone(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gc.collect()
    if how == "switch off":
        monkeypatch.setenv(settings.ENV_GC_PAUSE, "0")
    else:
        gc.disable()
    with gc_pause.paused():
        marker = _Marker()
    assert _generation_of(marker) == 0
