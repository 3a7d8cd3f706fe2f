#!/usr/bin/env bash
# GeoJEPA against its baselines, judged where it never trained (issue 14).
#
#   usage: examples/experiments/run.sh OUT --train A.osm.pbf [B.osm.pbf …] --eval C.osm.pbf [D.osm.pbf …]
#   env:   PRESET=tiny EPOCHS=8 MODALITIES="T T,G" SEEDS=5 HEADS="mlp linear" POLYGNN_EPOCHS=4
#          PRETRAIN_SEEDS=3  (pretraining seeds per configuration: runs NAME, NAME-seed1, NAME-seed2; the
#          report averages them)
#          FRACTIONS=0.6,0.2,0.2  (train/val/test shares of the evaluation groups, for the probes: larger
#          validation and test splits than mktask's 0.8,0.1,0.1, since no model pretrains there)
#          ABLATIONS=examples/experiments/ablations.txt  (one run per line: NAME MODALITIES KEY=VALUE…,
#          the settings of `gjp pretrain --set`, or preset=P / epochs=N; each becomes a model of its
#          own, runs/geojepa-NAME)
#
# OUT/train/  the pretraining data: the pipeline over the --train extracts, the tag
#             vocabulary and its embeddings, the geometry encoder, and one GeoJEPA run per
#             modality set (on every train tile: these regions are never evaluated)
# OUT/eval/   the evaluation data: the pipeline over the --eval extracts, packed with the
#             train vocabulary (so tag ids mean the same), the five masked tasks, every
#             model's embeddings, probes (each head, SEEDS seeds), retrieval precision@8,
#             and the score table
# OUT/report.md  examples/experiments/report.py over both
set -euo pipefail
here=$(dirname "$(realpath "$0")")
out=$1
shift
train=() evaluate=() into=
for arg in "$@"; do
    case $arg in
        --train) into=train ;;
        --eval) into=eval ;;
        *) if [ "$into" = train ]; then train+=("$(realpath "$arg")");
           elif [ "$into" = eval ]; then evaluate+=("$(realpath "$arg")");
           else echo "run.sh: $arg: give extracts after --train or --eval" >&2; exit 2; fi ;;
    esac
done
if [ ${#train[@]} -eq 0 ] || [ ${#evaluate[@]} -eq 0 ]; then
    echo "usage: run.sh OUT --train A.osm.pbf … --eval C.osm.pbf …" >&2
    exit 2
fi
preset=${PRESET:-tiny} epochs=${EPOCHS:-8} seeds=${SEEDS:-5} pretrain_seeds=${PRETRAIN_SEEDS:-3}
ablations=${ABLATIONS:+$(realpath "$ABLATIONS")}
read -r -a modality_sets <<< "${MODALITIES:-T T,G}"
read -r -a heads <<< "${HEADS:-mlp linear}"
mkdir -p "$out/train" "$out/eval"
out=$(realpath "$out")

graphs() {  # the OSM steps over some extracts, in the current directory
    gjp -q tile "$@" -o tiles/ --overwrite
    gjp -q simplify --overwrite
    gjp -q bbox --overwrite
    gjp -q visibility --overwrite
}

# ---- pretraining data and models
cd "$out/train"
graphs "${train[@]}"
gjp -q pack-h5 --overwrite
gjp -q embed-tags --overwrite
gjp -q pretrain --model polygnn --pretext osm --epochs "${POLYGNN_EPOCHS:-4}" --max-entities 6000 \
    -o runs/polygnn-osm --overwrite
models=(tagcount tagpool)
pretrain_seeds() {  # NAME PRETRAIN-ARGS…: one run per pretraining seed, NAME, NAME-seed1, NAME-seed2, …
    local name=$1 seed run
    shift
    for ((seed = 0; seed < pretrain_seeds; seed++)); do
        run=runs/$name
        [ "$seed" -gt 0 ] && run=runs/$name-seed$seed
        # every train tile: the evaluation regions are other extracts altogether
        gjp -q pretrain --all-tiles --geometry-encoder "$out/train/runs/polygnn-osm" "$@" --set "seed=$seed" \
            -o "$run" --overwrite
        models+=("$out/train/$run")
    done
}
for m in "${modality_sets[@]}"; do
    pretrain_seeds "geojepa-${m//,/}" --modalities "$m" --preset "$preset" --epochs "$epochs"
done
if [ -n "${ABLATIONS:-}" ]; then
    while read -r name m settings; do
        case $name in ''|'#'*) continue ;; esac
        sets=(--preset "$preset" --epochs "$epochs")   # preset=… and epochs=… override these
        for kv in $settings; do
            case $kv in
                preset=*) sets+=(--preset "${kv#preset=}") ;;
                epochs=*) sets+=(--epochs "${kv#epochs=}") ;;
                *) sets+=(--set "$kv") ;;
            esac
        done
        pretrain_seeds "geojepa-$name" --modalities "$m" "${sets[@]}"
    done < "$ablations"
fi

# ---- evaluation, on the other extracts
cd "$out/eval"
graphs "${evaluate[@]}"
gjp -q pack-h5 --vocab "$out/train/dataset.h5" --overwrite
cp "$out/train/tag-embeddings.parquet" .   # the same vocabulary, so the same table
rm -rf tasks embeddings results
tasks=(traffic_signals bridge car_bridge building_count max_speed)
for task in "${tasks[@]}"; do
    gjp -q mktask "$task" --masked --fractions "${FRACTIONS:-0.6,0.2,0.2}"
done
for model in "${models[@]}"; do
    name=${model##*/}
    for task in "${tasks[@]}"; do
        gjp -q embed --model "$model" --task "tasks/$task-masked"
        for head in "${heads[@]}"; do
            gjp -q probe -e "embeddings/${name}__$task-masked.h5" --task "tasks/$task-masked" --head "$head" \
                --seeds "$seeds"
        done
    done
    gjp -q embed --model "$model"
    gjp knn -e "embeddings/$name.h5" --eval > /dev/null
    for split in val test; do   # a validation half to choose on, a test half to report
        gjp knn -e "embeddings/$name.h5" --eval --split $split > /dev/null
    done
done
gjp score | tee score.md
python "$here/report.py" "$out" > "$out/report.md"
echo "report: $out/report.md"
