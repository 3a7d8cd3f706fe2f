"""Tiles per second through the PyTorch loader: gjp's flat ``dataset.h5`` (CSR arrays)
against the original GeoJEPA layout (one HDF5 group per tile, tags stored as strings and
looked up at load time), built here from the same graphs, read with the same sampler and
collate function, in the same run.

    python benchmarks/bench_loader.py [--graphs DIR] [--batch-size 32] [--epochs 3]

Without ``--graphs`` it builds graphs from the bundled Liechtenstein extract first.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from gjp.dataset.format import open_dataset, read_vocabulary
from gjp.dataset.loader import LengthGroupedBatchSampler, TileDataset, TileSample, collate_tiles
from gjp.dataset.pack import pack_dataset

ROOT = Path(__file__).resolve().parents[1]


def build_per_tile_layout(dataset: Path, out: Path) -> None:
    """The original layout: ``/<tile>/`` groups holding that tile's arrays, with its tags
    as ``key=value`` strings per entity (the original stored flattened k, v strings)."""
    import h5py

    vocab = read_vocabulary(dataset)
    with open_dataset(dataset) as f, h5py.File(out, "w") as g:
        offsets = f["tiles/entity_offsets"][()]
        names = [n.decode() for n in f["tiles/name"][()]]
        arrays = {k: f[k][()] for k in ("entities/kind", "entities/min_box", "entities/tag_offsets",
                                        "entities/tag_ids", "graph/node_offsets", "graph/nodes",
                                        "graph/geometry_edge_offsets", "graph/geometry_edges",
                                        "graph/visibility_edge_offsets", "graph/visibility_edges")}
        for t, name in enumerate(names):
            e0, e1 = offsets[t], offsets[t + 1]
            grp = g.create_group(name)
            grp["kind"] = arrays["entities/kind"][e0:e1]
            grp["min_box"] = arrays["entities/min_box"][e0:e1]
            for prefix, key in (("tag", "entities/tag"), ("node", "graph/node"),
                                ("geometry_edge", "graph/geometry_edge"), ("visibility_edge", "graph/visibility_edge")):
                off = arrays[f"{key}_offsets"][e0:e1 + 1]
                grp[f"{prefix}_offsets"] = off - off[0]
            tag_off = arrays["entities/tag_offsets"][e0:e1 + 1]
            grp["tags"] = np.array([vocab.entries[i].encode() for i in arrays["entities/tag_ids"][tag_off[0]:tag_off[-1]]],
                                   dtype=h5py.string_dtype()) if tag_off[-1] > tag_off[0] else np.zeros(0, "S1")
            for field, key in (("nodes", "graph/node"), ("geometry_edges", "graph/geometry_edge"),
                               ("visibility_edges", "graph/visibility_edge")):
                off = arrays[f"{key}_offsets"][e0:e1 + 1]
                grp[field] = arrays[{"nodes": "graph/nodes", "geometry_edges": "graph/geometry_edges",
                                     "visibility_edges": "graph/visibility_edges"}[field]][off[0]:off[-1]]


class PerTileDataset:
    """Reads the per-tile layout into the same samples as :class:`TileDataset`."""

    def __init__(self, path: Path, vocab):
        import h5py

        self.file = h5py.File(path, "r")
        self.names = sorted(self.file.keys())
        self.index = vocab.index

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        grp = self.file[self.names[i]]
        tags = grp["tags"][()]
        lookup = self.index
        tag_ids = np.array([lookup.get(t.decode() if isinstance(t, bytes) else t, 0) for t in tags], dtype=np.int32)
        return TileSample(index=i, name=self.names[i], kind=grp["kind"][()], min_box=grp["min_box"][()],
                          tag_ids=tag_ids, tag_offsets=grp["tag_offsets"][()], nodes=grp["nodes"][()],
                          node_offsets=grp["node_offsets"][()], geometry_edges=grp["geometry_edges"][()],
                          geometry_offsets=grp["geometry_edge_offsets"][()],
                          visibility_edges=grp["visibility_edges"][()],
                          visibility_offsets=grp["visibility_edge_offsets"][()])


def tiles_per_second(dataset, lengths, batch_size: int, epochs: int) -> float:
    from torch.utils.data import DataLoader

    best = 0.0
    for epoch in range(epochs):
        sampler = LengthGroupedBatchSampler(lengths, batch_size, seed=epoch)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_tiles, num_workers=0)
        start, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["names"])
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    import torch_geometric  # noqa: F401  (imported before the timings)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        graphs = args.graphs
        if graphs is None:
            from gjp.geometry.minbox import bbox
            from gjp.geometry.simplify import simplify
            from gjp.geometry.visibility import visibility
            from gjp.osm.tiling import tile_osm

            tile_osm([ROOT / "examples/data/li_liechtenstein_2015-07.osm.pbf"], tmp / "tiles", workers=2)
            simplify(tmp / "tiles", tmp / "s", workers=2)
            bbox(tmp / "s", tmp / "b", workers=2)
            visibility(tmp / "b", tmp / "graphs", workers=2)
            graphs = tmp / "graphs"
        pack_dataset(graphs, tmp / "dataset.h5")
        build_per_tile_layout(tmp / "dataset.h5", tmp / "per_tile.h5")
        flat = TileDataset(tmp / "dataset.h5")
        per_tile = PerTileDataset(tmp / "per_tile.h5", read_vocabulary(tmp / "dataset.h5"))
        assert per_tile.names == flat.names
        lengths = flat.entity_counts
        ours = tiles_per_second(flat, lengths, args.batch_size, args.epochs)
        theirs = tiles_per_second(per_tile, lengths, args.batch_size, args.epochs)
        # the readers alone, without the shared collate
        start = time.perf_counter()
        for i in range(len(flat)):
            flat[i]
        ours_read = len(flat) / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(len(per_tile)):
            per_tile[i]
        theirs_read = len(per_tile) / (time.perf_counter() - start)
        sizes = {p: (tmp / p).stat().st_size / 1e6 for p in ("dataset.h5", "per_tile.h5")}
        print(f"{len(flat)} tiles, {int(lengths.sum())} entities, batch {args.batch_size}, best of {args.epochs} epochs")
        print(f"flat CSR dataset.h5 ({sizes['dataset.h5']:.1f} MB): {ours:,.0f} tiles/s through the loader, "
              f"{ours_read:,.0f} tiles/s read")
        print(f"one group per tile ({sizes['per_tile.h5']:.1f} MB): {theirs:,.0f} tiles/s through the loader, "
              f"{theirs_read:,.0f} tiles/s read")
        print(f"ratio: {ours / theirs:.1f}× through the loader, {ours_read / theirs_read:.1f}× reading")


if __name__ == "__main__":
    main()
