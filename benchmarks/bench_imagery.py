"""Chips per second from `gjp tile` on rasters, in one run.

The real North Dakota NAIP GeoTIFF (5 m, UTM 14N, 934×723 px, ~130 z16 tiles) warped to
224×224 chips, with 1 and 2 workers; and the import of the GeoJEPA authors' 160 pre-cut
NAIP chips.

    python benchmarks/bench_imagery.py [--data ../shared/data/images]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gjp.imagery.chips import import_chips, tile_rasters

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "images")
    args = parser.parse_args()
    tif = args.data / "geotiff" / "naip_nd_m_4709963_se_14_1_20200831_5m.tif"
    with tempfile.TemporaryDirectory() as tmp:
        tile_rasters([tif], Path(tmp) / "warm")  # GDAL caches, imports
        for workers in (1, 2):
            best = None
            for rep in range(3):
                start = time.perf_counter()
                report = tile_rasters([tif], Path(tmp) / f"w{workers}-{rep}", workers=workers)
                seconds = time.perf_counter() - start
                best = seconds if best is None else min(best, seconds)
            print(f"{tif.name}: {report.chips_written} chips with --workers {workers}: "
                  f"{best:.2f} s = {report.chips_written / best:.0f} chips/s")
        chips = sorted((args.data / "naip_z16_geojepa").glob("*.webp"))
        start = time.perf_counter()
        report = import_chips(chips, Path(tmp) / "imported")
        seconds = time.perf_counter() - start
        print(f"import of {report.chips_written} pre-cut WebP chips: {seconds:.2f} s = "
              f"{report.chips_written / seconds:.0f} chips/s")


if __name__ == "__main__":
    main()
