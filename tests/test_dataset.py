"""dataset.h5 (pack-h5) and the PyTorch loader."""

import json
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from gjp.dataset.format import UNKNOWN, Vocabulary, decode, read_vocabulary
from gjp.dataset.loader import LengthGroupedBatchSampler, TileDataset, collate_tiles
from gjp.dataset.pack import pack_dataset
from gjp.errors import GjpError
from gjp.grid import group_name, parse_tile_name


def graphs_table(graphs):
    table = pa.concat_tables([pq.read_table(f) for f in sorted(graphs.glob("*.parquet"))])
    order = np.argsort(np.array(table.column("tile").to_pylist(), dtype=object), kind="stable")
    return table.take(order)


def test_csr_invariants(monaco_dataset):
    _, _, path = monaco_dataset
    with h5py.File(path) as f:
        n_tiles = len(f["tiles/name"])
        n_entities = len(f["entities/kind"])
        for offsets, flat in (("tiles/entity_offsets", "entities/kind"), ("entities/tag_offsets", "entities/tag_ids"),
                              ("graph/node_offsets", "graph/nodes"),
                              ("graph/geometry_edge_offsets", "graph/geometry_edges"),
                              ("graph/visibility_edge_offsets", "graph/visibility_edges")):
            o = f[offsets][()]
            assert o[0] == 0 and o[-1] == len(f[flat]) and np.all(np.diff(o) >= 0), offsets
            assert len(o) == (n_tiles if offsets.startswith("tiles") else n_entities) + 1
        assert len(f["entities/tag_key_ids"]) == len(f["entities/tag_ids"]) == len(f["entities/tag_value_ids"])
        assert f["entities/tag_ids"][()].max() < len(f["vocab/tags"])
        names = decode(f["tiles/name"][()])
        groups = decode(f["tiles/group"][()])
        # group order, then name order within a group (the order pack-h5 streams them in)
        assert list(zip(groups, names)) == sorted(zip(groups, names)) and len(set(names)) == len(names)
        node_counts = np.diff(f["graph/node_offsets"][()])
        for kind in ("geometry", "visibility"):
            edges = f[f"graph/{kind}_edges"][()]
            owner = np.repeat(np.arange(n_entities), np.diff(f[f"graph/{kind}_edge_offsets"][()]))
            assert np.all(edges >= 0) and np.all(edges < node_counts[owner][:, None])
        assert f.attrs["format"] == "gjp-dataset" and f.attrs["zoom"] == 16 and "command" in f.attrs


def test_graphs_round_trip_through_dataset_and_loader(monaco_dataset):
    _, graphs, path = monaco_dataset
    table = graphs_table(graphs)
    vocab = read_vocabulary(path)
    ds = TileDataset(path)
    rows = table.select(["tile", "kind", "tags", "min_box", "vertices", "geometry_edges",
                         "visibility_edges"]).to_pylist()
    by_tile = {}
    for r in rows:
        by_tile.setdefault(r["tile"], []).append(r)
    assert ds.names == sorted(by_tile, key=lambda n: (group_name(*parse_tile_name(n)), n))
    loader = torch.utils.data.DataLoader(ds, batch_size=7, collate_fn=collate_tiles)
    seen = 0
    for batch in loader:
        for b, name in enumerate(batch["names"]):
            expected = by_tile[name]
            n = len(expected)
            assert int((~batch["padding_mask"][b]).sum()) == n
            np.testing.assert_allclose(batch["min_box"][b, :n].numpy(),
                                       np.array([r["min_box"] for r in expected], dtype=np.float32))
        # tags: EmbeddingBag offsets of the real entities, in batch order
        ends = torch.cat([batch["tag_offsets"][1:], torch.tensor([len(batch["tag_ids"])])])
        graph = batch["graph"]
        for j, (b, slot) in enumerate(zip(batch["entity_batch"].tolist(), batch["entity_slot"].tolist())):
            r = by_tile[batch["names"][b]][slot]
            ids = batch["tag_ids"][batch["tag_offsets"][j]:ends[j]].tolist()
            assert ids == [vocab.lookup(k, v) for k, v in r["tags"]]
            nodes = graph.x[graph.batch == j].numpy()
            np.testing.assert_allclose(nodes, np.array(r["vertices"], dtype=np.float32).reshape(-1, 2))
            first = int(graph.ptr[j])
            for kind, code in (("geometry_edges", 0), ("visibility_edges", 1)):
                sel = (graph.edge_type == code) & (graph.batch[graph.edge_index[0]] == j)
                got = {tuple(e) for e in (graph.edge_index[:, sel].T - first).tolist()}
                want = {tuple(e) for e in r[kind]} | {tuple(e[::-1]) for e in r[kind]}
                assert got == want
            seen += 1
    assert seen == table.num_rows


