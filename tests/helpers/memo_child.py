"""``child.py`` in a process that counts how often torch hashes its own sources.

Run as ``python tests/helpers/memo_child.py CONFIG_JSON`` with ``child.py``'s config. Before anything compiles or
loads, it wraps ``torch._inductor.codecache.build_code_hash`` (the walk ``torch_key()`` runs over torch's sources;
``get_code_hash`` looks it up by name in that module) with a counter. After ``child.py``'s work it asks torch for
``torch_key()`` itself, as a GPU hit's Triton kernel keys or a compile would (with ``TK_PRIME_AS_GPU_LOAD=1``
priming the memo first, as ``compiler.load`` does for a GPU artifact), and prints, after child.py's
``TKRESULT`` line, ``TKMEMO <json>``: the calls counted before and after that request, the value torch returned
and torchkiln's install-memo report for this process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

from torch._inductor import codecache

from helpers import child
from torchkiln import inductor_cache

calls = [0]
_original = codecache.build_code_hash


def _counting(*args: Any, **kwargs: Any) -> None:
    calls[0] += 1
    _original(*args, **kwargs)


def main(argv: list[str]) -> int:
    codecache.build_code_hash = _counting
    status = child.main(argv)
    before = calls[0]
    if os.environ.get("TK_PRIME_AS_GPU_LOAD") == "1":
        # What compiler.load does before torch's load of a GPU artifact (a CPU hit skips it: it never hashes).
        inductor_cache.prime_torch_key()
    value = codecache.torch_key()
    report = inductor_cache.report()
    memo = {
        "build_code_hash_calls": before,
        "after_torch_key": calls[0],
        "torch_key": value.hex(),
        "report": None if report is None else dataclasses.asdict(report),
    }
    sys.stdout.write("TKMEMO " + json.dumps(memo) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
