"""Tests for the memo of Inductor's compiled Jinja templates (src/torchkiln/inductor_cache/template_memo.py).

Across fresh processes (helpers/template_memo_child.py): the first builds Inductor's kernel templates and saves
them, the second is served every one from the memo, each code object equal to what Jinja compiles in that
process, and a program's own Jinja environment is never touched. In this process: an entry's key covers every
environment setting Jinja's compiler reads, only ``from_string``'s call is memoized, and a memo file that is
corrupt, foreign, not private or of another Jinja/Python is ignored, never used.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import jinja2
import pytest

from helpers.procs import HELPERS, parse_result, run_script
from torchkiln.inductor_cache import template_memo
from torchkiln.inductor_cache.identity import InstallIdentity

CHILD = HELPERS / "template_memo_child.py"
OLD_NS = 1_600_000_000 * 10**9
TEMPLATE = "{% for x in items %}{{ x | double }}{% endfor %}\n  {{ tail }}"


def _child(root: Path, scratch: Path) -> dict[str, Any]:
    return parse_result(run_script([str(CHILD), str(root)], scratch).stdout)


@pytest.mark.compat  # torch 2.11 builds its templates through the same jinja2_env
def test_a_second_process_is_served_every_template_equal_to_jinjas(tmp_path: Path) -> None:
    root = tmp_path / "memo-root"
    first = _child(root, tmp_path / "first")
    assert first["report"]["state"] == "empty", first
    assert first["answered"] >= 5, "Inductor built no templates through the memo: the cut is not in place"
    assert first["report"]["compiled"] >= 5
    assert all(first["identical"]), first["identical"]
    assert first["saved"].startswith("saved"), first["saved"]
    (memo,) = (root / "v1" / "memo").glob("jinja-*.bin")
    assert stat.S_IMODE(memo.stat().st_mode) == 0o600

    second = _child(root, tmp_path / "second")
    assert second["report"]["state"] == "applied", second
    assert second["report"]["compiled"] == 0, "a template the first process saved was compiled again"
    assert second["report"]["served"] == second["answered"] == first["answered"]
    assert all(second["identical"]), second["identical"]
    assert second["saved"] == "nothing to save"
    # the program's own environment: its class untouched, its template compiled by Jinja, not answered by the memo
    assert second["user_env_class"] == "Environment"
    assert second["answered_after_user_env"] == second["answered"]
    assert second["rendered"] == "1-2"


# -- in this process: keys, the memoized call, the file ------------------------------------------------------------
def _double(value: int) -> int:
    return 2 * value


@pytest.fixture
def memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> template_memo._Memo:
    identity = InstallIdentity(digest="a" * 64, files=1, newest_change_ns=OLD_NS)
    state = template_memo._Memo(tmp_path / "m.bin", str(tmp_path), "3.1.6", identity, time.time_ns(), {})
    monkeypatch.setattr(template_memo, "_memo", state)
    return state


def _env(**settings: Any) -> jinja2.Environment:
    env = jinja2.Environment(**settings)
    env.filters["double"] = _double
    env.__class__ = template_memo._memoizing_class(jinja2.Environment)
    return env


def test_the_key_covers_the_settings_the_compiler_reads() -> None:
    base = template_memo._entry_key(_env(), TEMPLATE)
    assert template_memo._entry_key(_env(), TEMPLATE) == base, "the same settings in another environment"
    assert template_memo._entry_key(_env(), TEMPLATE + " ") != base
    for settings in ({"trim_blocks": True}, {"lstrip_blocks": True}, {"variable_start_string": "[["}):
        assert template_memo._entry_key(_env(**settings), TEMPLATE) != base, settings
    with_context = _env()
    with_context.filters["double"] = jinja2.pass_context(lambda ctx, v: v)
    assert template_memo._entry_key(with_context, TEMPLATE) != base, "a filter's pass-argument flag"
    plain = jinja2.Environment()
    plain.filters["double"] = _double
    assert template_memo._entry_key(plain, TEMPLATE) == base, "the memo's own subclass is not a setting"


def test_served_code_renders_like_jinja_and_other_settings_never_share_it(memo: template_memo._Memo) -> None:
    plain = jinja2.Environment()
    plain.filters["double"] = _double
    expected = plain.from_string(TEMPLATE).render(items=[1, 2], tail="t")
    assert _env().from_string(TEMPLATE).render(items=[1, 2], tail="t") == expected
    assert (len(memo.codes), memo.compiled, memo.served) == (1, 1, 0)
    assert _env().from_string(TEMPLATE).render(items=[1, 2], tail="t") == expected
    assert (memo.compiled, memo.served) == (1, 1)
    trimmed = jinja2.Environment(lstrip_blocks=True)
    trimmed.filters["double"] = _double
    expected_trimmed = trimmed.from_string(TEMPLATE).render(items=[3], tail="t")
    assert expected_trimmed != expected
    assert _env(lstrip_blocks=True).from_string(TEMPLATE).render(items=[3], tail="t") == expected_trimmed
    assert (memo.compiled, memo.served) == (2, 1)


def test_only_from_strings_call_is_memoized(memo: template_memo._Memo) -> None:
    env = _env()
    env.compile(TEMPLATE, name="named")
    env.compile(TEMPLATE, raw=True)
    env.compile(TEMPLATE, defer_init=True)
    assert memo.codes == {}


def _write(memo: template_memo._Memo) -> Path:
    _env().from_string(TEMPLATE)
    template_memo._write(memo.path, memo.identity, memo.codes)
    return memo.path


def test_the_file_round_trips(memo: template_memo._Memo) -> None:
    path = _write(memo)
    assert template_memo._read(path, memo.identity).keys() == memo.codes.keys()


def _ignored(path: Path, identity: InstallIdentity) -> str:
    with pytest.raises(template_memo._IgnoredMemoError) as info:
        template_memo._read(path, identity)
    return str(info.value)


def test_another_jinja_or_python_is_ignored(memo: template_memo._Memo) -> None:
    path = _write(memo)
    other = InstallIdentity(digest="b" * 64, files=1, newest_change_ns=OLD_NS)
    assert "another Jinja or Python" in _ignored(path, other)


def test_a_corrupt_memo_is_ignored(memo: template_memo._Memo) -> None:
    path = _write(memo)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))
    assert "checksum" in _ignored(path, memo.identity)
    path.write_bytes(b"not a memo")
    assert "another format" in _ignored(path, memo.identity)


def test_a_payload_that_is_not_a_table_of_code_is_ignored(memo: template_memo._Memo) -> None:
    template_memo._write(memo.path, memo.identity, {"k" * 64: "not code"})  # type: ignore[dict-item]
    assert "not a table of code objects" in _ignored(memo.path, memo.identity)


def test_a_memo_others_can_write_or_a_link_is_ignored(memo: template_memo._Memo, tmp_path: Path) -> None:
    path = _write(memo)
    path.chmod(0o666)
    assert "writable by others" in _ignored(path, memo.identity)
    path.chmod(0o600)
    link = tmp_path / "link.bin"
    link.symlink_to(path)
    assert "cannot open" in _ignored(link, memo.identity)


def test_nothing_is_saved_from_racily_clean_jinja_files(memo: template_memo._Memo) -> None:
    memo.identity = InstallIdentity(digest="a" * 64, files=1, newest_change_ns=time.time_ns())
    _env().from_string(TEMPLATE)
    assert "changed in the 2 s before" in template_memo.save_templates()
    assert not memo.path.exists()


def test_a_jinja_outside_the_checked_range_is_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jinja2, "__version__", "4.0.0")
    module, why = template_memo._jinja()
    assert module is None
    assert "outside" in why


def test_the_switch_turns_the_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchkiln import settings

    monkeypatch.setattr(template_memo, "_report", None)
    monkeypatch.setattr(template_memo, "_memo", None)
    monkeypatch.setenv(settings.ENV_TEMPLATE_MEMO, "0")
    report = template_memo.memoize_templates()
    assert (report.state, report.detail) == ("unavailable", "TORCHKILN_TEMPLATE_MEMO is off")
    assert template_memo._memo is None
    assert settings.current({settings.ENV_TEMPLATE_MEMO: "off"}).template_memo is False
