#!/usr/bin/env bash
# The OSM half of the gjp pipeline on one extract, in a fresh workspace.
#   usage: examples/osm_pipeline.sh EXTRACT.osm.pbf WORKSPACE
# Every step reads the previous step's default output, so inside the workspace the
# commands need no paths at all.
set -euo pipefail
extract=$(realpath "$1")
workspace=$2
mkdir -p "$workspace"
cd "$workspace"
rm -rf tiles simplified boxed graphs

gjp tile "$extract" -o tiles/
gjp simplify
gjp bbox
gjp visibility
gjp info graphs/
