"""gjp: a GeoJEPA toolkit of composable command-line steps.

The library is usable without the CLI: every ``gjp STEP`` is a thin wrapper around a
function in one of the modules below (``gjp.osm.tiling.tile_osm``, ``gjp.geometry.simplify``…).
"""

__version__ = "0.1.0"
