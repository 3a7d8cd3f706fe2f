"""Speed limits from OSM ``maxspeed`` values, in km/h.

Reads plain numbers (km/h), ``N mph`` (× 1.609), ``N km/h``/``kmh``/``kph``, ``N knots``
(× 1.852), lists separated by ``;`` or ``|`` (the largest), and the common implicit forms
``CC:zone`` (``DE:zone30``, ``DE:zone:30`` → 30), ``CC:urban``, ``CC:rural``, ``CC:motorway``,
``CC:trunk`` and ``CC:living_street`` with per-country defaults where they differ from the
usual ones (urban 50, rural 90, trunk 100, motorway 120, living street 10). ``none``,
``signals``, ``walk`` and the like give no number.
"""

from __future__ import annotations

import re

MPH = 1.609
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(mph|km/h|kmh|kph|knots)?\s*$", re.IGNORECASE)
_ZONE = re.compile(r"^([A-Za-z]{2}(?:-[A-Za-z0-9]+)?):(?:zone|zone:)(\d+)$", re.IGNORECASE)
_IMPLICIT = re.compile(r"^([A-Za-z]{2})(?:-[A-Za-z0-9]+)?:([a-z_]+)$", re.IGNORECASE)
_DEFAULTS = {"urban": 50.0, "rural": 90.0, "trunk": 100.0, "motorway": 120.0, "living_street": 10.0,
             "walk": None, "bicycle_road": 30.0, "school": 30.0}
_COUNTRY = {
    ("RU", "urban"): 60.0, ("UA", "urban"): 50.0, ("DE", "rural"): 100.0, ("AT", "rural"): 100.0,
    ("CH", "rural"): 80.0, ("FR", "rural"): 80.0, ("IT", "rural"): 90.0, ("GB", "rural"): 60 * MPH,
    ("GB", "nsl_single"): 60 * MPH, ("GB", "nsl_dual"): 70 * MPH, ("GB", "motorway"): 70 * MPH,
    ("GB", "urban"): 30 * MPH, ("DE", "motorway"): None, ("FR", "motorway"): 130.0, ("AT", "motorway"): 130.0,
    ("IT", "motorway"): 130.0, ("CZ", "motorway"): 130.0, ("PL", "motorway"): 140.0, ("DE", "living_street"): 7.0,
    ("CH", "motorway"): 120.0, ("NL", "motorway"): 130.0, ("BE", "motorway"): 120.0, ("ES", "motorway"): 120.0,
    ("PT", "motorway"): 120.0, ("RU", "motorway"): 110.0, ("FI", "urban"): 50.0, ("FI", "rural"): 80.0,
}


def parse_speed(value: str) -> float | None:
    """km/h from a ``maxspeed`` value, or ``None`` when it gives no number."""
    best = None
    for part in re.split(r"[;|]", value):
        speed = _one(part.strip())
        if speed is not None and (best is None or speed > best):
            best = speed
    return best


def _one(text: str) -> float | None:
    m = _NUMBER.match(text)
    if m:
        number = float(m.group(1))
        unit = (m.group(2) or "").lower()
        return number * MPH if unit == "mph" else number * 1.852 if unit == "knots" else number
    m = _ZONE.match(text)
    if m:
        return float(m.group(2))
    m = _IMPLICIT.match(text)
    if m:
        country, kind = m.group(1).upper(), m.group(2).lower()
        if (country, kind) in _COUNTRY:
            return _COUNTRY[(country, kind)]
        return _DEFAULTS.get(kind)
    return None


def parse_number(value: str) -> float | None:
    """The first number in a value (``12``, ``12.5 m``), or ``None``."""
    m = re.match(r"^\s*(-?\d+(?:\.\d+)?)", value)
    return float(m.group(1)) if m else None
