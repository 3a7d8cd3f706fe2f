"""``gjp merge``: one tile directory from the tile directories of overlapping regions.

Regional extracts overlap at their borders (Geofabrik cuts keep complete ways), and each
machine tiles its own region with ``gjp tile``. Merging unions their group files: for
every group file name found in any input, the rows of all inputs are read (one group at a
time, so memory is bounded by a group, not by the inputs), sorted as ``gjp tile`` sorts
them, reduced to one row per (tile, entity), filtered by entities per tile, and written
under the same name.

When several inputs hold the same (tile, entity), the copies are the same unless a region
lacks part of the entity: a relation whose members are partly outside the region, or a
way with nodes missing from a clipped extract. The copy kept is the most complete one,
which does not depend on the order of the inputs:

1. the most coordinates in the tile's clipped geometry (a copy with more members, or more
   of its nodes, has more of them);
2. then the smallest geometry WKB bytes, then the kind, then the tags (for copies from
   different snapshots of the data: any fixed order will do).

Tiles are filtered after the union, as ``gjp tile`` filters the tiles of one run, with the
inputs' ``--min-entities`` / ``--max-entities`` or stricter ones: a tile that an input
dropped cannot be restored, so for exact results tile the regions without limits
(``--min-entities 0 --max-entities`` large) and give the limits to ``gjp merge``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gjp import grid
from gjp.errors import GjpError
from gjp.geoparquet import (
    BASE_SCHEMA,
    FORMAT,
    FORMAT_VERSION,
    check_group_file,
    list_group_files,
    read_group_file,
    write_group_file,
)
from gjp.io import atomic_directory, check_output_free, provenance
from gjp.kinds import OSM_TYPES
from gjp.parallel import map_jobs
from gjp.ui import QUIET, Reporter

#: Steps whose output ``gjp merge`` takes: tile group files with the columns of ``gjp tile``.
MERGEABLE_STEPS = ("tile", "merge")
#: What inputs must agree on besides the zoom (the ``params`` of their ``tile`` or ``merge``
#: step); the OSM files or directories they came from differ, by design.
TILING_PARAMS = ("min_entities", "max_entities", "tag_filter")


@dataclass
class MergeReport:
    inputs: int = 0
    groups_written: int = 0
    groups_from_one_input: int = 0  # group files that only one input has
    rows_read: int = 0
    duplicates: int = 0       # rows dropped: the same (tile, entity) from several inputs
    differing: int = 0        # (tile, entity) whose copies differ: the most complete kept
    tiles_kept: int = 0
    tiles_too_few: int = 0
    tiles_too_many: int = 0
    rows_written: int = 0

    def summary(self) -> str:
        lines = [
            f"merged {self.inputs} tile directories: {self.tiles_kept} tiles in {self.groups_written} group "
            f"files ({self.rows_written} rows; {self.groups_from_one_input} group files from one input only)",
            f"  {self.duplicates} duplicate rows from overlapping inputs dropped "
            f"({self.differing} entities in a tile had copies that differ: the most complete kept)",
        ]
        if self.tiles_too_few or self.tiles_too_many:
            lines.append(f"  dropped {self.tiles_too_few} tiles with too few and {self.tiles_too_many} with too "
                         "many entities")
        return "\n".join(lines)


def merge_tiles(inputs: list[str | Path], output: str | Path, *, min_entities: int | None = None,
                max_entities: int | None = None, workers: int = 1, overwrite: bool = False,
                reporter: Reporter = QUIET) -> MergeReport:
    """Merge the tile directories ``inputs`` (outputs of ``gjp tile`` or ``gjp merge`` of one
    zoom and one set of tiling parameters) into ``output`` (see the module doc).
    ``min_entities`` / ``max_entities`` default to the inputs' and may only be stricter."""
    if not inputs:
        raise GjpError("nothing to merge: give the tile directories of `gjp tile` (e.g. tiles-a/ tiles-b/)")
    check_output_free(output, overwrite, directory=True)
    dirs = sorted((Path(p) for p in inputs), key=str)  # the output does not depend on their order
    for a, b in zip(dirs, dirs[1:]):
        if a == b:
            raise GjpError(f"{a}: given twice")

    expected: dict | None = None
    first: Path | None = None
    groups: dict[str, list[Path]] = {}
    merged_steps = []
    for d in dirs:
        files = list_group_files(d)
        meta = check_group_file(files[0])
        tiling = _tiling_of(files[0], meta)
        if expected is None:
            expected, first = tiling, d
        elif tiling != expected:
            raise GjpError(f"{d}: {_difference(tiling, expected, first)}; merge only the tiles of one zoom "
                           "and one set of tiling parameters")
        merged_steps.append(_without_tag_filter(meta.get("steps", [])))
        for f in files:
            groups.setdefault(f.name, []).append(f)

    min_entities = expected["min_entities"] if min_entities is None else min_entities
    max_entities = expected["max_entities"] if max_entities is None else max_entities
    if min_entities < expected["min_entities"]:
        raise GjpError(f"--min-entities {min_entities} is below the inputs' {expected['min_entities']}: the tiles "
                       f"they dropped cannot come back (tile the regions with --min-entities {min_entities})")
    if max_entities > expected["max_entities"]:
        raise GjpError(f"--max-entities {max_entities} is above the inputs' {expected['max_entities']}: the tiles "
                       f"they dropped cannot come back (tile the regions with --max-entities {max_entities})")
    if min_entities > max_entities:
        raise GjpError(f"--min-entities {min_entities} is larger than --max-entities {max_entities}")

    zoom = expected["zoom"]
    params = {"zoom": zoom, "min_entities": min_entities, "max_entities": max_entities,
              "tag_filter": expected["tag_filter"], "inputs": [str(d) for d in dirs], "merged": merged_steps}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "zoom": zoom,
            "steps": [provenance("merge", params)]}
    report = MergeReport(inputs=len(dirs))
    with atomic_directory(output, overwrite) as staging:
        jobs = [(name, files, staging, expected, min_entities, max_entities, meta)
                for name, files in sorted(groups.items())]
        bar = reporter.progress(total=len(jobs), desc="merging groups", unit=" group")
        for counts in map_jobs(_merge_group, jobs, workers, bar):
            for key, value in counts.items():
                setattr(report, key, getattr(report, key) + value)
        bar.close()
        if report.groups_written == 0:
            raise GjpError(f"{', '.join(map(str, dirs))}: no merged tile has between {min_entities} and "
                           f"{max_entities} entities; nothing to write")
    return report


