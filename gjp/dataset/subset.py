"""A dataset file made from part of another: some tiles, and some of their tags (the
masked inputs of a task). Entities left without tags are dropped with their graphs.

Streamed a block of source tiles at a time (:func:`gjp.dataset.format.read_tiles` →
:func:`select` → :class:`gjp.dataset.format.DatasetWriter`), so memory does not grow
with the dataset."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gjp.dataset import tags as raw_tags
from gjp.dataset.format import DatasetWriter, Vocabulary, decode, image_size, open_dataset, read_tiles
from gjp.dataset.graphs import gather
from gjp.io import command_line, hdf5_output
from gjp.ui import QUIET, Reporter

_ENTITY_ARRAYS = ("entities/kind", "entities/osm_type", "entities/osm_id", "entities/min_box",
                  "entities/min_box_shape")
_TAG_ARRAYS = ("entities/tag_ids", "entities/tag_key_ids", "entities/tag_value_ids")
_GRAPH_CSR = (("graph/node_offsets", ("graph/nodes", "graph/node_part")),
              ("graph/geometry_edge_offsets", ("graph/geometry_edges",)),
              ("graph/visibility_edge_offsets", ("graph/visibility_edges",)))

#: ``(key ids, value ids) -> mask`` over a block's tags: which to keep.
KeepTags = Callable[[np.ndarray, np.ndarray], np.ndarray]


def select(block: dict[str, np.ndarray], tiles: np.ndarray, keep_tag: np.ndarray) -> tuple[dict, int]:
    """The tiles ``tiles`` (sorted, local to the block) of a block, keeping the tags where
    ``keep_tag`` (over the block's tags) and dropping entities left without any. Returns
    the new block and the number of entities dropped."""
    entity_offsets, tag_offsets = block["tiles/entity_offsets"], block["entities/tag_offsets"]
    entities, per_tile = gather(entity_offsets, tiles)
    entity_of_tag = np.repeat(np.arange(len(tag_offsets) - 1), np.diff(tag_offsets))
    kept_tags_per_entity = np.bincount(entity_of_tag[keep_tag], minlength=len(tag_offsets) - 1)
    has_tags = kept_tags_per_entity[entities] > 0
    dropped = int((~has_tags).sum())
    entities = entities[has_tags]
    tile_of_entity = np.repeat(np.arange(len(tiles)), np.diff(per_tile))[has_tags]
    new_entity_offsets = np.zeros(len(tiles) + 1, dtype=np.int64)
    np.cumsum(np.bincount(tile_of_entity, minlength=len(tiles)), out=new_entity_offsets[1:])

    out = {name: block[name][tiles] for name in ("tiles/name", "tiles/zxy", "tiles/group")}
    out["tiles/entity_offsets"] = new_entity_offsets
    for name in _ENTITY_ARRAYS:
        out[name] = block[name][entities]
    tag_index, per_entity = gather(tag_offsets, entities)
    owner = np.repeat(np.arange(len(entities)), np.diff(per_entity))
    keep = keep_tag[tag_index]
    tag_index, owner = tag_index[keep], owner[keep]
    new_tag_offsets = np.zeros(len(entities) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=len(entities)), out=new_tag_offsets[1:])
    out["entities/tag_offsets"] = new_tag_offsets
    for name in _TAG_ARRAYS:
        out[name] = block[name][tag_index]
    for offsets_name, item_names in _GRAPH_CSR:
        index, new_offsets = gather(block[offsets_name], entities)
        out[offsets_name] = new_offsets
        for item in item_names:
            out[item] = block[item][index]
    return out, dropped


def subset_dataset(source: Path, output: Path, tiles: np.ndarray, keep_tags: KeepTags, vocab: Vocabulary,
                   extra_attrs: dict, reporter: Reporter = QUIET,
                   tiles_per_block: int | None = None) -> tuple[int, int]:
    """Write the tiles ``tiles`` (sorted indices) of ``source`` to ``output``, keeping the
    tags ``keep_tags`` keeps. Returns the number of tags removed (over every tile of the
    source) and of entities dropped for having no tag left."""
    tiles = np.asarray(tiles, dtype=np.int64)
    step = tiles_per_block or raw_tags.TILES_PER_BLOCK
    removed = dropped = 0
    with open_dataset(source) as f, hdf5_output(output, track_order=True) as out:
        n = len(f["tiles/name"])
        writer = DatasetWriter(out, int(f.attrs["zoom"]), image_size=image_size(f))
        bar = reporter.progress(total=len(tiles), desc="writing the masked inputs", unit=" tile")
        for start in range(0, n, step):
            stop = min(n, start + step)
            chosen = tiles[np.searchsorted(tiles, start):np.searchsorted(tiles, stop)]
            block = read_tiles(f, start, stop)
            keep_tag = keep_tags(block["entities/tag_key_ids"], block["entities/tag_value_ids"])
            removed += int((~keep_tag).sum())
            part, lost = select(block, chosen - start, keep_tag) if len(chosen) else (None, 0)
            # dropped before the next block is read, so one block is held at a time, not two
            del block, keep_tag
            if part is None:
                continue
            dropped += lost
            images = None
            if "images" in f:
                has_image = f["images/has_image"][start:stop][chosen - start]
                images = [(f["images/pixels"][t], f["images/valid"][t]) if has else None
                          for t, has in zip(chosen, has_image)]
            writer.append(part, images)
            del part, images
            bar.update(len(chosen))
        bar.close()
        attrs = {k: f.attrs[k] for k in f.attrs}
        attrs.update(extra_attrs)
        attrs["command"] = command_line()
        attrs["subset_of"] = json.dumps({"dataset": str(source), "tiles": int(len(tiles))})
        writer.finish(vocab, decode(f["strings/keys"][()]), decode(f["strings/values"][()]), attrs)
    return removed, dropped
