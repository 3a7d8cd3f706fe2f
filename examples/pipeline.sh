#!/usr/bin/env bash
# The whole gjp pipeline on OSM extracts, in a fresh workspace: the OSM steps, the
# training dataset, the tag embeddings, the five masked downstream tasks with the TagCount
# and TagPool baselines probed on each, the score table, retrieval by category, a kNN
# gallery, and the geometry encoder: pretrained on the dataset's own shapes, then a
# gallery of the entities shaped most like a building.
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
rm -rf tiles simplified boxed graphs dataset.h5 tasks tag-embeddings.parquet embeddings results gallery.html \
       runs shapes-gallery.html

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

# The geometry encoder (a tiny one: about half a minute on 2 cores), trained on the
# dataset's own entity graphs to predict their kind and shape descriptors, then every
# entity embedded; the first building's nearest shapes, drawn.
gjp -q pretrain --model polygnn --pretext osm --epochs 4 --max-entities 6000 -o runs/polygnn-osm
gjp info runs/polygnn-osm
gjp -q embed --model polygnn --checkpoint runs/polygnn-osm
building=$(python -c '
import numpy as np
from gjp.dataset.tags import RawTags
from gjp.kinds import POLYGON
t = RawTags("dataset.h5")
e = int(np.flatnonzero(t.entities_with(t.tags_where("building", None)) & (t.kind == POLYGON))[0])
tile = int(t.tile_of_entity[e])
print(f"{t.tile_names[tile]}:{e - t.entity_offsets[tile]}")')
gjp knn -e embeddings/polygnn.h5 --entity --query "$building" -k 8 --html shapes-gallery.html
echo "shapes gallery: $workspace/shapes-gallery.html"
