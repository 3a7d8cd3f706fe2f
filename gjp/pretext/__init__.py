"""Pretext tasks for pretraining the geometry encoder (:mod:`gjp.models.polygnn`)."""
