#!/usr/bin/env bash
# Aerial imagery to per-tile chips, in a workspace.
#   usage: examples/imagery_pipeline.sh RASTER_OR_DIR WORKSPACE
# With internet access, fetch NAIP for the tiles of an OSM extract first:
#   gjp fetch naip --tiles tiles/ --clip -o raw/naip/ && examples/imagery_pipeline.sh raw/naip/ .
set -euo pipefail
input=$(realpath "$1")
workspace=$2
mkdir -p "$workspace"
cd "$workspace"
rm -rf images

gjp tile "$input" -o images/ --min-coverage 0.5
python - <<'PY'
import pyarrow.parquet as pq
rows = pq.read_table("images/index.parquet").to_pylist()
full = sum(r["valid_fraction"] == 1.0 for r in rows)
print(f"images/: {len(rows)} chips of {rows[0]['resolution_m']:.2f} m/px from {', '.join(sorted({s for r in rows for s in r['sources']}))}; "
      f"{full} fully covered; acquired {', '.join(sorted({r['acquired'] or '?' for r in rows}))}")
PY