def test_vocabulary_falls_back_to_key_star_and_unknown():
    tags = [[("amenity", "bench")]] * 5 + [[("amenity", "fountain"), ("name", "A")], [("name", "B")]]
    vocab = Vocabulary.build(tags, min_count=5)
    assert vocab.entries[0] == UNKNOWN and "amenity=bench" in vocab.index
    assert vocab.lookup("amenity", "fountain") == vocab.index["amenity=*"]
    assert vocab.lookup("name", "C") == vocab.index["name=*"]
    assert vocab.lookup("shop", "bakery") == 0
    assert vocab.counts[vocab.index["amenity=bench"]] == 5 and vocab.counts[vocab.index["name=*"]] == 2


def test_reusing_a_vocabulary_maps_unseen_keys_to_unknown(monaco_dataset, boston, tmp_path, build_graphs):
    _, _, monaco_path = monaco_dataset
    graphs = build_graphs(boston, tmp_path)
    report = pack_dataset(graphs, tmp_path / "boston.h5", vocabulary_from=monaco_path)
    assert read_vocabulary(tmp_path / "boston.h5").entries == read_vocabulary(monaco_path).entries
    assert report.unknown_tags > 0  # Boston has keys Monaco never uses


def test_length_grouped_sampler():
    lengths = np.random.default_rng(0).integers(1, 500, size=1000)
    sampler = LengthGroupedBatchSampler(lengths, batch_size=32, group=8, seed=3)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000)) and len(batches) == len(sampler)
    # little padding: within a batch the lengths are close
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean([lengths[b].max() - lengths[b].min() for b in np.array_split(np.arange(1000), 32)])
    assert spread < random_spread / 4
    assert [b for b in LengthGroupedBatchSampler(lengths, 32, 8, seed=3)] == batches  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new order each epoch


def test_processes_share_an_epoch_without_overlap_and_keep_the_batch_numbers():
    lengths = np.random.default_rng(1).integers(1, 300, size=1000)  # 34 batches of 30, the last one short
    whole = {b.number: list(b) for b in LengthGroupedBatchSampler(lengths, 30, seed=4)}
    assert len(whole) == 34
    for world, even in ((2, True), (3, True), (3, False)):
        shares = [list(LengthGroupedBatchSampler(lengths, 30, seed=4, rank=r, world=world, even=even))
                  for r in range(world)]
        assert [len(s) for s in shares] == [len(LengthGroupedBatchSampler(lengths, 30, seed=4, rank=r, world=world,
                                                                          even=even)) for r in range(world)]
        numbers = [b.number for s in shares for b in s]
        assert len(numbers) == len(set(numbers))               # no batch twice
        assert all(list(b) == whole[b.number] for s in shares for b in s)  # each batch as one process sees it
        if even:   # every process as many batches: the epoch's tail is dropped
            assert len({len(s) for s in shares}) == 1 and len(numbers) == 34 - 34 % world
        else:      # validation: every batch, shared as evenly as possible
            assert sorted(numbers) == sorted(whole)
    with pytest.raises(ValueError, match="rank 2"):
        LengthGroupedBatchSampler(lengths, 30, rank=2, world=2)


def test_images_are_packed_and_normalised(monaco_dataset, tmp_path):
    from gjp.imagery.chips import import_chips

    _, graphs, path = monaco_dataset
    names = TileDataset(path).names[:3]
    chips = tmp_path / "chips"
    chips.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        rgba = rng.integers(0, 256, size=(224, 224, 4), dtype=np.uint8)
        rgba[:, :, 3] = 255
        rgba[:10, :, 3] = 0  # a nodata strip
        Image.fromarray(rgba, mode="RGBA").save(chips / f"{name}.png")
    import_chips(sorted(chips.glob("*.png")), tmp_path / "images")
    pack_dataset(graphs, tmp_path / "with_images.h5", images_dir=tmp_path / "images")
    ds = TileDataset(tmp_path / "with_images.h5", images=True)
    assert ds.has_image.sum() == 3 and ds.has_image[:3].all()
    batch = collate_tiles([ds[0], ds[len(ds) - 1]])
    assert batch["has_image"].tolist() == [True, False]
    original = np.asarray(Image.open(chips / f"{names[0]}.png"))[:, :, :3].astype(np.float32) / 255
    original[:10] = 0  # nodata pixels are stored as 0
    mean, std = np.array([0.4692, 0.4768, 0.4254]), np.array([0.1064, 0.0799, 0.0815])
    np.testing.assert_allclose(batch["image"][0].numpy(), ((original - mean) / std).transpose(2, 0, 1), atol=1e-5)
    assert not batch["image_valid"][0, :10].any() and batch["image_valid"][0, 10:].all()
    with pytest.raises(GjpError, match="has no images"):
        TileDataset(path, images=True)


