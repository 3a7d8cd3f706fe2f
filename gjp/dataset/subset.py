"""A dataset file made from part of another: some tiles, and some of their tags (the
masked inputs of a task). Entities left without tags are dropped with their graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gjp.dataset.format import Vocabulary, open_dataset, write_dataset
from gjp.dataset.graphs import gather
from gjp.io import command_line
from gjp.ui import QUIET, Reporter

_ENTITY_ARRAYS = ("entities/kind", "entities/osm_type", "entities/osm_id", "entities/min_box",
                  "entities/min_box_shape")
_TAG_ARRAYS = ("entities/tag_ids", "entities/tag_key_ids", "entities/tag_value_ids")
_GRAPH_CSR = (("graph/node_offsets", ("graph/nodes", "graph/node_part")),
              ("graph/geometry_edge_offsets", ("graph/geometry_edges",)),
              ("graph/visibility_edge_offsets", ("graph/visibility_edges",)))


class _SourceImages:
    """Chips copied from the source dataset, one at a time."""

    def __init__(self, f, tiles: np.ndarray):
        self.pixels, self.valid = f["images/pixels"], f["images/valid"]
        self.size = self.pixels.shape[1]
        self.rows = tiles
        self.has = f["images/has_image"][()][tiles]

    def read(self, i: int):
        row = int(self.rows[i])
        return self.pixels[row], self.valid[row]


def subset_dataset(source: Path, output: Path, tiles: np.ndarray, keep_tag: np.ndarray, vocab: Vocabulary,
                   extra_attrs: dict, reporter: Reporter = QUIET) -> int:
    """Write the tiles ``tiles`` (sorted indices) of ``source`` to ``output``, keeping the
    tags where ``keep_tag`` (over all tags of the source). Returns the number of entities
    dropped for having no tag left."""
    tiles = np.asarray(tiles, dtype=np.int64)
    with open_dataset(source) as f:
        entity_offsets = f["tiles/entity_offsets"][()]
        tag_offsets = f["entities/tag_offsets"][()]
        entities, entity_offsets_new = gather(entity_offsets, tiles)
        entity_of_tag = np.repeat(np.arange(len(tag_offsets) - 1), np.diff(tag_offsets))
        kept_tags_per_entity = np.bincount(entity_of_tag[keep_tag], minlength=len(tag_offsets) - 1)
        has_tags = kept_tags_per_entity[entities] > 0
        dropped = int((~has_tags).sum())
        entities = entities[has_tags]
        tile_of_entity = np.repeat(np.arange(len(tiles)), np.diff(entity_offsets_new))[has_tags]
        entity_offsets_new = np.zeros(len(tiles) + 1, dtype=np.int64)
        np.cumsum(np.bincount(tile_of_entity, minlength=len(tiles)), out=entity_offsets_new[1:])

        arrays = {"tiles/name": f["tiles/name"][()][tiles], "tiles/zxy": f["tiles/zxy"][()][tiles],
                  "tiles/group": f["tiles/group"][()][tiles], "tiles/entity_offsets": entity_offsets_new}
        for name in _ENTITY_ARRAYS:
            arrays[name] = f[name][()][entities]
        tag_index, per_entity = gather(tag_offsets, entities)
        owner = np.repeat(np.arange(len(entities)), np.diff(per_entity))
        keep = keep_tag[tag_index]
        tag_index, owner = tag_index[keep], owner[keep]
        new_tag_offsets = np.zeros(len(entities) + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=len(entities)), out=new_tag_offsets[1:])
        arrays["entities/tag_offsets"] = new_tag_offsets
        for name in _TAG_ARRAYS:
            arrays[name] = f[name][()][tag_index]
        for offsets_name, item_names in _GRAPH_CSR:
            index, new_offsets = gather(f[offsets_name][()], entities)
            arrays[offsets_name] = new_offsets
            for item in item_names:
                arrays[item] = f[item][()][index]
        arrays["strings/keys"] = f["strings/keys"][()]
        arrays["strings/values"] = f["strings/values"][()]
        attrs = {k: f.attrs[k] for k in f.attrs}
        attrs.update(extra_attrs)
        attrs["command"] = command_line()
        attrs["subset_of"] = json.dumps({"dataset": str(source), "tiles": int(len(tiles))})
        images = _SourceImages(f, tiles) if "images" in f else None
        write_dataset(output, arrays, vocab, attrs, images, reporter)
    return dropped
