"""Entities per second through the geometry encoder (``gjp.models.polygnn.PolygonEncoder``)
on batches of real tiles, against the transformer step that will consume its tokens, in
the same run.

    python benchmarks/bench_geometry.py [--extract X.osm.pbf ...] [--preset base]
                                        [--batches 10] [--batch-size 32] [--repeat 3]
                                        [--max-entities N]

The script builds ``dataset.h5`` from the extracts (default: the bundled Porto one) in a
temporary directory with the library's own steps (tile → simplify → bbox → visibility →
pack-h5), keeps the tiles with at most ``--max-entities`` entities if given, draws
``--batches`` batches of ``--batch-size`` tiles with the training sampler
(``LengthGroupedBatchSampler``, fixed seed) and ``collate_tiles``, and times on the CPU
(and on CUDA when torch sees one, same code after ``.to(device)``):

- the encoder forward in eval mode under ``torch.no_grad()`` (frozen use) and its
  forward + backward in training mode (training use), as entities/s;
- ``triplets(...)`` alone on the same batches, as a share of the frozen forward;
- a d=384, 12-layer pre-norm transformer encoder (6 heads, FFN 1536) forward + backward on
  ``[B, E_max, 384]`` random tokens with the batch's ``padding_mask``: what the geometry
  tokens feed. The ratios encoder time / transformer time are per batch.

The batches are moved to the device before the timings; each figure is the fastest of
``--repeat`` passes over all batches, after one warm-up pass, the measurements taking
turns within each repeat.

Porto alone makes 101 tiles, so 3 full batches of 32; its largest batch (E_max ≈ 700) ran
the transformer out of memory on a 23 GB, 2-core machine (and, extrapolating, would take
over a minute a step there). On such a machine, add extracts and cap the tiles, as
docs/PERFORMANCE.md does:

    python benchmarks/bench_geometry.py --extract examples/data/pt_porto_2020-07.osm.pbf \
        --extract examples/data/us_md_baltimore_2015-02.osm.pbf \
        --extract examples/data/li_liechtenstein_2015-07.osm.pbf --max-entities 256 --batches 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gjp.dataset.loader import LengthGroupedBatchSampler, TileDataset, collate_tiles
from gjp.dataset.pack import pack_dataset
from gjp.models.polygnn import PolygonEncoder, PolygonEncoderConfig, triplets

ROOT = Path(__file__).resolve().parents[1]
D_MODEL, HEADS, FFN, LAYERS = 384, 6, 1536, 12


def build_dataset(extracts: list[Path], tmp: Path) -> Path:
    """The library's steps, as ``gjp tile`` … ``gjp pack-h5`` run them."""
    from gjp.geometry.minbox import bbox
    from gjp.geometry.simplify import simplify
    from gjp.geometry.visibility import visibility
    from gjp.osm.tiling import tile_osm

    tile_osm(extracts, tmp / "tiles", workers=2)
    simplify(tmp / "tiles", tmp / "simplified", workers=2)
    bbox(tmp / "simplified", tmp / "boxed", workers=2)
    visibility(tmp / "boxed", tmp / "graphs", workers=2)
    pack_dataset(tmp / "graphs", tmp / "dataset.h5")
    return tmp / "dataset.h5"


def draw_batches(dataset: TileDataset, batch_size: int, count: int, seed: int) -> list[dict]:
    sampler = LengthGroupedBatchSampler(dataset.entity_counts, batch_size, seed=seed, drop_last=True)
    batches = []
    for indices in sampler:
        batches.append(collate_tiles([dataset[i] for i in indices]))
        if len(batches) == count:
            break
    if len(batches) < count:
        print(f"note: only {len(batches)} full batches of {batch_size} tiles in {len(dataset)} tiles")
    return batches


