#!/usr/bin/env bash
# The whole gjp pipeline on OSM extracts, in a fresh workspace: the OSM steps, the
# training dataset, the tag embeddings, the five masked downstream tasks with the TagCount
# and TagPool baselines probed on each, the score table, retrieval by category, and a kNN
# gallery.
#   usage: examples/pipeline.sh WORKSPACE EXTRACT.osm.pbf [EXTRACT…]
#   DESCRIPTIONS=tags.csv examples/pipeline.sh …   embeds 'key=value: description'
# Inside the workspace every step reads the previous step's default output.
set -euo pipefail
workspace=$1
shift
extracts=()
for f in "$@"; do extracts+=("$(realpath "$f")"); done
descriptions=${DESCRIPTIONS:+$(realpath "$DESCRIPTIONS")}
mkdir -p "$workspace"
cd "$workspace"
rm -rf tiles simplified boxed graphs dataset.h5 tasks tag-embeddings.parquet embeddings results gallery.html

gjp tile "${extracts[@]}" -o tiles/
gjp -q simplify
gjp -q bbox
gjp -q visibility
gjp info graphs/
gjp -q pack-h5
gjp -q embed-tags ${descriptions:+--descriptions "$descriptions"}
for task in traffic_signals bridge car_bridge building_count max_speed; do
    gjp -q mktask "$task" --masked
    gjp info "tasks/$task-masked"
    for model in tagcount tagpool; do
        gjp -q embed --model "$model" --task "tasks/$task-masked"
        gjp -q probe -e "embeddings/${model}__$task-masked.h5" --task "tasks/$task-masked" --head mlp
    done
done
for model in tagcount tagpool; do
    gjp -q embed --model "$model"
    gjp knn -e "embeddings/$model.h5" --eval > /dev/null
done
echo
gjp score
echo
query=$(gjp knn --list | sed -n '1~97p' | head -1)
gjp knn --query "$query" -k 8 --html gallery.html
echo "gallery: $workspace/gallery.html"
