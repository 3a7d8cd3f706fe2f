"""Where a GeoJEPA pretraining step spends its time: tiles/s of a step for the modality
sets T, T,G and T,G,I at the ``tiny`` and ``base`` sizes, and per step the share spent
waiting for data (loading, collating, masking), in the tokenizer (of which: the frozen
geometry encoder: zero when its outputs are cached, as ``gjp pretrain`` does; measure it
with ``--live-geometry``), and in the image backbone when its tokens are not cached (the
backbone run on the batch's chips, against reading the cached tokens); peak memory of
each configuration (each runs in its own process).

    python benchmarks/bench_pretrain.py [--extract X.osm.pbf] [--batch-size 32] [--steps 6]
                                        [--configs T:tiny,T,G:tiny,...] [--device cpu|cuda] [--workers 0]
                                        [--live-geometry] [--workspace DIR]

No OSM extract covers the bundled NAIP chips, so for T,G,I the bench gives every tile of
the extract one of the 16 real chips of tests/data/naip_z16 (cycled): the costs are real,
the pairing is not. On CUDA the step runs in bf16 autocast, as ``gjp pretrain`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHIPS = ROOT / "tests" / "data" / "naip_z16"
DEFAULT_CONFIGS = "T:tiny,T,G:tiny,T,G,I:tiny,T:base,T,G:base,T,G,I:base"


def build_workspace(extract: Path, out: Path) -> Path:
    """dataset.h5 (graphs and a chip per tile) and its tag embeddings, from ``extract``."""
    from gjp.dataset.format import decode, open_dataset
    from gjp.dataset.pack import pack_dataset
    from gjp.geometry.minbox import bbox
    from gjp.geometry.simplify import simplify
    from gjp.geometry.visibility import visibility
    from gjp.imagery.chips import import_chips
    from gjp.osm.tiling import tile_osm
    from gjp.tag_embeddings import embed_tags

    tile_osm([extract], out / "tiles", workers=2)
    simplify(out / "tiles", out / "simplified", workers=2)
    bbox(out / "simplified", out / "boxed", workers=2)
    visibility(out / "boxed", out / "graphs", workers=2)
    pack_dataset(out / "graphs", out / "plain.h5")
    with open_dataset(out / "plain.h5") as f:
        names = decode(f["tiles/name"][()])
    chips = sorted(CHIPS.glob("16_*.webp"))
    paired = out / "paired"
    paired.mkdir()
    for i, name in enumerate(names):  # real chips, made-up pairing (see the module docstring)
        shutil.copy(chips[i % len(chips)], paired / f"{name}.webp")
    import_chips(sorted(paired.iterdir()), out / "images")
    pack_dataset(out / "graphs", out / "dataset.h5", images_dir=out / "images")
    embed_tags(out / "dataset.h5", out / "tag-embeddings.parquet")
    return out / "dataset.h5"


def measure(workspace: Path, modalities: str, preset: str, batch_size: int, steps: int, device_name: str,
            workers: int, live_geometry: bool = False) -> dict:
    import torch

    from gjp.dataset.geometry_tokens import ensure_geometry_tokens
    from gjp.dataset.image_tokens import ImageTokenFile, ensure_image_tokens
    from gjp.dataset.loader import LengthGroupedBatchSampler, TileDataset
    from gjp.device import autocast, resolve_device, to_device
    from gjp.embedders.geometry import load_polygnn
    from gjp.models.image_backbones import load_backbone
    from gjp.pretrain.geojepa import GeoJepaTrainConfig, _tag_table, batch_generator, build_model
    from gjp.pretrain.masks import MaskConfig, MaskingCollator
    from gjp.pretrain.polygnn import PolygnnTrainConfig, pretrain_polygnn

    device = resolve_device(device_name)
    dataset = workspace / "dataset.h5"
    config = GeoJepaTrainConfig(modalities=modalities, preset=preset, batch_size=batch_size,
                                dataset=str(dataset), tag_embeddings=str(workspace / "tag-embeddings.parquet"))
    chosen = config.modality_set()
    table = _tag_table(dataset, config.tag_embeddings) if "T" in chosen else None
    encoder, geometry_path = None, None
    if "G" in chosen:  # a geometry encoder of the preset's size (1 epoch of digits: the weights do not matter here)
        run = workspace / f"polygnn-{preset}"
        if not (run / "model.pt").exists():
            pretrain_polygnn(run, PolygnnTrainConfig(pretext="digits", preset=preset, n_per_class=1, epochs=1),
                             device="cpu")
        encoder, _ = load_polygnn(run, device)
        if not live_geometry:  # as gjp pretrain does: the frozen encoder's outputs cached once
            geometry_path = ensure_geometry_tokens(dataset, run, device=device)
    tokens_path, cache_seconds, backbone = None, None, None
    if "I" in chosen:
        started = time.perf_counter()
        tokens_path = ensure_image_tokens(dataset, device=device)  # once, before the steps (cached)
        cache_seconds = time.perf_counter() - started
        backbone = load_backbone("efficientnet_lite0").to(device)
    image_dim = ImageTokenFile(tokens_path).dim if tokens_path else None
    tokenizer, model, _ = build_model(config, table, encoder, image_dim)
    tokenizer.to(device).train()
    model.to(device).train()
    trainable = [p for m in (tokenizer, model) for p in m.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95))
    data = TileDataset(dataset, image_tokens=tokens_path, geometry_tokens=geometry_path)
    chips = TileDataset(dataset, images=True) if backbone is not None else None  # for the uncached comparison
    sampler = LengthGroupedBatchSampler(data.entity_counts, batch_size, seed=0, drop_last=True)
    collator = MaskingCollator(MaskConfig(), images="I" in chosen, image_global=config.image_tokens == "patches+global",
                               entities=bool(chosen & {"T", "G"}))
    loader = iter(torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collator,
                                              num_workers=workers))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    geometry_time = [0.0]
    if encoder is not None:
        def before(*_):
            sync()
            geometry_time.append(time.perf_counter())

        def after(*_):
            sync()
            geometry_time[0] += time.perf_counter() - geometry_time.pop()

        tokenizer.geometry.encoder.register_forward_pre_hook(before)
        tokenizer.geometry.encoder.register_forward_hook(after)

    warmup = 2
    totals = dict.fromkeys(["wait", "tokenizer", "geometry", "rest", "backbone", "step"], 0.0)
    tiles = tokens_per_tile = 0
    for i in range(warmup + steps):
        measured = i >= warmup
        sync()
        t0 = time.perf_counter()
        batch = next(loader)
        t1 = time.perf_counter()
        batch = to_device(batch, device)
        geometry_time[0] = 0.0
        generator = batch_generator(0, batch["epoch"], batch["number"], device)
        with autocast(device):
            tokens, conditions, padding = tokenizer(batch, generator)
            sync()
            t2 = time.perf_counter()
            out = model(tokens, conditions, padding, batch["context_mask"], batch["target_masks"])
        optimiser.zero_grad(set_to_none=True)
        out["loss"].float().backward()
        optimiser.step()
        model.update_target(0.996)
        sync()
        t3 = time.perf_counter()
        backbone_seconds = 0.0
        if backbone is not None:  # what the step would add if the image tokens were not cached
            pixels = torch.from_numpy(np.stack([chips[int(j)].image for j in batch["tile_index"]]))
            with torch.no_grad(), autocast(device):
                started = time.perf_counter()
                backbone(pixels.permute(0, 3, 1, 2).to(device))
                sync()
                backbone_seconds = time.perf_counter() - started
        if measured:
            totals["wait"] += t1 - t0
            totals["tokenizer"] += t2 - t1
            totals["geometry"] += geometry_time[0]
            totals["rest"] += t3 - t2
            totals["step"] += t3 - t0
            totals["backbone"] += backbone_seconds
            tiles += len(batch["names"])
            tokens_per_tile += int((~padding).sum()) / len(batch["names"])
    step = totals["step"]
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"modalities": modalities, "preset": preset, "device": device.type, "tiles_per_s": tiles / step,
            "step_ms": 1000 * step / steps, "wait": totals["wait"] / step, "tokenizer": totals["tokenizer"] / step,
            "geometry": totals["geometry"] / step, "model": totals["rest"] / step,
            "backbone_uncached": totals["backbone"] / step if backbone is not None else None,
            "cache_seconds": cache_seconds, "tokens_per_tile": tokens_per_tile / steps, "peak_mb": peak,
            "parameters": sum(p.numel() for p in trainable)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extract", type=Path, default=ROOT / "examples/data/li_liechtenstein_2015-07.osm.pbf")
    parser.add_argument("--workspace", type=Path, help="a workspace made by an earlier run (kept)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="MODALITIES:PRESET, comma-separated")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--live-geometry", action="store_true",
                        help="run the frozen geometry encoder in every step instead of reading its cached outputs")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child: one configuration, one JSON line
        modalities, preset = args.one.rsplit(":", 1)
        print(json.dumps(measure(args.workspace, modalities, preset, args.batch_size, args.steps, args.device,
                                 args.workers, args.live_geometry)))
        return
    configs, parts = [], args.configs.split(",")
    current = []
    for part in parts:  # "T,G,I:base" contains commas: gather until a ":PRESET"
        current.append(part)
        if ":" in part:
            configs.append(",".join(current))
            current = []
    with tempfile.TemporaryDirectory() as tmp:
        workspace = args.workspace
        if workspace is None or not (workspace / "dataset.h5").exists():
            workspace = workspace or Path(tmp)
            workspace.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            build_workspace(args.extract, workspace)
            print(f"workspace: {args.extract.name} in {time.perf_counter() - started:.0f} s")
        print(f"batch {args.batch_size} tiles, {args.steps} steps after 2 warm-up steps, {args.device}, "
              f"{args.workers} loader workers, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}, "
              f"geometry tokens {'live' if args.live_geometry else 'cached'}")
        print("| modalities | preset | tiles/s | step ms | data wait | tokenizer (geometry) | model | "
              "image backbone if not cached | tokens/tile | peak MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for config in configs:
            run = subprocess.run([sys.executable, __file__, "--one", config, "--workspace", str(workspace),
                                  "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                                  "--device", args.device, "--workers", str(args.workers)]
                                 + (["--live-geometry"] if args.live_geometry else []),
                                 capture_output=True, text=True)
            if run.returncode:
                print(f"| {config} | failed: {run.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(run.stdout.strip().splitlines()[-1])
            backbone = "–" if r["backbone_uncached"] is None else \
                f"+{100 * r['backbone_uncached']:.0f} % of the step (cache built in {r['cache_seconds']:.1f} s)"
            print(f"| {r['modalities']} | {r['preset']} | {r['tiles_per_s']:.1f} | {r['step_ms']:.0f} | "
                  f"{100 * r['wait']:.1f} % | {100 * r['tokenizer']:.1f} % ({100 * r['geometry']:.1f} %) | "
                  f"{100 * r['model']:.1f} % | {backbone} | {r['tokens_per_tile']:.0f} | {r['peak_mb']:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
