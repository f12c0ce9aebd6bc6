"""The Inductor/Triton cache owner: the one place outside compiler.py and compat/ that touches torch internals.

Re-exports only. ``memo.py``: the per-install memo of Inductor's source-tree hash ``torch_key()`` (its install
identity in ``identity.py``); ``triton_memo.py``: the same for Triton's ``triton_key()``;
``template_memo.py``: Inductor's compiled Jinja templates; ``warm.py``: the imports
a hit makes, in order, for ``torchkiln.preload``. ``scopes.py``: the
scopes a compile that records its kernels (``recording``), a load that uses them (``loading``, which also owns
``compile_threads``) and a loaded graph's first call run under, and where torch keeps its caches
(``inductor_cache_dirs``). Importing this package imports no torch.
"""

from __future__ import annotations

from torchkiln.inductor_cache.identity import MEMO_FORMAT, InstallIdentity, install_identity, tree_identity
from torchkiln.inductor_cache.memo import (
    TORCH_KEY_RANGE,
    MemoReport,
    memo_dir,
    memo_path,
    prime_torch_key,
    read_memo,
    report,
    write_memo,
)
from torchkiln.inductor_cache.scopes import (
    PINNED_SETTINGS,
    Recorded,
    Restored,
    inductor_cache_dirs,
    loading,
    recording,
    settle_isa,
    without_custom_op_aliasing_check,
)
from torchkiln.inductor_cache.template_memo import (
    JINJA_RANGE,
    TemplateMemoReport,
    memoize_templates,
    save_templates,
    template_report,
)
from torchkiln.inductor_cache.triton_memo import TRITON_KEY_RANGE, prime_triton_key, revert_triton_key, triton_report
from torchkiln.inductor_cache.warm import CPU_IMPORTS, GPU_IMPORTS, HIT_IMPORTS, WarmReport, warm_imports

__all__ = [
    # the install memo
    "MEMO_FORMAT",
    "TORCH_KEY_RANGE",
    "InstallIdentity",
    "MemoReport",
    "install_identity",
    "memo_dir",
    "memo_path",
    "prime_torch_key",
    "read_memo",
    "report",
    "write_memo",
    "tree_identity",
    "TRITON_KEY_RANGE",
    "prime_triton_key",
    "revert_triton_key",
    "triton_report",
    # Inductor's compiled Jinja templates
    "JINJA_RANGE",
    "TemplateMemoReport",
    "memoize_templates",
    "save_templates",
    "template_report",
    # the imports a hit makes, made ahead (preload)
    "CPU_IMPORTS",
    "GPU_IMPORTS",
    "HIT_IMPORTS",
    "WarmReport",
    "warm_imports",
    # the scopes
    "PINNED_SETTINGS",
    "Recorded",
    "Restored",
    "inductor_cache_dirs",
    "loading",
    "recording",
    "settle_isa",
    "without_custom_op_aliasing_check",
]
