"""The raw tags of a ``dataset.h5`` (ids into its key and value string tables), for
everything that selects tiles or entities by tag: task labels, masking, retrieval
categories."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gjp.dataset.format import decode, open_dataset


class RawTags:
    """Every entity's raw tags, with the tile and entity each tag belongs to."""

    def __init__(self, path: str | Path):
        with open_dataset(path) as f:
            self.tile_names = decode(f["tiles/name"][()])
            self.groups = decode(f["tiles/group"][()])
            self.entity_offsets = f["tiles/entity_offsets"][()]
            self.kind = f["entities/kind"][()]
            self.tag_offsets = f["entities/tag_offsets"][()]
            self.key_ids = f["entities/tag_key_ids"][()]
            self.value_ids = f["entities/tag_value_ids"][()]
            self.keys = decode(f["strings/keys"][()])
            self.values = decode(f["strings/values"][()])
        self.entity_of_tag = np.repeat(np.arange(len(self.kind)), np.diff(self.tag_offsets))
        self.tile_of_entity = np.repeat(np.arange(len(self.tile_names)), np.diff(self.entity_offsets))

    def tags_where(self, key: str, allowed: tuple[str, ...] | list[str] | None) -> np.ndarray:
        """Mask over tags: key is ``key`` and the value allowed (None = any value)."""
        try:
            kid = self.keys.index(key)
        except ValueError:
            return np.zeros(len(self.key_ids), dtype=bool)
        mask = self.key_ids == kid
        if allowed is not None:
            ok = np.array([v in allowed for v in self.values], dtype=bool)
            mask &= ok[self.value_ids]
        return mask

    def entities_with(self, tag_mask: np.ndarray) -> np.ndarray:
        """Mask over entities: those with at least one tag in ``tag_mask``."""
        return np.bincount(self.entity_of_tag[tag_mask], minlength=len(self.kind)) > 0

    def tiles_with(self, tag_mask: np.ndarray) -> np.ndarray:
        """Indices of the tiles with at least one tag in ``tag_mask``."""
        return np.unique(self.tile_of_entity[self.entity_of_tag[tag_mask]])
