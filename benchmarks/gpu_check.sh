#!/usr/bin/env bash
# The GPU checks, as one short script for a machine with a CUDA GPU (run from the repository
# root after `make install`; about 5 minutes): the CUDA/bf16 paths of pretraining and
# embedding, torch.compile, and the pretraining benchmark at the `base` size in bf16.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Everything it prints goes to OUT_DIR/gpu_check.log too; record it in docs/PERFORMANCE.md.
set -euo pipefail
out=${1:-${OUT:-/tmp/gjp-gpu}}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
bin=$(pwd)/.venv/bin
export PATH="$bin:$PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'

ws=$(mktemp -d)
# a real workspace: Liechtenstein through the pipeline, a task for the splits, a geometry encoder
gjp -q tile examples/data/li_liechtenstein_2015-07.osm.pbf -o "$ws/tiles"
(cd "$ws" && gjp -q simplify && gjp -q bbox && gjp -q visibility && gjp -q pack-h5 && gjp -q embed-tags --device cuda \
   && gjp -q mktask bridge --masked && gjp -q pretrain --model polygnn --pretext osm --epochs 2 --device cuda)

echo "== pretrain T,G tiny on CUDA (bf16 autocast), then with torch.compile"
(cd "$ws" && time gjp pretrain --modalities T,G --preset tiny --geometry-encoder runs/polygnn-osm --epochs 2 --device cuda -o runs/tg)
(cd "$ws" && time gjp pretrain --modalities T,G --preset tiny --geometry-encoder runs/polygnn-osm --epochs 2 --device cuda \
   --compile -o runs/tg-compiled)
(cd "$ws" && gjp -q embed --model runs/tg --device cuda && gjp info embeddings/geojepa-TG.h5)

echo "== the pretraining benchmark on CUDA: base, bf16, batch 256, 4 loader workers"
python benchmarks/bench_pretrain.py --device cuda --batch-size 256 --steps 10 --workers 4 \
    --configs "T:base,T,G:base,T,G,I:base,T,G:tiny"
python benchmarks/bench_pretrain.py --device cuda --batch-size 256 --steps 10 --workers 4 --live-geometry \
    --configs "T,G:base"
rm -rf "$ws"
