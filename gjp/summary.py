"""``gjp info``: what is in a tile-group file or directory, in a few lines."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gjp import grid
from gjp.errors import GjpError
from gjp.geoparquet import GROUP_FILE, check_group_file, list_group_files

_COLUMNS = ["tile", "osm_type", "kind", "tags"]


def summarize_tiles(path: str | Path) -> dict:
    """Counts over a directory of group files (or one file): tiles, entities by kind,
    tags, tile sizes, and the graph when ``gjp visibility`` has run."""
    path = Path(path)
    if not path.exists():
        raise GjpError(f"{path}: no such file or directory")
    if path.is_file():
        if not GROUP_FILE.match(path.name):
            raise GjpError(f"{path}: not a tile group file (14_X_Y.parquet)")
        files = [path]
    else:
        files = list_group_files(path)
    meta = check_group_file(files[0])
    zoom = int(meta["zoom"])
    names = pq.read_schema(files[0]).names
    graph = "visibility_edges" in names
    kinds, types, keys = Counter(), Counter(), Counter()
    per_tile: Counter = Counter()
    n_tags = vertices = geometry_edges = visibility_edges = multipart = 0
    rows = 0
    for f in files:
        check_group_file(f)
        t = pq.read_table(f, columns=_COLUMNS + (["vertex_part", "geometry_edges", "visibility_edges"] if graph else []))
        rows += t.num_rows
        kinds.update(t.column("kind").to_pylist())
        types.update(t.column("osm_type").to_pylist())
        per_tile.update(t.column("tile").to_pylist())
        tag_keys = t.column("tags").combine_chunks().keys
        n_tags += len(tag_keys)
        keys.update(tag_keys.to_pylist())
        if graph:
            vertices += len(pc.list_flatten(t.column("vertex_part")))
            geometry_edges += len(pc.list_flatten(t.column("geometry_edges")))
            visibility_edges += len(pc.list_flatten(t.column("visibility_edges")))
            multipart += sum(1 for parts in t.column("vertex_part").to_pylist() if len(set(parts)) > 1)
    counts = np.array(list(per_tile.values()))
    ys = np.array([grid.parse_tile_name(name)[2] for name in per_tile])
    widths = grid.tile_width_m(ys, zoom)
    summary = {
        "path": str(path), "zoom": zoom, "steps": [s["step"] for s in meta.get("steps", [])],
        "group_files": len(files), "tiles": len(per_tile), "entities": rows,
        "entities_per_tile": [int(counts.min()), float(np.median(counts)), int(counts.max())],
        "kinds": dict(sorted(kinds.items())), "osm_types": dict(sorted(types.items())),
        "tags": n_tags, "distinct_keys": len(keys), "top_keys": keys.most_common(8),
        "tile_width_m": [float(widths.min()), float(widths.max())],
    }
    if graph:
        summary.update(vertices=vertices, geometry_edges=geometry_edges,
                       visibility_edges=visibility_edges, multipart_entities=multipart)
    return summary


def format_summary(s: dict) -> str:
    lo, med, hi = s["entities_per_tile"]
    lines = [
        f"{s['path']}: gjp tile groups at zoom {s['zoom']} (steps: {', '.join(s['steps'])})",
        f"  {s['tiles']} tiles in {s['group_files']} group files; z{s['zoom']} tiles here are "
        f"{s['tile_width_m'][0]:.0f}–{s['tile_width_m'][1]:.0f} m wide",
        f"  {s['entities']} entities ({lo}/{med:g}/{hi} per tile, min/median/max): "
        + ", ".join(f"{n} {k}" for k, n in s["kinds"].items()),
        f"  {s['tags']} tags, {s['distinct_keys']} distinct keys; most common: "
        + ", ".join(f"{k} ({n})" for k, n in s["top_keys"]),
    ]
    if "vertices" in s:
        lines.append(f"  graphs: {s['vertices']} vertices, {s['geometry_edges']} geometry edges, "
                     f"{s['visibility_edges']} visibility edges in {s['multipart_entities']} multi-part entities")
    return "\n".join(lines)
