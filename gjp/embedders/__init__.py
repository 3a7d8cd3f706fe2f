"""Embedders: functions from a dataset to tile (and entity) vectors, by name.

The baselines (baselines.py: tagcount, tagpool, torchvision image backbones) and the
``gjp embed`` step (embed.py). The networks themselves, as ``nn.Module``s, live in
:mod:`gjp.models`.
"""
