"""Named model sizes: the one rule every model config's ``preset`` follows.

An unknown name is its own error (:class:`UnknownPresetError`), so a caller tells "no such
preset" from "a bad override of a real one" by the exception's type alone. Imports nothing.
"""
from __future__ import annotations


class UnknownPresetError(ValueError):
    """A preset name the model does not have."""


def preset_settings(presets: dict[str, dict], name: str) -> dict:
    """The settings of preset ``name``, or :class:`UnknownPresetError` naming the choices."""
    if name not in presets:
        raise UnknownPresetError(f"unknown preset {name!r}: choose one of {', '.join(presets)}")
    return presets[name]
