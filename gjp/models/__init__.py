"""Embedding models: baselines now (baselines.py), GeoJEPA later; `gjp embed` (embed.py)."""