def test_bad_inputs_are_explained(monaco_dataset, tmp_path):
    _, graphs, path = monaco_dataset
    old = tmp_path / "old_graphs"
    old.mkdir()
    f = sorted(graphs.glob("*.parquet"))[0]
    table = pq.read_table(f)
    meta = json.loads(table.schema.metadata[b"gjp"])
    meta["format_version"] = 0
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"gjp": json.dumps(meta).encode()}),
                   old / f.name)
    with pytest.raises(GjpError, match="format version 0"):
        pack_dataset(old, tmp_path / "x.h5")
    with pytest.raises(GjpError, match="has no column"):
        pack_dataset(graphs.parent / "tiles", tmp_path / "x.h5")
    with pytest.raises(GjpError, match="already exists"):
        pack_dataset(graphs, path)
    (tmp_path / "fake.h5").write_text("not hdf5")
    with pytest.raises(GjpError, match="not an HDF5 file"):
        TileDataset(tmp_path / "fake.h5")
    assert not list(tmp_path.glob(".*partial*"))


def test_loader_workers_open_the_file_themselves(monaco_dataset):
    _, _, path = monaco_dataset
    ds = TileDataset(path)
    assert ds._file is None  # nothing open in the parent: h5py handles do not cross processes
    loader = torch.utils.data.DataLoader(ds, batch_sampler=LengthGroupedBatchSampler(ds.entity_counts, 16, seed=0),
                                         collate_fn=collate_tiles, num_workers=2)
    names = [n for batch in loader for n in batch["names"]]
    assert sorted(names) == sorted(ds.names)


def test_images_only_dataset(tmp_path):
    from pathlib import Path

    from gjp.imagery.chips import import_chips

    chips = sorted((Path(__file__).parent / "data" / "naip_z16").glob("*.webp"))
    import_chips(chips, tmp_path / "images")
    report = pack_dataset(None, tmp_path / "chips.h5", images_dir=tmp_path / "images")
    assert report.tiles == report.images == len(chips) and report.entities == 0
    ds = TileDataset(tmp_path / "chips.h5", images=True)
    assert ds.names == [c.stem for c in chips]
    batch = collate_tiles([ds[0], ds[1]])
    assert batch["padding_mask"].all() and batch["has_image"].all() and batch["graph"].x.shape == (0, 2)
    with pytest.raises(GjpError, match="nothing to pack"):
        pack_dataset(None, tmp_path / "none.h5")


def test_the_loader_imports_none_of_the_preprocessing_stack():
    """Training code (and every spawned loader worker) pays for torch, h5py and numpy only."""
    code = ("import sys, gjp.dataset.loader; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'osmium', 'numba', 'shapely', 'pyarrow', "
            "'rasterio', 'pyproj', 'sentence_transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_used_dataset_pickles_for_spawned_workers(monaco_dataset):
    """Spawn/forkserver workers receive the dataset pickled, after the parent has read from it."""
    _, _, path = monaco_dataset
    ds = TileDataset(path)
    first = ds[0]
    assert ds._file is not None  # the parent has a handle open now
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None and ds._file is not None
    again = clone[0]
    assert again.name == first.name and np.array_equal(again.nodes, first.nodes)
    ctx = torch.multiprocessing.get_context("spawn")
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_tiles, num_workers=1,
                                         multiprocessing_context=ctx)
    assert [n for batch in loader for n in batch["names"]] == ds.names


def test_the_chip_size_comes_from_the_dataset(tmp_path):
    """Nothing assumes 224 px: chips of another size pack and batch at their own size."""
    from gjp.imagery.chips import import_chips

    chips = tmp_path / "chips"
    chips.mkdir()
    for x in (100, 101):
        Image.fromarray(np.full((64, 64, 4), 200, np.uint8), mode="RGBA").save(chips / f"16_{x}_200.png")
    import_chips(sorted(chips.glob("*.png")), tmp_path / "images", size=64)
    pack_dataset(None, tmp_path / "chips.h5", images_dir=tmp_path / "images")
    ds = TileDataset(tmp_path / "chips.h5", images=True)
    batch = collate_tiles([ds[0], ds[1]])
    assert tuple(batch["image"].shape) == (2, 3, 64, 64) and batch["image_valid"].all()


