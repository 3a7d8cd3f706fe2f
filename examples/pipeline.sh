#!/usr/bin/env bash
# The whole gjp pipeline on OSM extracts, in a fresh workspace: the OSM steps, the
# training dataset, the tag embeddings, the geometry encoder (pretrained on the dataset's
# own shapes), the five masked downstream tasks, a tiny GeoJEPA (tags and geometry)
# pretrained on their train groups, the TagCount and TagPool baselines and the GeoJEPA
# probed on each task, the score table, retrieval by category, a kNN gallery, and a
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
rm -rf tiles simplified boxed graphs dataset.h5 dataset.geometry-tokens.*.h5 tasks tag-embeddings.parquet embeddings \
       results gallery.html runs shapes-gallery.html

gjp tile "${extracts[@]}" -o tiles/
gjp -q simplify
gjp -q bbox
gjp -q visibility
gjp info graphs/
gjp -q pack-h5
gjp -q embed-tags ${descriptions:+--descriptions "$descriptions"}

# The geometry encoder (a tiny one: seconds on 2 cores), trained on the dataset's own
# entity graphs to predict their kind and shape descriptors. It comes before the tasks
# because GeoJEPA's geometry tokens go through it.
gjp -q pretrain --model polygnn --pretext osm --epochs 4 --max-entities 6000 -o runs/polygnn-osm
gjp info runs/polygnn-osm

tasks=(traffic_signals bridge car_bridge building_count max_speed)
for task in "${tasks[@]}"; do
    gjp -q mktask "$task" --masked
    gjp info "tasks/$task-masked"
done
# GeoJEPA pretrains on the train groups of tasks/splits.csv, which the tasks share, so its
# probes never see a test tile. A tiny model for 8 epochs (about a minute on 2 cores):
# enough to put it in the table beside the baselines, far from the thesis's model.
gjp -q pretrain --modalities T,G --preset tiny --geometry-encoder runs/polygnn-osm --epochs 8 \
    -o runs/geojepa-TG
gjp info runs/geojepa-TG
# Every model embeds what each task lets it see (the masked inputs) and gets the same head.
models=(tagcount tagpool runs/geojepa-TG)
for task in "${tasks[@]}"; do
    for model in "${models[@]}"; do
        gjp -q embed --model "$model" --task "tasks/$task-masked"
        gjp -q probe -e "embeddings/${model##*/}__$task-masked.h5" --task "tasks/$task-masked" --head mlp
    done
done
for model in "${models[@]}"; do
    gjp -q embed --model "$model"
    gjp knn -e "embeddings/${model##*/}.h5" --eval > /dev/null
done
echo
gjp score
echo
query=$(gjp knn --list | sed -n '1~97p' | head -1)
gjp knn --query "$query" -k 8 --html gallery.html
echo "gallery: $workspace/gallery.html"

# Every entity through the geometry encoder on its own; the first building's nearest
# shapes, drawn.
gjp -q embed --model polygnn --checkpoint runs/polygnn-osm
building=$(python -c '
import numpy as np
from gjp.dataset.format import open_dataset
from gjp.dataset.tags import raw_tag_blocks
from gjp.kinds import POLYGON
with open_dataset("dataset.h5") as f:
    t = next(raw_tag_blocks(f))  # the first block of tiles: its indices are those of the dataset
e = int(np.flatnonzero(t.entities_with(t.tags_where("building", None)) & (t.kind == POLYGON))[0])
tile = int(t.tile_of_entity[e])
print(f"{t.tile_names[tile]}:{e - t.entity_offsets[tile]}")')
gjp knn -e embeddings/polygnn.h5 --entity --query "$building" -k 8 --html shapes-gallery.html
echo "shapes gallery: $workspace/shapes-gallery.html"