def _tiling_of(path: Path, meta: dict) -> dict:
    """The zoom and tiling parameters a group file records; errors for files that are not
    the output of ``gjp tile`` (or ``gjp merge``)."""
    steps = meta.get("steps") or [{}]
    last = steps[-1].get("step", "?") if isinstance(steps[-1], dict) else "?"
    if last not in MERGEABLE_STEPS:
        raise GjpError(f"{path}: made by `gjp {last}`; merge the outputs of `gjp tile`, then run "
                       "simplify, bbox and visibility on the merged tiles")
    params = steps[-1].get("params") or {}
    missing = [k for k in TILING_PARAMS if k not in params]
    if missing or not isinstance(meta.get("zoom"), int):
        raise GjpError(f"{path}: damaged tile group metadata (no {', '.join(missing or ['zoom'])})")
    return {"zoom": meta["zoom"], **{k: params[k] for k in TILING_PARAMS}}


def _without_tag_filter(steps: list) -> list:
    """An input's provenance, without the tag filter that every input shares (recorded once
    in the merge's own parameters, not once per input)."""
    out = []
    for step in steps:
        if isinstance(step, dict) and isinstance(step.get("params"), dict):
            params = {k: v for k, v in step["params"].items() if k != "tag_filter"}
            if isinstance(params.get("merged"), list):
                params["merged"] = [_without_tag_filter(s) for s in params["merged"]]
            step = {**step, "params": params}
        out.append(step)
    return out


def _difference(tiling: dict, expected: dict, first: Path) -> str:
    for key in ("zoom", *TILING_PARAMS):
        if tiling[key] != expected[key]:
            if key == "tag_filter":
                return f"tiled with another tag filter than {first}"
            option = "zoom" if key == "zoom" else key.replace("_", "-")
            return f"tiled with --{option} {tiling[key]}, but {first} with --{option} {expected[key]}"
    return f"tiled otherwise than {first}"


# --------------------------------------------------------------------------- one group

_SORTED_KEYS = ("ty", "tx", "otype", "oid")


