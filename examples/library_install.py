"""A library that calls ``torch.compile`` itself (``tinylib``), served from the torchkiln cache by ``install()``.

One line before the library is imported, nothing changed in the library::

    torchkiln.install()          # torch.compile(..., fullgraph=True) calls now go through torchkiln
    import tinylib               # its decorated function and its loader's torch.compile are torchkiln's

For a program you cannot edit at all, the same without the line: ``torchkiln run program.py`` (or
``torchkiln run -m package``). Calls torchkiln cannot serve (``fullgraph=False``, another backend, ...) go to torch
unchanged; ``TORCHKILN_LOG=info`` shows each decision. Run twice: the first process compiles, the second loads.

``python examples/library_install.py [--cache DIR] [--json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import torchkiln


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="torchkiln cache (default: TORCHKILN_CACHE or the user cache)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)

    torchkiln.install(cache=args.cache)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # tinylib lives beside this file
    import tinylib

    start = time.perf_counter()
    encoder = tinylib.load_encoder()
    queries = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(1))
    documents = torch.randint(0, 64, (3, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        scores = tinylib.similarity(encoder(queries), encoder(documents))
        eager = tinylib.similarity.__wrapped__(encoder._orig_mod(queries), encoder._orig_mod(documents))
    seconds = time.perf_counter() - start

    served = {"encoder": encoder, "similarity": tinylib.similarity}
    report = {
        "max_diff_vs_eager": float((scores - eager).abs().max()),
        "seconds": round(seconds, 2),
        "served": {
            name: {"type": type(obj).__name__, "specializations": [[s.key, s.hit] for s in obj.specializations]}
            for name, obj in served.items()
        },
        "hit": all(s.hit for obj in served.values() for s in obj.specializations),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"scores {tuple(scores.shape)} in {seconds:.1f} s, max |diff| vs eager {report['max_diff_vs_eager']:.1e}")
        for name, obj in served.items():
            for spec in obj.specializations:
                print(f"  {name}: {'hit ' if spec.hit else 'miss'} {spec.key}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["max_diff_vs_eager"] < 1e-5 else 1)