def best_time(runs: dict[str, Callable[[], None]], repeat: int, sync: Callable[[], None]) -> dict[str, float]:
    """Fastest of ``repeat`` calls of each run after one warm-up call, the runs taking turns."""
    for run in runs.values():
        run()
    sync()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def measure(batches: list[dict], config: PolygonEncoderConfig, device: torch.device, repeat: int) -> dict:
    torch.manual_seed(0)
    encoder = PolygonEncoder(config).to(device)
    layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, FFN, batch_first=True, norm_first=True)
    transformer = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False).to(device).train()
    graphs = [b["graph"].to(device) for b in batches]
    masks = [b["padding_mask"].to(device) for b in batches]
    tokens = [torch.randn(*m.shape, D_MODEL, device=device) for m in masks]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def frozen():
        encoder.eval()
        with torch.no_grad():
            for g in graphs:
                encoder(g)

    def training():
        encoder.train()
        for g in graphs:
            encoder.zero_grad(set_to_none=True)
            encoder(g).mean().backward()

    def enumerate_triplets():
        for g in graphs:
            triplets(g.edge_index, g.num_nodes)

    def transformer_step():
        for x, m in zip(tokens, masks):
            transformer.zero_grad(set_to_none=True)
            transformer(x, src_key_padding_mask=m).mean().backward()

    times = best_time({"frozen": frozen, "training": training, "triplets": enumerate_triplets,
                       "transformer": transformer_step}, repeat, sync)
    n = len(batches)
    entities = sum(int(g.num_graphs) for g in graphs)
    with torch.no_grad():
        counts = [len(triplets(g.edge_index, g.num_nodes)[0]) for g in graphs]
    return {
        "entities": entities / n,
        "e_max": float(np.mean([m.shape[1] for m in masks])),
        "vertices": float(np.mean([g.num_nodes for g in graphs])),
        "edges": float(np.mean([g.edge_index.shape[1] for g in graphs])),
        "triplets": float(np.mean(counts)),
        **{f"{k}_ms": 1000 * v / n for k, v in times.items()},
        "frozen_eps": entities / times["frozen"],
        "training_eps": entities / times["training"],
        "triplet_share": times["triplets"] / times["frozen"],
        "frozen_ratio": times["frozen"] / times["transformer"],
        "training_ratio": times["training"] / times["transformer"],
    }


def table(results: dict[str, dict]) -> str:
    rows = [
        ("entities per batch (mean)", "entities", "{:,.0f}"),
        ("padded length E_max (mean)", "e_max", "{:,.0f}"),
        ("vertices / directed edges / triplets per batch", None, None),
        ("encoder frozen forward, per batch", "frozen_ms", "{:,.1f} ms"),
        ("encoder frozen forward, entities/s", "frozen_eps", "{:,.0f}"),
        ("encoder training fwd+bwd, per batch", "training_ms", "{:,.1f} ms"),
        ("encoder training fwd+bwd, entities/s", "training_eps", "{:,.0f}"),
        ("`triplets()` alone, per batch", "triplets_ms", "{:,.2f} ms"),
        ("triplet share of the frozen forward", "triplet_share", "{:.1%}"),
        (f"transformer d={D_MODEL} ×{LAYERS} fwd+bwd, per batch", "transformer_ms", "{:,.1f} ms"),
        ("ratio frozen forward / transformer", "frozen_ratio", "{:.3f}"),
        ("ratio training fwd+bwd / transformer", "training_ratio", "{:.3f}"),
    ]
    devices = list(results)
    lines = ["| | " + " | ".join(devices) + " |", "|---|" + "---:|" * len(devices)]
    for label, key, fmt in rows:
        if key is None:
            cells = [f"{r['vertices']:,.0f} / {r['edges']:,.0f} / {r['triplets']:,.0f}" for r in results.values()]
        else:
            cells = [fmt.format(r[key]) for r in results.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extract", type=Path, action="append",
                        help="an OSM extract (repeatable); default examples/data/pt_porto_2020-07.osm.pbf")
    parser.add_argument("--preset", default="base", help="PolygonEncoderConfig preset (default base)")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="the batch sampler's seed")
    parser.add_argument("--max-entities", type=int,
                        help="only tiles with at most this many entities (default: all); the transformer's "
                             "memory and time grow with the longest tile of a batch")
    args = parser.parse_args()
    extracts = args.extract or [ROOT / "examples/data/pt_porto_2020-07.osm.pbf"]
    config = PolygonEncoderConfig.preset(args.preset)

    with tempfile.TemporaryDirectory() as tmp:
        path = build_dataset(extracts, Path(tmp))
        dataset = TileDataset(path)
        total = len(dataset)
        if args.max_entities is not None:
            dataset = TileDataset(path, indices=np.flatnonzero(dataset.entity_counts <= args.max_entities))
        batches = draw_batches(dataset, args.batch_size, args.batches, args.seed)
    if not batches:
        raise SystemExit(f"no full batch of {args.batch_size} tiles in {len(dataset)} tiles")

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = {}
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        results[name] = measure(batches, config, device, args.repeat)

    kept = "" if args.max_entities is None else f" ({len(dataset)} with at most {args.max_entities} entities)"
    print(f"{', '.join(p.name for p in extracts)}: {total} tiles{kept}; {len(batches)} batches of "
          f"{args.batch_size} tiles (seed {args.seed}); preset {args.preset!r} {config.to_dict()}; "
          f"best of {args.repeat} after one warm-up; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print(table(results))


if __name__ == "__main__":
    main()
