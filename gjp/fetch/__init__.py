"""``gjp fetch``: getting OSM extracts (Geofabrik) and NAIP imagery (a STAC API)."""
