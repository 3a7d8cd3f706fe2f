"""OSM's area convention: when is a closed way a polygon rather than a closed line?

A closed way (first node = last node, at least 4 node refs) is an area when

1. it is tagged ``area=yes`` (``area=no`` makes it a line, whatever else it carries), or
2. it has a key from :data:`AREA_KEYS` whose value is not one of that key's line-like
   exceptions in :data:`LINEAR_VALUES`, or a key from :data:`AREA_ONLY_VALUES` with one of
   the listed values.

This follows the rules the main OSM editors and renderers share (iD's area keys, the
osm2pgsql/openstreetmap-carto polygon list): e.g. ``building``, ``landuse`` and
``leisure=park`` are areas; a closed ``highway=residential`` (a loop road),
``barrier=fence`` or ``natural=coastline`` stays a line unless ``area=yes``.
"""

from __future__ import annotations

#: Keys that make a closed way an area, unless the value is a line-like exception.
AREA_KEYS: frozenset[str] = frozenset({
    "aeroway", "amenity", "boundary", "building", "building:part", "craft", "emergency",
    "golf", "healthcare", "historic", "indoor", "landuse", "leisure", "man_made",
    "military", "natural", "office", "place", "power", "public_transport", "shop",
    "tourism", "water", "waterway", "area:highway", "bridge:support", "club",
    "disused:amenity", "disused:shop", "education", "allotments", "playground",
    "seamark:type", "telecom",
})

#: Values of area keys that describe linear features.
LINEAR_VALUES: dict[str, frozenset[str]] = {
    "aeroway": frozenset({"runway", "taxiway", "taxilane", "parking_position", "jet_bridge"}),
    "boundary": frozenset({"administrative", "political", "postal_code", "census",
                           "maritime", "timezone"}),
    "golf": frozenset({"cartpath", "hole", "path"}),
    "historic": frozenset({"citywalls", "city_wall", "railway"}),
    "leisure": frozenset({"track", "slipway", "picnic_table"}),
    "man_made": frozenset({"breakwater", "crane", "cutline", "dyke", "embankment",
                           "groyne", "pipeline", "power_line", "goods_conveyor"}),
    "natural": frozenset({"arete", "cliff", "coastline", "earth_bank", "gully", "ridge",
                          "tree_row", "valley"}),
    "power": frozenset({"cable", "line", "minor_line"}),
    "public_transport": frozenset({"stop_position"}),
    "seamark:type": frozenset({"cable_submarine", "pipeline_submarine", "separation_line"}),
    "telecom": frozenset({"line"}),
    "waterway": frozenset({"canal", "ditch", "drain", "river", "stream", "tidal_channel",
                           "weir", "brook", "fairway", "canoe_pass", "pressurised"}),
}

#: Keys that are lines in general but areas for a few values.
AREA_ONLY_VALUES: dict[str, frozenset[str]] = {
    "highway": frozenset({"services", "rest_area", "platform"}),
    "railway": frozenset({"platform", "station", "turntable", "roundhouse", "traverser",
                          "wash"}),
    "footway": frozenset({"platform"}),
}


def is_area(tags: dict[str, str]) -> bool:
    """Whether a *closed* way with these tags is an area (see the module docstring)."""
    area = tags.get("area")
    if area == "yes":
        return True
    if area == "no":
        return False
    for key, value in tags.items():
        if key in AREA_KEYS:
            if value == "no":
                continue
            linear = LINEAR_VALUES.get(key)
            if linear is None or value not in linear:
                return True
        else:
            only = AREA_ONLY_VALUES.get(key)
            if only is not None and value in only:
                return True
    return False
