"""``gjp simplify``: the tile-local geometry (``local``), Douglas–Peucker-simplified with a
tolerance in metres.

The tolerance is converted to tile units per tile row (a z16 tile is 611.5·cos(lat) m
wide). Simplification preserves topology (GEOS' topology-preserving Douglas–Peucker):
rings never collapse or self-intersect, holes stay holes, and no part disappears.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import shapely

from gjp.errors import GjpError
from gjp.geoparquet import describe_local
from gjp.geometry.frame import lonlat_to_local, metres_to_units, tile_xy
from gjp.stages import StageReport, add_columns, run_stage
from gjp.ui import QUIET, Reporter

#: The paper's tolerance, ≈ 3e-6 degrees ≈ 0.3 m.
DEFAULT_TOLERANCE_M = 0.3


def simplify_table(table: pa.Table, zoom: int, tolerance_m: float = DEFAULT_TOLERANCE_M) -> pa.Table:
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    x, y = tile_xy(table.column("tile"))
    local = lonlat_to_local(geoms, x, y, zoom)
    if tolerance_m > 0:
        local = shapely.simplify(local, metres_to_units(tolerance_m, y, zoom), preserve_topology=True)
    table = add_columns(table, {"local": pa.array(shapely.to_wkb(local), pa.binary())})
    return describe_local(table, local)


def simplify(input_dir="tiles", output_dir="simplified", *, tolerance_m: float = DEFAULT_TOLERANCE_M,
             workers: int = 1, overwrite: bool = False, reporter: Reporter = QUIET) -> StageReport:
    """``gjp simplify``: add ``local`` to every group file of ``input_dir``."""
    if tolerance_m < 0:
        raise GjpError(f"--tolerance must be ≥ 0 metres, got {tolerance_m}")
    return run_stage("simplify", simplify_table, input_dir, output_dir, require=("tile", "geometry"),
                     params={"tolerance_m": tolerance_m}, workers=workers, overwrite=overwrite,
                     reporter=reporter)
