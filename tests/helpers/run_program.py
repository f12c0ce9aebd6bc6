"""A program run by ``torchkiln run`` in the tests: it never imports torchkiln to compile, only to report.

It uses ``tk_library`` (which calls torch.compile at import) and starts a child Python process, which must see
torch.compile routed too. The last stdout line is ``TKRESULT <json>``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

import tk_library as lib

CHILD = "import json, torch; print(json.dumps(hasattr(torch.compile, '_torchkiln_original')))"

torch.set_grad_enabled(False)
x = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))
out = lib.score(x)
child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
result = {
    "argv": sys.argv,
    "main": __name__,
    "type": type(lib.SCORER).__name__,
    "hit": getattr(lib.SCORER, "hit", None),
    "diff": float((out - lib.SCORER._orig_mod(x)).abs().max()),
    "child_routed": json.loads(child.stdout.strip().splitlines()[-1]),
    "child_stderr": child.stderr[-2000:],
}
sys.stdout.write("TKRESULT " + json.dumps(result) + "\n")
