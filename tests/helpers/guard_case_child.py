"""One fresh process of the correctness suite: ``python guard_case_child.py CACHE CASE [CASE...]``.

``baseline`` compiles the unchanged targets (the Knobs module, the closure function and HubFuncNet). Any other case
applies its change (tests/helpers/guard_cases.py), calls ``torchkiln.compile`` under the case's context and reports, as
the last stdout line ``TKRESULT <json>``, per case: ``hit``, ``key``, ``store_key`` (the variant used),
``max_diff`` against eager computed in this process before compiling, and the ``TorchkilnWarning`` messages.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from typing import Any

import torch

import torchkiln
from helpers import guard_cases


def _diff(got: Any, want: Any) -> float:
    if got.shape != want.shape or got.dtype != want.dtype:
        return float("inf")
    return float((got.detach().double() - want.detach().double()).abs().max())


def _predicted_hit(cache: str, target: Any, inputs: tuple[Any, ...]) -> bool:
    """What ``torchkiln explain`` predicts for this request (headers only, nothing unpickled)."""
    from torchkiln import api
    from torchkiln.cli._cachelib import predict
    from torchkiln.store import open_store

    wanted = api.request_key(target, inputs)
    return bool(predict(open_store(cache), target, inputs, {}, wanted)["hit"])


def run(cache: str, case: str) -> dict[str, Any]:
    target, inputs, context = guard_cases.build(case)
    record: dict[str, Any] = {"case": case, "error": None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with context():
            want = guard_cases.eager(target, inputs)
            record["predicted_hit"] = _predicted_hit(cache, target, inputs)
            try:
                compiled = torchkiln.compile(target, inputs, cache=cache)
                got = compiled(*inputs)
                record.update(
                    hit=compiled.hit,
                    key=re.sub(r"\.[0-9a-f]{16}$", "", compiled.key),  # a variant's store key -> its key
                    store_key=compiled.key,
                    max_diff=_diff(got, want),
                )
            except Exception as exc:  # reported, the test decides
                record["error"] = f"{type(exc).__name__}: {exc}"
    record["warnings"] = [str(w.message) for w in caught if issubclass(w.category, torchkiln.TorchkilnWarning)]
    return record


def main() -> None:
    cache, cases = sys.argv[1], sys.argv[2:]
    torch.manual_seed(0)
    if cases == ["baseline"]:
        cases = ["same", "closure_same", "hub_func_same"]
    results = [run(cache, case) for case in cases]
    print("TKRESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
