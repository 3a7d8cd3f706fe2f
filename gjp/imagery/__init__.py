"""Aerial imagery: raster chips per tile."""
