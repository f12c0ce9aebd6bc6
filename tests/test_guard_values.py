"""guard_values.describe: the portable description a re-check compares, for the value kinds models guard on."""

from __future__ import annotations

import json
import subprocess
import sys

from torchkiln.guard_values import describe


def _portable(check: object) -> object:
    return json.loads(json.dumps(check))  # what the header stores and a loading process reads back


def test_a_frozenset_of_strings_is_compared_by_value() -> None:
    # diffusers' torch_utils._FP64_UNSUPPORTED_DEVICES, guarded by every Flux forward (SET_NOT_CONTAINS)
    check = describe("SET_NOT_CONTAINS", frozenset({"mps", "npu", "neuron"}))
    assert check == {"eq": ["mps", "neuron", "npu"], "type": "class builtins.frozenset"}
    assert _portable(check) == describe("SET_NOT_CONTAINS", frozenset({"neuron", "npu", "mps"}))
    assert describe("CONSTANT_MATCH", frozenset({"mps", "npu"})) != check  # another value: a mismatch, a miss
    assert describe("CONSTANT_MATCH", {"mps", "npu", "neuron"}) != check  # a set is not a frozenset


def test_a_set_is_described_the_same_in_another_process_whatever_its_hash_seed() -> None:
    code = (
        "import json; from torchkiln.guard_values import describe; "
        "print(json.dumps(describe('CONSTANT_MATCH', frozenset(['b', 'a', 'c', 1]))))"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(sys.path)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(seen) == 1


def test_a_set_holding_an_unportable_member_has_no_description_by_value() -> None:
    check = describe("CONSTANT_MATCH", frozenset({object()}))
    assert check is None or "eq" not in check


def test_a_guard_on_a_dict_keyed_by_a_dtype_is_re_checked_with_torch_in_scope() -> None:
    # Dynamo's source for diffusers' _DTYPE_UNSUPPORTED_DEVICES[torch.float64] (Flux): ``torch`` must resolve.
    import types

    import torch

    from torchkiln.guard_fates import FatePlanner, Rechecker

    module = types.ModuleType("fake_torch_utils")
    module.UNSUPPORTED = {torch.float64: frozenset({"mps", "npu"})}  # type: ignore[attr-defined]
    name = "G['__import_fake_torch_utils'].UNSUPPORTED[torch.float64]"
    fates = FatePlanner()
    fates.dropped(name, "SET_NOT_CONTAINS", is_global=True, value=frozenset({"mps", "npu"}), has_value=True, why="x")
    f_globals = {"__import_fake_torch_utils": module}
    checker = Rechecker(tuple(fates.records))
    assert fates.records[0].fate == "re-checked"
    assert checker.mismatches(f_globals, {}) == []
    module.UNSUPPORTED = {torch.float64: frozenset({"mps", "npu", "cpu"})}  # type: ignore[attr-defined]
    assert checker.mismatches(f_globals, {}) != []
