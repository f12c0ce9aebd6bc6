"""A fresh process that builds Inductor's kernel templates with the template memo in place (test_template_memo.py).

argv: the memo root. Records every template the memo answered (served or compiled), checks each code object is
equal to what Jinja compiles for that source in this process, and that a program's own Jinja environment
is left alone. Prints one TKRESULT line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch  # the program's own import, first

from torchkiln.inductor_cache import template_memo

root = Path(sys.argv[1])
answered: list[tuple[Any, str, Any]] = []
_original = template_memo._memoized


def _recording(env: Any, source: str, compile_source: Any) -> Any:
    code = _original(env, source, compile_source)
    answered.append((env, source, code))
    return code


template_memo._memoized = _recording
report = template_memo.memoize_templates(root=root)

import jinja2  # noqa: E402
import torch._inductor.select_algorithm  # noqa: E402, F401 - its kernel modules build their templates at import

inductor_answers = len(answered)
users = jinja2.Environment()
rendered = users.from_string("{{ x }}-{{ y }}").render(x=1, y=2)
saved = template_memo.save_templates()
# code objects compare by their bytecode, constants, names, line table (marshal's bytes also depend on refcounts)
identical = [jinja2.Environment.compile(env, src) == code for env, src, code in answered]
print(
    "TKRESULT "
    + json.dumps(
        {
            "report": template_memo.template_report(),
            "answered": inductor_answers,
            "answered_after_user_env": len(answered),
            "identical": identical,
            "user_env_class": type(users).__qualname__,
            "rendered": rendered,
            "saved": saved,
        }
    )
)
