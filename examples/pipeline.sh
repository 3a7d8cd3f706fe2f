#!/usr/bin/env bash
# The gjp pipeline on one OSM extract, in a fresh workspace: the OSM steps, the training
# dataset, the five masked downstream tasks and the tag embeddings.
#   usage: examples/pipeline.sh EXTRACT.osm.pbf WORKSPACE [DESCRIPTIONS.csv]
# Every step reads the previous step's default output, so inside the workspace the
# commands need no paths at all.
set -euo pipefail
extract=$(realpath "$1")
workspace=$2
descriptions=${3:+$(realpath "$3")}
mkdir -p "$workspace"
cd "$workspace"
rm -rf tiles simplified boxed graphs dataset.h5 tasks tag-embeddings.parquet

gjp tile "$extract" -o tiles/
gjp simplify
gjp bbox
gjp visibility
gjp info graphs/
gjp pack-h5
for task in traffic_signals bridge car_bridge building_count max_speed; do
    gjp -q mktask "$task" --masked
    gjp info "tasks/$task-masked"
done
gjp embed-tags ${descriptions:+--descriptions "$descriptions"}
gjp info dataset.h5
gjp info tag-embeddings.parquet
