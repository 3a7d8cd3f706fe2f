"""Tile-group files: GeoParquet 1.1, one row per (entity, tile), one file per group tile.

Every OSM step reads and writes this one format; each step only adds columns (see
``docs/FORMATS.md``). The ``geo`` metadata declares ``geometry`` (lon/lat, OGC:CRS84, with a
``bbox`` covering column) and, once ``gjp simplify`` has run, ``local`` (tile units, no CRS).
The ``gjp`` metadata records the format version, the zoom and the provenance of every step.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gjp import grid
from gjp.errors import GjpError
from gjp.io import json_metadata

FORMAT = "gjp-tiles"
FORMAT_VERSION = 1
GROUP_FILE = re.compile(rf"^{grid.TILE_NAME}\.parquet$")

BBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")
#: Low-cardinality columns worth dictionary encoding (the rest it only slows down).
_DICTIONARY_COLUMNS = ("tile", "group", "osm_type", "kind", "tags.key_value.key", "tags.key_value.value")
#: Columns whose min/max statistics let readers skip data (the bbox covering above all).
_STATISTICS_COLUMNS = ("tile", "group", "osm_type", "osm_id", "kind", *(f"bbox.{f}" for f in BBOX_FIELDS))
#: The columns ``gjp tile`` writes, in order.
BASE_SCHEMA = pa.schema([
    ("tile", pa.string()),
    ("group", pa.string()),
    ("osm_type", pa.string()),
    ("osm_id", pa.int64()),
    ("kind", pa.string()),
    ("tags", pa.map_(pa.string(), pa.string())),
    ("geometry", pa.binary()),
    ("bbox", pa.struct([(f, pa.float64()) for f in BBOX_FIELDS])),
])

@lru_cache(maxsize=1)
def _crs84_projjson() -> dict:
    import pyproj

    return pyproj.CRS("OGC:CRS84").to_json_dict()


def geo_metadata(table: pa.Table) -> dict:
    """The GeoParquet ``geo`` metadata of a table. Columns already described in the table's
    own metadata (read from an earlier step's file) are reused: steps only add columns.
    Types come from the WKB headers and the extent from the ``bbox`` covering column, so
    no geometry is decoded."""
    known = json.loads((table.schema.metadata or {}).get(b"geo", b"{}")).get("columns", {})
    columns = {}
    if "geometry" in known:
        columns["geometry"] = known["geometry"]
    else:
        columns["geometry"] = {
            "encoding": "WKB",
            "geometry_types": geometry_type_names(table.column("geometry")),
            "crs": _crs84_projjson(),
            "bbox": _extent(table),
            "covering": {"bbox": {k: ["bbox", k] for k in BBOX_FIELDS}},
        }
    if "local" in known:
        columns["local"] = known["local"]
    elif "local" in table.column_names:
        # tile units (x east, y north, 1.0 = tile width): an engineering frame, so no CRS
        columns["local"] = {"encoding": "WKB", "geometry_types": geometry_type_names(table.column("local")),
                            "crs": None}
    return {"version": "1.1.0", "primary_column": "geometry", "columns": columns}


#: WKB base type codes → GeoParquet's ``geometry_types`` names.
WKB_TYPE_NAMES = {1: "Point", 2: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
                  6: "MultiPolygon", 7: "GeometryCollection"}


def geometry_type_names(column: pa.Array | pa.ChunkedArray) -> list[str]:
    """The sorted distinct type names of a WKB column, from each row's 5-byte header (byte
    order, type code with its ISO or EWKB dimension flags): no geometry is decoded, and
    this format module needs none of the geometry kernels."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if column.null_count:
        raise GjpError("a geometry column holds nulls")
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        raise GjpError(f"a geometry column has type {column.type}, not WKB binary")
    if len(column) == 0:
        return []
    _, offsets_buffer, data_buffer = column.buffers()
    width = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, dtype=width)[column.offset:column.offset + len(column) + 1]
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(data_buffer or b"", dtype=np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    if (ends - starts < 5).any():
        raise GjpError("a geometry is not valid WKB (truncated)")
    order = data[starts]
    if (order > 1).any():
        raise GjpError("a geometry is not valid WKB (bad byte order)")
    raw = data[starts[:, None] + np.arange(1, 5)].astype(np.uint32)
    little = raw[:, 0] | raw[:, 1] << 8 | raw[:, 2] << 16 | raw[:, 3] << 24
    big = raw[:, 3] | raw[:, 2] << 8 | raw[:, 1] << 16 | raw[:, 0] << 24
    code = np.where(order == 1, little, big) & 0x0FFFFFFF  # without the EWKB Z/M/SRID flags
    base, iso = code % 1000, code // 1000
    if ((base < 1) | (base > 7) | (iso > 3)).any():
        raise GjpError("a geometry is not valid WKB (unknown geometry type)")
    return [WKB_TYPE_NAMES[int(c)] for c in np.unique(base)]


def _extent(table: pa.Table) -> list[float]:
    if table.num_rows == 0:
        return [0.0, 0.0, 0.0, 0.0]
    bbox = table.column("bbox")
    lows = [pc.min(pc.struct_field(bbox, f)).as_py() for f in ("xmin", "ymin")]
    highs = [pc.max(pc.struct_field(bbox, f)).as_py() for f in ("xmax", "ymax")]
    return [float(v) for v in lows + highs]


def write_group_file(table: pa.Table, path: Path, gjp_meta: dict) -> None:
    """Write one group file with its ``geo`` and ``gjp`` metadata."""
    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = json.dumps(geo_metadata(table), sort_keys=True).encode()
    meta[b"gjp"] = json.dumps(gjp_meta, sort_keys=True).encode()
    names = set(table.schema.names)
    # Encoded in memory and written with one call: Parquet's writer makes a write and a
    # seek per page and page header, some 90 system calls for a small 20-column file.
    encoded = pa.BufferOutputStream()
    # snappy: the fastest to write and read for these small files, and every GeoParquet
    # reader (GDAL/QGIS builds included) has it
    pq.write_table(table.replace_schema_metadata(meta), encoded, compression="snappy",
                   use_dictionary=[c for c in _DICTIONARY_COLUMNS if c.split(".")[0] in names],
                   write_statistics=[c for c in _STATISTICS_COLUMNS if c.split(".")[0] in names])
    with open(path, "wb") as out:
        out.write(encoded.getvalue())


def list_group_files(directory: str | Path) -> list[Path]:
    """The group files of a tiles/… directory, sorted; clear errors when there are none."""
    directory = Path(directory)
    if not directory.exists():
        raise GjpError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise GjpError(f"{directory}: not a directory")
    try:
        names = sorted(p for p in directory.iterdir() if GROUP_FILE.match(p.name))
    except OSError as err:
        raise GjpError(f"{directory}: cannot read directory ({err.strerror or err})") from err
    if not names:
        raise GjpError(f"{directory}: no tile group files (14_X_Y.parquet) in it")
    return names


def check_group_file(path: Path, require: tuple[str, ...] = ()) -> dict:
    """Check a group file's format, version and columns from its footer alone; return its
    ``gjp`` metadata."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as err:
        raise GjpError(f"{path}: not a readable Parquet file ({err})") from err
    return _check_schema(path, schema, require)


def _check_schema(path: Path, schema: pa.Schema, require: tuple[str, ...]) -> dict:
    raw = (schema.metadata or {}).get(b"gjp")
    if raw is None:
        raise GjpError(f"{path}: not a gjp tile group file (no gjp metadata)")
    meta = json_metadata(raw, path, "tile group")
    if meta.get("format") != FORMAT:
        raise GjpError(f"{path}: not a gjp tile group file (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise GjpError(
            f"{path}: tile format version {meta.get('format_version')} but this gjp reads "
            f"version {FORMAT_VERSION}; re-run the pipeline from `gjp tile`")
    missing = [c for c in require if c not in schema.names]
    if missing:
        last = meta.get("steps", [{}])[-1].get("step", "?")
        raise GjpError(f"{path}: has no column {', '.join(missing)} (made by `gjp {last}`; "
                       "run the steps in order: tile, simplify, bbox, visibility)")
    return meta


def read_group_file(path: Path, require: tuple[str, ...] = (), columns: list[str] | None = None
                    ) -> tuple[pa.Table, dict]:
    """Read a group file (all its columns, or ``columns``) and its ``gjp`` metadata,
    checking format and required columns."""
    try:
        # Small files, decoded whole: one read of all the bytes (a read per column chunk
        # costs a system call each), no thread pool hand-off (the steps already run files
        # in parallel).
        file = pq.ParquetFile(pa.BufferReader(Path(path).read_bytes()), pre_buffer=False)
        meta = _check_schema(path, file.schema_arrow, require)
        table = file.read(columns=columns, use_threads=False)
    except (OSError, pa.ArrowException) as err:
        raise GjpError(f"{path}: not a readable Parquet file ({err})") from err
    return table, meta
