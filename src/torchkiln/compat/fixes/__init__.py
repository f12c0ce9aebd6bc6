"""One module per upstream bug. Each exposes ``FIX`` (a ``torchkiln.compat.registry.Fix``)."""
