"""``child.py`` in a process that counts how often torch hashes its own sources.

Run as ``python tests/helpers/memo_child.py CONFIG_JSON`` with ``child.py``'s config. Before anything compiles or
loads, it wraps ``torch._inductor.codecache.build_code_hash`` (the walk ``torch_key()`` runs over torch's sources;
``get_code_hash`` looks it up by name in that module) with a counter. After ``child.py``'s work it asks torch for
``torch_key()`` itself, as a GPU hit's Triton kernel keys or a compile would (with ``TK_PRIME_AS_GPU_LOAD=1``
priming the memo first, as ``loader.prepare_load`` does for a GPU artifact), and prints, after child.py's
``TKRESULT`` line, ``TKMEMO <json>``: the calls counted before and after that request, the value torch returned
and torchkiln's install-memo report for this process. ``triton_key_runs``: how often Triton's ``triton_key()``
actually hashed during child.py's work (an audit hook sees it open ``libtriton``, whatever name it was called
by; importing Triton loads the library without that event), and ``triton_report`` the Triton memo's report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from torch._inductor import codecache

from helpers import child
from torchkiln import inductor_cache

calls = [0]
triton_runs = [0]
_original = codecache.build_code_hash


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and isinstance(args[0], str) and Path(args[0]).name.startswith("libtriton."):
        triton_runs[0] += 1


def _counting(*args: Any, **kwargs: Any) -> None:
    calls[0] += 1
    _original(*args, **kwargs)


def main(argv: list[str]) -> int:
    codecache.build_code_hash = _counting
    sys.addaudithook(_audit)
    status = child.main(argv)
    before, triton_before = calls[0], triton_runs[0]
    if os.environ.get("TK_PRIME_AS_GPU_LOAD") == "1":
        # What loader.prepare_load does before torch's load of a GPU artifact (a CPU hit skips it: it never hashes).
        inductor_cache.prime_torch_key()
    value = codecache.torch_key()
    triton_value = None
    if os.environ.get("TK_PRIME_TRITON") == "1":
        # As loader.prepare_load does for a GPU artifact, then ask Triton for its key, as a GPU kernel's load would.
        inductor_cache.prime_triton_key()
        from torch._inductor.runtime import triton_compat

        triton_value = triton_compat.triton_key()
    report = inductor_cache.report()
    triton = inductor_cache.triton_report()
    memo = {
        "build_code_hash_calls": before,
        "after_torch_key": calls[0],
        "torch_key": value.hex(),
        "report": None if report is None else dataclasses.asdict(report),
        "triton_key_runs": triton_before,
        "triton_key_runs_after": triton_runs[0],
        "triton_key": triton_value,
        "triton_report": None if triton is None else dataclasses.asdict(triton),
    }
    sys.stdout.write("TKMEMO " + json.dumps(memo) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
