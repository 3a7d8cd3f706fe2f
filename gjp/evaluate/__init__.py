"""Evaluating embeddings: probes (probe.py), nearest neighbours (knn.py), the score table (score.py)."""
