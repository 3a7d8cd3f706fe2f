"""The raw tags of a ``dataset.h5`` (ids into its key and value string tables), for
everything that selects tiles or entities by tag: task labels, masking, retrieval
categories.

Read a block of tiles at a time (:func:`raw_tag_blocks`), so memory is bounded by the
block, the key table and a byte or a float per distinct value, not by the dataset."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gjp.dataset.format import decode

#: Tiles per block: with tens of entities a tile, a few hundred thousand entities.
TILES_PER_BLOCK = 8192
#: Rows of the string tables read at a time.
STRING_ROWS = 1 << 16


class TagStrings:
    """A dataset's key and value tables, with the per-value answers that every block
    asks again (which values a filter allows, what number a value reads as) computed once
    and cached. The value table can be large (every distinct name, address, …): it is
    scanned :data:`STRING_ROWS` rows at a time and only the answers are kept (one byte or
    one float a value)."""

    def __init__(self, f):
        self.keys = decode(f["strings/keys"][()])
        self.key_index = {k: i for i, k in enumerate(self.keys)}
        self._values = f["strings/values"]
        self._cache: dict = {}

    def _value_blocks(self):
        for start in range(0, len(self._values), STRING_ROWS):
            yield np.asarray(self._values[start:start + STRING_ROWS], dtype=bytes)

    def allowed_values(self, allowed) -> np.ndarray:
        """Mask over the value table: the value is one of ``allowed``."""
        key = ("allowed", tuple(allowed))
        if key not in self._cache:
            wanted = np.array([v.encode() for v in allowed], dtype=bytes)
            self._cache[key] = np.concatenate([np.zeros(0, bool)] + [np.isin(block, wanted)
                                                                     for block in self._value_blocks()])
        return self._cache[key]

    def numbers(self, parse) -> np.ndarray:
        """Every value read as a number by ``parse`` (NaN where it reads as none)."""
        key = ("numbers", parse)
        if key not in self._cache:
            parsed = (parse(v) if v else None for block in self._value_blocks() for v in decode(block))
            self._cache[key] = np.array([np.nan if p is None else p for p in parsed], dtype=np.float64)
        return self._cache[key]


class RawTags:
    """The raw tags of tiles ``start:stop`` of an open dataset, with the tile and entity
    each tag belongs to (indices local to the block)."""

    def __init__(self, f, strings: TagStrings, start: int = 0, stop: int | None = None):
        stop = len(f["tiles/name"]) if stop is None else stop
        self.start, self.stop, self.strings = start, stop, strings
        self.tile_names = decode(f["tiles/name"][start:stop])
        self.groups = decode(f["tiles/group"][start:stop])
        offsets = f["tiles/entity_offsets"][start:stop + 1]
        e0, e1 = int(offsets[0]), int(offsets[-1])
        self.entity_range = (e0, e1)
        self.entity_offsets = offsets - e0
        self.kind = f["entities/kind"][e0:e1]
        tag_offsets = f["entities/tag_offsets"][e0:e1 + 1]
        t0, t1 = int(tag_offsets[0]), int(tag_offsets[-1])
        self.tag_range = (t0, t1)
        self.tag_offsets = tag_offsets - t0
        self.key_ids = f["entities/tag_key_ids"][t0:t1]
        self.value_ids = f["entities/tag_value_ids"][t0:t1]
        self.entity_of_tag = np.repeat(np.arange(len(self.kind)), np.diff(self.tag_offsets))
        self.tile_of_entity = np.repeat(np.arange(len(self.tile_names)), np.diff(self.entity_offsets))

    def tags_where(self, key: str, allowed: tuple[str, ...] | list[str] | None) -> np.ndarray:
        """Mask over tags: key is ``key`` and the value allowed (None = any value)."""
        kid = self.strings.key_index.get(key)
        if kid is None:
            return np.zeros(len(self.key_ids), dtype=bool)
        mask = self.key_ids == kid
        if allowed is not None:
            mask &= self.strings.allowed_values(allowed)[self.value_ids]
        return mask

    def entities_with(self, tag_mask: np.ndarray) -> np.ndarray:
        """Mask over entities: those with at least one tag in ``tag_mask``."""
        return np.bincount(self.entity_of_tag[tag_mask], minlength=len(self.kind)) > 0

    def tiles_with(self, tag_mask: np.ndarray) -> np.ndarray:
        """Indices of the tiles with at least one tag in ``tag_mask``."""
        return np.unique(self.tile_of_entity[self.entity_of_tag[tag_mask]])


def raw_tag_blocks(f, tiles_per_block: int | None = None) -> Iterator[RawTags]:
    """An open dataset's raw tags, :data:`TILES_PER_BLOCK` tiles at a time."""
    step = tiles_per_block or TILES_PER_BLOCK
    strings = TagStrings(f)
    n = len(f["tiles/name"])
    for start in range(0, n, step):
        yield RawTags(f, strings, start, min(n, start + step))
