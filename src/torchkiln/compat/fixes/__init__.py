"""One module per upstream bug; registry.py discovers them, so adding a fix is adding a file here.

A fix module's docstring gives the symptom (the exact error text), the upstream issue or PR, the affected
versions and the torch names it touches (DESIGN.md section 6). The module exposes one ``Fix`` record
(compat/fix.py) as its module-level ``FIX``, with an ``order`` and a comment saying why it sits there, and imports
only compat/fix.py and the shared helpers of compat/ (runtime_env_patch, probing, references, versions): never the
registry, never another fix. Nothing is patched at import, and torch internals are imported inside the
functions, so a torch that lacks them reports ``not-applicable`` instead of failing the import. Modules whose
names start with ``_`` are not fixes. A module that fails to import anyway is reported as ``broken``.
"""
