"""The fresh-process side of the install() tests: route torch.compile, import a library that calls it, report JSON.

Run as ``python tests/helpers/install_child.py CACHE``. ``tk_library`` (tests/tk_library) calls ``torch.compile``
at import and in its functions; nothing in it knows torchkiln. The last stdout line is ``TKRESULT <json>``.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from typing import Any

import torch

import torchkiln


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _served(compiled: Any, out: torch.Tensor, want: torch.Tensor) -> dict[str, Any]:
    return {
        "type": type(compiled).__name__,
        "hit": getattr(compiled, "hit", None),
        "key": getattr(compiled, "key", None),
        "specializations": len(getattr(compiled, "specializations", ())),
        "diff": float((out - want).abs().max()),
    }


def main(argv: list[str]) -> int:
    records = _Records()
    routing = logging.getLogger("torchkiln.routing")
    routing.addHandler(records)
    routing.setLevel(logging.INFO)
    torch.set_grad_enabled(False)
    result: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torchkiln.install(cache=argv[1])
        result["installed"] = torchkiln.installed()
        import tk_library as lib

        x = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))
        y = torch.randn(4, 16, generator=torch.Generator().manual_seed(4))
        result["module_at_import"] = _served(lib.SCORER, lib.score(x), lib.SCORER._orig_mod(x))
        result["decorated_function"] = _served(lib.gelu_mix, lib.gelu_mix(x, y), lib.gelu_mix.__wrapped__(x, y))
        result["not_fullgraph"] = type(lib.cosine_plus_one).__name__
        head = lib.make_head()
        out = head(x)
        result["decorated_method"] = _served(head.forward, out, torch.relu(head.fc(x)) * 0.5)
        model = lib.compiled_forward_scorer()
        reference = lib.make_scorer()
        for batch in (4, 7):  # dynamic=True: one artifact for both
            ids = torch.randn(batch, 16, generator=torch.Generator().manual_seed(batch))
            result[f"bound_forward_{batch}"] = _served(model.forward, model(ids), reference(ids))
        result["uninstalled"] = torchkiln.uninstall()
        result["after_uninstall"] = type(torch.compile(lib.make_scorer(), fullgraph=True)).__name__
        result["installed_after"] = torchkiln.installed()
    result["routing_log"] = records.messages
    result["warnings"] = [str(w.message) for w in caught if issubclass(w.category, torchkiln.TorchkilnWarning)]
    sys.stdout.write("TKRESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
