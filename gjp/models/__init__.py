"""Models: the ``nn.Module``s (the GeoJEPA encoder, a polygon GNN), nothing else.

Only torch / torch-geometric imports belong here; the functions that turn a dataset into
embeddings by name (baselines, ``gjp embed``) are in :mod:`gjp.embedders`.
"""
