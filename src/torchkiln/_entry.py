"""The module-level entry point through which torchkiln compiles an ``nn.Module``.

Compiling a module's (often decorated) ``forward`` directly cannot be pickled (``Can't pickle <function ...forward>:
it's not the same object as ...``), so torchkiln compiles this plain function instead and passes the module as its
first argument: parameters and buffers stay inputs read at call time, never baked into the artifact. This module's
globals are what a loaded artifact runs against (``f_globals``), so keep it tiny and free of imports.
"""


def call_module(module, *args, **kwargs):  # type: ignore[no-untyped-def]
    return module(*args, **kwargs)