def _merge_group(job) -> dict[str, int]:
    """Read one group file name from every input that has it; write the merged file."""
    name, files, out_dir, expected, min_entities, max_entities, meta = job
    tables = []
    for path in files:
        table, file_meta = read_group_file(path)
        if _tiling_of(path, file_meta) != expected:
            raise GjpError(f"{path}: tiled with other parameters than the rest of its directory")
        missing = [c for c in BASE_SCHEMA.names if c not in table.column_names]
        if missing:
            raise GjpError(f"{path}: not a tile group file of `gjp tile` (no column {', '.join(missing)})")
        extra = [c for c in table.column_names if c not in BASE_SCHEMA.names]
        if extra:
            raise GjpError(f"{path}: has the columns of later steps ({', '.join(extra)}); merge the outputs "
                           "of `gjp tile`, then run simplify, bbox and visibility on the merged tiles")
        try:
            # no schema metadata: the geo metadata is made anew for the merged rows
            tables.append(table.select(BASE_SCHEMA.names).cast(BASE_SCHEMA))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise GjpError(f"{path}: a column has an unexpected type ({err})") from None
    t = pa.concat_tables(tables)
    source = np.repeat(np.arange(len(files)), [x.num_rows for x in tables])
    counts = {"rows_read": t.num_rows, "groups_from_one_input": int(len(files) == 1)}
    if t.num_rows == 0:  # gjp tile writes no empty files, but an empty file is no error
        return counts

    keys = _sort_keys(t, name, files, source, expected["zoom"])
    order = np.lexsort([keys[k] for k in reversed(_SORTED_KEYS)])
    sorted_keys = np.column_stack([keys[k][order] for k in _SORTED_KEYS])
    starts = np.flatnonzero(np.r_[True, (sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)])
    lengths = np.diff(np.r_[starts, len(order)])
    keep = order[starts]
    counts["duplicates"] = int(len(order) - len(starts))
    counts["differing"] = 0
    for i in np.flatnonzero(lengths > 1):
        copies = order[starts[i]:starts[i] + lengths[i]]
        best, differ = _most_complete(t, copies, files, source)
        keep[i] = best
        counts["differing"] += differ

    # entities per tile, after the union (rows are sorted by tile)
    tile_of_row = sorted_keys[starts][:, :2]
    tile_start = np.flatnonzero(np.r_[True, (tile_of_row[1:] != tile_of_row[:-1]).any(axis=1)])
    tile_len = np.diff(np.r_[tile_start, len(keep)])
    too_few, too_many = tile_len < min_entities, tile_len > max_entities
    ok = ~too_few & ~too_many
    counts.update(tiles_too_few=int(too_few.sum()), tiles_too_many=int(too_many.sum()),
                  tiles_kept=int(ok.sum()), rows_written=0, groups_written=0)
    keep = keep[np.repeat(ok, tile_len)]
    if len(keep) == 0:
        return counts
    write_group_file(t.take(pa.array(keep)), out_dir / name, meta)
    counts.update(rows_written=len(keep), groups_written=1)
    return counts


def _sort_keys(t: pa.Table, name: str, files: list[Path], source: np.ndarray, zoom: int) -> dict[str, np.ndarray]:
    """The sort keys of ``gjp tile`` (tile north to south and west to east, OSM type, OSM
    id) as integer arrays, checking that every row belongs in this group file."""
    def where(row_mask: np.ndarray) -> Path:
        return files[int(source[np.flatnonzero(row_mask)[0]])]

    for column in ("tile", "osm_type", "osm_id"):
        nulls = t.column(column).is_null().to_numpy(zero_copy_only=False)
        if nulls.any():
            raise GjpError(f"{where(nulls)}: damaged tile group file (a null {column})")
    tiles = t.column("tile")
    names = pc.unique(tiles).to_pylist()
    xy = np.zeros((len(names), 2), dtype=np.int64)
    group = name.removesuffix(".parquet")
    for i, tile in enumerate(names):
        try:
            z, x, y = grid.parse_tile_name(tile)
        except ValueError as err:
            z = x = y = None
            problem = str(err)
        else:
            problem = None if z == zoom and grid.group_name(z, x, y) == group else \
                f"tile {tile} does not belong in group {group} at zoom {zoom}"
        if problem:
            bad = pc.equal(tiles, tile).to_numpy(zero_copy_only=False)
            raise GjpError(f"{where(bad)}: damaged tile group file ({problem})")
        xy[i] = x, y
    tile_idx = pc.index_in(tiles, value_set=pa.array(names, pa.string())).to_numpy(zero_copy_only=False)
    otype = pc.index_in(t.column("osm_type"), value_set=pa.array(OSM_TYPES))
    unknown = otype.is_null().to_numpy(zero_copy_only=False)
    if unknown.any():
        raise GjpError(f"{where(unknown)}: damaged tile group file (an osm_type that is not node, way or relation)")
    return {"tx": xy[tile_idx, 0], "ty": xy[tile_idx, 1], "otype": otype.to_numpy().astype(np.int64),
            "oid": t.column("osm_id").to_numpy()}


def _most_complete(t: pa.Table, copies: np.ndarray, files: list[Path], source: np.ndarray) -> tuple[int, int]:
    """The row to keep of several copies of one (tile, entity), and whether they differ."""
    import shapely

    rows = t.take(pa.array(copies))
    wkb = rows.column("geometry").to_pylist()
    try:
        n_coords = shapely.get_num_coordinates(shapely.from_wkb(wkb))
    except shapely.errors.GEOSException as err:
        raise GjpError(f"{', '.join(str(files[s]) for s in sorted(set(source[copies])))}: a geometry is not "
                       f"valid WKB ({err})") from None
    kinds = rows.column("kind").to_pylist()
    tags = [json.dumps(m) for m in rows.column("tags").to_pylist()]
    ranked = sorted(range(len(copies)), key=lambda i: (-int(n_coords[i]), wkb[i], kinds[i], tags[i]))
    best = ranked[0]
    differ = any((wkb[i], kinds[i], tags[i]) != (wkb[best], kinds[best], tags[best]) for i in ranked[1:])
    return int(copies[best]), int(differ)

