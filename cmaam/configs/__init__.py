"""Presets shipped with the package: ``experiments/<name>.yaml`` and ``evolve/<name>.yaml`` (see cmaam.core.presets)."""
