#!/usr/bin/env bash
# The image side: aerial rasters → per-tile chips → an image backbone → nearest tiles.
#   usage: examples/imagery_pipeline.sh RASTER_OR_DIR WORKSPACE
#   WEIGHTS=imagenet examples/imagery_pipeline.sh …   (downloads torchvision's weights; the
#                                                     default, none, is a seeded random ViT)
# With internet access, fetch NAIP for the tiles of an OSM extract first:
#   gjp fetch naip --tiles tiles/ --clip -o raw/naip/ && examples/imagery_pipeline.sh raw/naip/ .
set -euo pipefail
input=$(realpath "$1")
workspace=$2
weights=${WEIGHTS:-none}
mkdir -p "$workspace"
cd "$workspace"
rm -rf images chips.h5 embeddings/vit_b_16.h5 chips-gallery.html

gjp tile "$input" -o images/ --min-coverage 0.5
gjp info images/
gjp -q pack-h5 --images images/ --images-only -o chips.h5
gjp -q embed --model vit_b_16 -i chips.h5 --weights "$weights" -o embeddings/vit_b_16.h5
query=$(gjp knn -e embeddings/vit_b_16.h5 --list | sed -n 40p)
gjp knn -e embeddings/vit_b_16.h5 --query "$query" -k 8 --html chips-gallery.html
echo "gallery: $workspace/chips-gallery.html"