def _raw_tags(f) -> list[tuple[str, str]]:
    keys, values = decode(f["strings/keys"][()]), decode(f["strings/values"][()])
    return [(keys[k], values[v]) for k, v in zip(f["entities/tag_key_ids"][()], f["entities/tag_value_ids"][()])]


def test_pack_streams_blocks_and_shards_without_changing_the_data(monaco_dataset, tmp_path, monkeypatch):
    """Tiny write blocks give the same file as the default; shards hold the same tiles in
    the same order, whole groups, one shared vocabulary, each a dataset of its own."""
    from gjp.dataset import format as dataset_format
    from gjp.dataset.format import open_dataset
    from gjp.dataset.pack import SHARD_NAME

    _, graphs, path = monaco_dataset
    monkeypatch.setattr(dataset_format, "BLOCK_ENTITIES", 37)
    pack_dataset(graphs, tmp_path / "blocks.h5")
    with h5py.File(path) as a, h5py.File(tmp_path / "blocks.h5") as b:
        names = []
        a.visit(lambda n: names.append(n) if isinstance(a[n], h5py.Dataset) else None)
        for name in names:
            assert np.array_equal(a[name][()], b[name][()]), name
        whole_tags, whole_vocab = _raw_tags(a), a["vocab/tags"][()]
        whole = {n: a[n][()] for n in ("tiles/name", "tiles/group", "entities/kind", "entities/osm_id",
                                       "entities/tag_ids", "graph/nodes", "graph/visibility_edges")}
        n_tiles = len(whole["tiles/name"])

    report = pack_dataset(graphs, tmp_path / "shards", shard_tiles=n_tiles // 4)
    files = sorted((tmp_path / "shards").iterdir())
    assert [f.name for f in files] == [SHARD_NAME.format(i) for i in range(report.shards)] and report.shards >= 4
    parts = {n: [] for n in whole}
    tags = []
    for i, shard in enumerate(files):
        with open_dataset(shard) as f:
            assert json.loads(f.attrs["shard"]) == {"index": i, "count": len(files)}
            assert np.array_equal(f["vocab/tags"][()], whole_vocab)
            for n in whole:
                parts[n].append(f[n][()])
            tags += _raw_tags(f)
    groups = [set(decode(g)) for g in parts["tiles/group"]]
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1:])  # groups never split
    for n, value in whole.items():
        assert np.array_equal(np.concatenate(parts[n]), value), n
    assert tags == whole_tags
    assert report.tiles == n_tiles


def test_pack_refuses_a_tile_in_the_wrong_group_file(monaco_dataset, tmp_path):
    _, graphs, _ = monaco_dataset
    files = sorted(graphs.glob("14_*.parquet"))
    moved = tmp_path / "graphs"
    moved.mkdir()
    (moved / files[1].name).write_bytes(files[0].read_bytes())  # group A's tiles under group B's name
    with pytest.raises(GjpError, match=f"{files[1].name}: has tile .* which belongs to group {files[0].stem}"):
        pack_dataset(moved, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_hdf5_metadata_caches_stay_bounded_whatever_is_read(monaco_dataset, tmp_path):
    """HDF5's metadata cache is fixed in every file gjp opens: left adaptive it grew with
    every chunk index node read (mktask gained ~3 MB per 8,192 tiles on large datasets)."""
    from pathlib import Path

    from gjp.dataset.format import open_dataset, read_tiles
    from gjp.io import METADATA_CACHE_BYTES, hdf5_output

    _, _, path = monaco_dataset
    loader = TileDataset(path)
    for i in range(0, len(loader), 7):
        loader[i]
    with open_dataset(path) as f, hdf5_output(tmp_path / "copy.h5") as out:
        block = read_tiles(f, 0, len(f["tiles/name"]))
        for name in ("entities/osm_id", "graph/nodes"):
            out[name] = block[name]
        for handle in (f, out, loader._file):
            config = handle.id.get_mdc_config()
            assert (config.max_size, config.incr_mode) == (METADATA_CACHE_BYTES, 0)
            assert handle.id.get_mdc_size()[0] <= METADATA_CACHE_BYTES
    # and there is no other way in: every HDF5 file is opened through gjp.io.open_h5
    package = Path(__file__).resolve().parents[1] / "gjp"
    openers = [str(p.relative_to(package)) for p in package.rglob("*.py")
               if "h5py.File(" in p.read_text() and p.name != "io.py"]
    assert openers == []
