"""Probes, nearest neighbours, the score table and the baseline embedders."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gjp.embeddings import read_embeddings, write_embeddings
from gjp.errors import GjpError
from gjp.evaluate.knn import search
from gjp.evaluate.probe import ProbeConfig, fit_head, metrics, probe
from gjp.evaluate.score import render, score_table


def synthetic_task(tmp_path, x, y, name="synthetic", clamp=(-1e9, 1e9)):
    """A task directory and an embeddings file over tiles t0 … tN."""
    n = len(y)
    tiles = [f"16_{i}_0" for i in range(n)]
    split = np.array(["train"] * n, dtype=object)
    split[int(0.6 * n):int(0.8 * n)] = "val"
    split[int(0.8 * n):] = "test"
    task = tmp_path / name
    task.mkdir()
    pq.write_table(pa.table({"tile": tiles, "group": tiles, "label": y.astype(float), "split": list(split)}),
                   task / "labels.parquet")
    (task / "task.json").write_text(json.dumps({"format": "gjp-task", "format_version": 1, "task": name,
                                                "masked": False, "clamp": list(clamp)}))
    (task / "stats.json").write_text("{}")
    write_embeddings(tmp_path / f"{name}.h5", tiles, x, model="synthetic", dataset="none")
    return task, tmp_path / f"{name}.h5"


def test_linear_probe_recovers_a_linear_signal(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 16))
    w = rng.normal(size=16)
    y = x @ w + rng.normal(scale=0.1, size=1500)  # noise MAE ≈ 0.08
    task, emb = synthetic_task(tmp_path, x, y)
    r = probe(emb, task, tmp_path / "results", config=ProbeConfig(head="linear", seeds=3, max_epochs=2000)).result
    assert r["test_mae_mean"] < 0.15 < r["dummy"]["test_mae"] / 10
    assert r["n"] == {"train": 900, "val": 300, "test": 300}


def test_probe_on_noise_does_not_beat_the_dummy(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 32))
    y = rng.normal(size=600)
    task, emb = synthetic_task(tmp_path, x, y)
    r = probe(emb, task, tmp_path / "results", config=ProbeConfig(head="mlp", seeds=2)).result
    assert r["test_mae_mean"] > 0.9 * r["dummy"]["test_mae"]


def test_early_stopping_restores_the_best_epoch_and_is_deterministic():
    rng = np.random.default_rng(2)
    x = {s: rng.normal(size=(n, 64)) for s, n in (("train", 60), ("val", 200), ("test", 200))}
    w = rng.normal(size=64)
    y = {s: v @ w + rng.normal(scale=2.0, size=len(v)) for s, v in x.items()}  # few samples: it overfits
    config = ProbeConfig(head="mlp", hidden=512, patience=30, max_epochs=400)
    fit = fit_head(x, y, (-1e9, 1e9), config, seed=0)
    assert fit["best_epoch"] < fit["epochs"] - 1  # it kept training past the best epoch …
    assert metrics(fit["val"], y["val"], False)["mae"] == pytest.approx(fit["best_val_mae"])  # … and went back
    again = fit_head(x, y, (-1e9, 1e9), config, seed=0)
    np.testing.assert_array_equal(fit["test"], again["test"])


def test_a_head_starts_as_the_dummy_and_is_kept_only_if_it_beats_it_on_val():
    """Features without signal and a label that is almost always 0 (as traffic signals in
    a rural region): the head never leaves the dummy, where a randomly started one ends
    worse than it; with a real signal it still learns."""
    rng = np.random.default_rng(4)
    x = {s: rng.normal(size=(n, 32)) for s, n in (("train", 300), ("val", 150), ("test", 150))}
    y = {s: (rng.random(len(v)) < 0.04) * rng.integers(1, 4, len(v)).astype(float) for s, v in x.items()}
    dummy = float(np.median(y["train"]))
    fit = fit_head(x, y, (0, 10), ProbeConfig(head="mlp"), seed=0)
    assert fit["best_epoch"] == 0 and np.all(fit["test"] == dummy)
    random_start = fit_head(x, y, (0, 10), ProbeConfig(head="mlp", from_dummy=False), seed=0)
    assert metrics(random_start["test"], y["test"], False)["mae"] > np.abs(y["test"] - dummy).mean()
    y = {s: v[:, 0] + 0.1 * v[:, 1] for s, v in x.items()}
    fit = fit_head(x, y, (-1e9, 1e9), ProbeConfig(head="linear", max_epochs=2000), seed=0)
    assert fit["best_epoch"] > 0 and metrics(fit["test"], y["test"], False)["mae"] < 0.2


def test_binary_metrics_and_clamping(tmp_path):
    assert metrics(np.array([0.9, 0.2, 0.7, 0.1]), np.array([1.0, 0.0, 0.0, 1.0]), True) == {
        "mae": pytest.approx((0.1 + 0.2 + 0.7 + 0.9) / 4), "accuracy": 0.5, "f1": 0.5}
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 4))
    y = (x[:, 0] > 0).astype(float)
    task, emb = synthetic_task(tmp_path, x, y, clamp=(0, 1))
    r = probe(emb, task, tmp_path / "results", config=ProbeConfig(head="mlp", seeds=2)).result
    assert r["binary"] and r["test_accuracy_mean"] > 0.8 and "test_f1_mean" in r


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_is_exact_excludes_self_and_breaks_ties_by_index(metric):
    rng = np.random.default_rng(4)
    base = rng.normal(size=(500, 8)).astype(np.float32)
    base[100] = base[7]  # a duplicate of a query: distance 0, and ties
    base[300] = base[7]
    queries = np.array([7, 42, 499])
    idx, dist = search(base, base[queries], 5, metric, exclude=queries, chunk_rows=64)
    small = search(base, base[queries], 5, metric, exclude=queries, chunk_rows=3)  # chunks narrower than k
    assert (small[0] == idx).all()
    if metric == "cosine":
        unit = base / np.linalg.norm(base, axis=1, keepdims=True)
        full = 1 - unit[queries] @ unit.T
    else:
        full = np.linalg.norm(base[queries][:, None] - base[None], axis=2)
    for q, row in enumerate(queries):
        full[q, row] = np.inf
        expected = np.lexsort((np.arange(500), np.round(full[q], 5)))[:5]
        assert idx[q].tolist() == expected.tolist()
        np.testing.assert_allclose(dist[q], full[q][expected], atol=1e-4)
        assert row not in idx[q]
    assert idx[0][:2].tolist() == [100, 300]  # the two duplicates first, in index order


def test_score_is_the_harmonic_mean_of_best_over_mae():
    def result(model, task, mae, dummy):
        return {"model": model, "head": "mlp", "task": task, "test_mae_mean": mae, "test_mae_sd": 0.1,
                "dummy": {"test_mae": dummy}}

    probes = [result("a", "t1", 1.0, 4.0), result("a", "t2", 4.0, 8.0),
              result("b", "t1", 2.0, 4.0), result("b", "t2", 2.0, 8.0)]
    tasks, rows = score_table(probes, [{"model": "a", "precision_mean": 0.5}])
    by = {r["name"]: r for r in rows}
    # a: ratios 1 and 0.5 → 2 / (1 + 2) = 2/3; b: 0.5 and 1 → 2/3; dummy: 0.25, 0.25 → 0.25
    assert by["a (mlp)"]["score"] == pytest.approx(2 / 3) and by["b (mlp)"]["score"] == pytest.approx(2 / 3)
    assert by["Dummy (train median)"]["score"] == pytest.approx(0.25)
    assert rows[-1]["name"] == "Dummy (train median)" and by["a (mlp)"]["precision"] == 0.5
    table = render(tasks, rows)
    assert table.splitlines()[0] == "| model | t1 | t2 | score | precision@k |"
    assert "1 ± 0.1" in table and render(tasks, rows, as_csv=True).startswith("model,t1,t2,score")


def test_the_validation_table_ranks_on_the_validation_split_only():
    """Settings are chosen with `gjp score --split val`: its MAEs, its dummy, and never the test numbers."""
    def result(model, val, test):
        return {"model": model, "head": "mlp", "task": "t", "test_mae_mean": test, "test_mae_sd": 0.0,
                "val_mae_mean": val, "val_mae_sd": 0.0, "dummy": {"test_mae": 3.0, "val_mae": 4.0}}

    probes = [result("a", 1.0, 2.0), result("b", 2.0, 1.0)]
    _, test_rows = score_table(probes, [])
    _, val_rows = score_table(probes, [], "val")
    assert [r["model"] for r in test_rows] == ["b", "a", "dummy"]
    assert [r["model"] for r in val_rows] == ["a", "b", "dummy"]
    assert val_rows[-1]["score"] == pytest.approx(0.25) and val_rows[0]["head"] == "mlp"
    del probes[0]["val_mae_mean"]
    with pytest.raises(GjpError, match="no val MAE"):
        score_table(probes, [], "val")


def test_tagpool_is_the_mean_and_max_of_tag_vectors(monaco_dataset, tmp_path):
    import h5py

    from gjp.embedders.baselines import tagcount, tagpool
    from gjp.tag_embeddings import FORMAT, FORMAT_VERSION

    _, _, dataset = monaco_dataset
    with h5py.File(dataset) as f:
        vocab = [v.decode() for v in f["vocab/tags"][()]]
        tile_offsets = f["tiles/entity_offsets"][()]
        tag_offsets = f["entities/tag_offsets"][()]
        tag_ids = f["entities/tag_ids"][()]
    rng = np.random.default_rng(5)
    table = rng.normal(size=(len(vocab), 6)).astype(np.float32)
    path = tmp_path / "tags.parquet"
    pq.write_table(pa.table({"tag": vocab, "text": vocab,
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(table.ravel()), 6)})
                   .replace_schema_metadata({b"gjp": json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                                              "model": "test"}).encode()}), path)
    result = tagpool(dataset, tag_embeddings=path)
    counts = tagcount(dataset)
    for t in (0, 5, len(tile_offsets) - 2):
        entities = []
        for e in range(tile_offsets[t], tile_offsets[t + 1]):
            entities.append(table[tag_ids[tag_offsets[e]:tag_offsets[e + 1]]].mean(axis=0))
        entities = np.array(entities)
        np.testing.assert_allclose(result.vectors[t], np.concatenate([entities.mean(0), entities.max(0)]), rtol=1e-5)
        np.testing.assert_allclose(result.entity_vectors[tile_offsets[t]:tile_offsets[t + 1]], entities, rtol=1e-5)
        ids = tag_ids[tag_offsets[tile_offsets[t]]:tag_offsets[tile_offsets[t + 1]]]
        np.testing.assert_allclose(counts.vectors[t], np.log1p(np.bincount(ids, minlength=len(vocab))))


@pytest.mark.slow
def test_image_backbone_on_real_naip_chips(monaco_dataset, tmp_path):
    """ViT-B/16 with random (seeded) weights on the real NAIP chips, named after dataset tiles."""
    import shutil
    from pathlib import Path

    from gjp.dataset.loader import TileDataset
    from gjp.dataset.pack import pack_dataset
    from gjp.embedders.embed import embed
    from gjp.imagery.chips import import_chips

    _, graphs, dataset = monaco_dataset
    names = TileDataset(dataset).names[:4]
    chips = tmp_path / "chips"
    chips.mkdir()
    real = sorted((Path(__file__).parent / "data" / "naip_z16").glob("*.webp"))
    for name, src in zip(names, real):
        shutil.copy(src, chips / f"{name}.webp")
    import_chips(sorted(chips.glob("*.webp")), tmp_path / "images")
    pack_dataset(graphs, tmp_path / "with_images.h5", images_dir=tmp_path / "images")
    report = embed("vit_b_16", tmp_path / "with_images.h5", tmp_path / "vit.h5", weights="none", batch_size=4)
    emb = read_embeddings(tmp_path / "vit.h5")
    assert emb.names == names and emb.vectors.shape == (4, 768) and np.isfinite(emb.vectors).all()
    assert report.skipped == len(TileDataset(dataset)) - 4
    again = embed("vit_b_16", tmp_path / "with_images.h5", tmp_path / "vit2.h5", weights="none", batch_size=4)
    np.testing.assert_allclose(read_embeddings(tmp_path / "vit2.h5").vectors, emb.vectors, atol=1e-5)  # seeded
    assert again.tiles == 4
    assert np.linalg.norm(emb.vectors[0] - emb.vectors[1]) > 1e-3  # different chips, different vectors


@pytest.mark.slow
def test_image_backbone_loads_a_local_state_dict(monaco_dataset, tmp_path):
    import shutil
    from pathlib import Path

    import torch
    import torchvision

    from gjp.dataset.pack import pack_dataset
    from gjp.embedders.embed import embed
    from gjp.errors import GjpError
    from gjp.imagery.chips import import_chips

    chips = tmp_path / "chips"
    chips.mkdir()
    for src in sorted((Path(__file__).parent / "data" / "naip_z16").glob("*.webp"))[:2]:
        shutil.copy(src, chips / src.name)
    import_chips(sorted(chips.glob("*.webp")), tmp_path / "images")
    pack_dataset(None, tmp_path / "chips.h5", images_dir=tmp_path / "images")
    torch.manual_seed(123)
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "resnet.pt")
    a = embed("resnet50", tmp_path / "chips.h5", tmp_path / "a.h5", weights=str(tmp_path / "resnet.pt"))
    embed("resnet50", tmp_path / "chips.h5", tmp_path / "b.h5", weights="none")
    va, vb = read_embeddings(tmp_path / "a.h5").vectors, read_embeddings(tmp_path / "b.h5").vectors
    assert a.dim == 2048 and va.shape == (2, 2048) and not np.allclose(va, vb)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(GjpError, match="not a PyTorch state dict"):
        embed("resnet50", tmp_path / "chips.h5", tmp_path / "c.h5", weights=str(tmp_path / "junk.pt"))


def _tag_table(dataset, path, dim=6, seed=5):
    """A random tag-embeddings file for ``dataset``'s vocabulary."""
    import h5py

    from gjp.tag_embeddings import FORMAT, FORMAT_VERSION

    with h5py.File(dataset) as f:
        vocab = [v.decode() for v in f["vocab/tags"][()]]
    table = np.random.default_rng(seed).normal(size=(len(vocab), dim)).astype(np.float32)
    pq.write_table(pa.table({"tag": vocab, "text": vocab,
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(table.ravel()), dim)})
                   .replace_schema_metadata({b"gjp": json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                                              "model": "test"}).encode()}), path)
    return path


def test_tile_blocks_bound_tiles_and_entities_and_keep_whole_batches():
    from gjp.embedders.baselines import tile_blocks

    offsets = np.concatenate([[0], np.cumsum([3, 0, 50, 1, 1, 1, 200, 0, 2, 2])])
    blocks = list(tile_blocks(offsets, block_tiles=4, block_entities=10))
    assert blocks[0] == (0, 2) and blocks[-1][1] == 10
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))  # consecutive, every tile once
    for t0, t1 in blocks:  # a block exceeds the entity bound only when it is one tile
        assert t1 - t0 <= 4 and (offsets[t1] - offsets[t0] <= 10 or t1 - t0 == 1)
    batched = list(tile_blocks(offsets, block_tiles=5, block_entities=10, multiple=2))
    assert all(t0 % 2 == 0 for t0, _ in batched) and batched[-1][1] == 10


def test_embeddings_are_identical_in_any_block_size(monaco_dataset, tmp_path, monkeypatch):
    """Blocks of 3 tiles (and of a few entities) write exactly the vectors of one block."""
    import h5py

    from gjp.embedders import baselines
    from gjp.embedders.embed import embed

    _, _, dataset = monaco_dataset
    tags = _tag_table(dataset, tmp_path / "tags.parquet")
    for model in ("tagcount", "tagpool"):
        whole = baselines.EMBEDDERS[model](dataset, tag_embeddings=tags, block_tiles=10**9)
        assert embed(model, dataset, tmp_path / f"{model}.h5", tag_embeddings=tags).tiles == len(whole.names)
        monkeypatch.setattr(baselines, "BLOCK_ENTITIES", 7)
        embed(model, dataset, tmp_path / f"{model}-small.h5", tag_embeddings=tags, block_tiles=3)
        monkeypatch.undo()
        with h5py.File(tmp_path / f"{model}.h5") as a, h5py.File(tmp_path / f"{model}-small.h5") as b:
            assert sorted(a) == sorted(b)
            for name in ("tiles/name", "tiles/vectors", "entities/offsets", "entities/vectors",
                         "entities/osm_type", "entities/osm_id"):
                assert (name in a) == (model == "tagpool" or name.startswith("tiles"))
                if name in a:
                    np.testing.assert_array_equal(a[name][()], b[name][()])
            np.testing.assert_array_equal(a["tiles/vectors"][()], whole.vectors)
        emb = read_embeddings(tmp_path / f"{model}.h5", entities=model == "tagpool")
        with h5py.File(dataset) as f:
            assert emb.names == [n.decode() for n in f["tiles/name"][()]]
            if model == "tagpool":
                np.testing.assert_array_equal(emb.entity_offsets, f["tiles/entity_offsets"][()])
                np.testing.assert_array_equal(emb.entity_osm_id, f["entities/osm_id"][()])


def test_a_non_finite_block_writes_nothing(tmp_path):
    from gjp.embeddings import EmbeddingsWriter
    from gjp.errors import GjpError
    from gjp.io import hdf5_output

    out = tmp_path / "e.h5"
    with pytest.raises(GjpError, match="not finite"):
        with hdf5_output(out) as f:
            writer = EmbeddingsWriter(f, out, np.array([b"a", b"b", b"c"]), model="m", dataset="d")
            writer.append(np.ones((2, 4)))
            writer.append(np.array([[np.nan, 0, 0, 0]]))
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_streamed_from_the_file_and_in_query_batches_is_the_same(tmp_path, metric, monkeypatch):
    import h5py

    from gjp.embeddings import open_embeddings
    from gjp.evaluate import knn

    rng = np.random.default_rng(6)
    base = np.round(rng.normal(size=(3000, 8)), 1).astype(np.float32)  # coarse: ties and duplicates
    write_embeddings(tmp_path / "e.h5", [f"16_{i}_0" for i in range(3000)], base, model="m", dataset="none")
    queries = np.sort(rng.choice(3000, 300, replace=False))
    want = search(base, base[queries], 8, metric, exclude=queries, chunk_rows=700)
    with open_embeddings(tmp_path / "e.h5") as emb:
        np.testing.assert_array_equal(emb.tiles.take(queries[::-1]), base[queries[::-1]])
        got = search(emb.tiles, emb.tiles.take(queries), 8, metric, exclude=queries, chunk_rows=700)
    monkeypatch.setattr(knn, "QUERY_BATCH", 64)
    monkeypatch.setattr(knn, "EXACT_QUERIES", 5)
    batched = search(base, base[queries], 8, metric, exclude=queries, chunk_rows=700)
    for other in (got, batched):
        np.testing.assert_array_equal(other[0], want[0])
        np.testing.assert_array_equal(other[1], want[1])
    with h5py.File(tmp_path / "e.h5", "r+") as f:
        f["tiles/vectors"][2500] = np.nan
    from gjp.errors import GjpError

    with open_embeddings(tmp_path / "e.h5") as emb, pytest.raises(GjpError, match="1 of 3000 vectors"):
        search(emb.tiles, base[:2], 8, metric)


def test_knn_eval_samples_queries_deterministically(monaco_dataset, tmp_path, monkeypatch):
    from gjp.dataset import tags as raw_tags
    from gjp.embedders.embed import embed
    from gjp.evaluate.knn import evaluate_retrieval, tile_categories

    _, _, dataset = monaco_dataset
    emb = tmp_path / "tagcount.h5"
    embed("tagcount", dataset, emb)
    categories = tmp_path / "c.toml"
    categories.write_text('buildings = { building = "*" }\nshops = { shop = "*", amenity = ["cafe", "restaurant"] }\n'
                          'nothing = { "no-such-key" = "*" }\n')
    import h5py

    with h5py.File(dataset) as f:  # every tag's tile, key and value, the plain way
        names = f["tiles/name"][()]
        tile_of_entity = np.repeat(np.arange(len(names)), np.diff(f["tiles/entity_offsets"][()]))
        tile_of_tag = tile_of_entity[np.repeat(np.arange(len(tile_of_entity)), np.diff(f["entities/tag_offsets"][()]))]
        keys = f["strings/keys"][()][f["entities/tag_key_ids"][()]]
        values = f["strings/values"][()][f["entities/tag_value_ids"][()]]
    monkeypatch.setattr(raw_tags, "TILES_PER_BLOCK", 3)  # tags and string tables read in small blocks
    monkeypatch.setattr(raw_tags, "STRING_ROWS", 7)
    members = tile_categories(dataset, names[::-1], {"b": {"building": "*"}, "s": {"amenity": ["cafe"]}})
    flip = len(names) - 1  # names given in reverse: indices into that order
    assert members["b"].tolist() == sorted(flip - np.unique(tile_of_tag[keys == b"building"]))
    assert members["s"].tolist() == sorted(flip - np.unique(tile_of_tag[(keys == b"amenity") & (values == b"cafe")]))
    assert len(members["b"]) > 10 and len(members["s"]) > 2

    def run(name, **kw):
        return evaluate_retrieval(emb, dataset, categories=categories, output_dir=tmp_path / name, **kw).result

    everything, default = run("all", queries=10**9), run("default")
    assert everything["categories"] == default["categories"]  # fewer tiles than the default sample
    assert everything["queries"] == everything["query_tiles"] and everything["too_small"] == {"nothing": 0}
    some, again, other = run("some", queries=20), run("again", queries=20), run("other", queries=20, seed=1)
    assert some["categories"] == again["categories"] and some["queries"] == 20 and some["query_seed"] == 0
    assert sum(c["queries"] for c in some["categories"].values()) >= 20 > sum(
        c["queries"] for c in everything["categories"].values()) / 5
    assert other["categories"] != some["categories"]
    for name, c in some["categories"].items():  # the same tiles, a share of them asked
        assert c["tiles"] == everything["categories"][name]["tiles"] and c["queries"] <= c["tiles"]


def test_knn_eval_split_asks_only_the_tiles_of_one_split_and_score_shows_that_half(monaco_dataset, tmp_path,
                                                                                   run_gjp):
    """knn --eval --split val|test: the queries are the category tiles of that split's
    groups, each searched against every tile; the two halves partition the queries of
    the whole, each is written apart, and `score --split` shows its own half."""
    import json

    from gjp.dataset.format import decode, open_dataset
    from gjp.embedders.embed import embed
    from gjp.embeddings import open_embeddings
    from gjp.evaluate.knn import category_precision, evaluate_retrieval, tile_categories
    from gjp.evaluate.score import load_results, score_table

    _, _, dataset = monaco_dataset
    emb = tmp_path / "tagcount.h5"
    embed("tagcount", dataset, emb)
    categories = tmp_path / "c.toml"
    categories.write_text('buildings = { building = "*" }\nshops = { shop = "*", amenity = ["cafe", "restaurant"] }\n')
    with open_dataset(dataset) as f:
        groups = decode(f["tiles/group"][()])
    distinct = sorted(set(groups))
    splits = tmp_path / "splits.csv"   # every other group in val; the rest (and any unlisted) in test
    splits.write_text("group,split\n" + "".join(f"{g},{'val' if i % 2 else 'test'}\n" for i, g in enumerate(distinct)))
    out = tmp_path / "results"
    whole = evaluate_retrieval(emb, dataset, categories=categories, output_dir=out).result
    halves = {s: evaluate_retrieval(emb, dataset, categories=categories, output_dir=out, query_split=s,
                                    splits=splits) for s in ("val", "test")}
    assert sorted(p.name for p in out.iterdir()) == ["tagcount__knn.json", "tagcount__knn__test.json",
                                                     "tagcount__knn__val.json"]
    with open_embeddings(emb) as e:
        names, vectors = e.names, e.tiles.block(0, len(e.names))
    with open_dataset(dataset) as f:
        assert (names == np.asarray(f["tiles/name"][()], dtype=bytes)).all()  # embedding rows = dataset tiles
    members = tile_categories(dataset, names, {"buildings": {"building": "*"},
                                               "shops": {"shop": "*", "amenity": ["cafe", "restaurant"]}})
    val_groups = set(distinct[1::2])
    for name, rows in members.items():
        asked = {s: rows[np.isin(np.asarray(groups)[rows], list(val_groups)) == (s == "val")] for s in halves}
        assert len(asked["val"]) and len(asked["test"])
        for s, report in halves.items():
            got = report.result["categories"][name]
            assert got["queries"] == len(asked[s]) and got["tiles"] == len(rows)
            assert got["precision"] == pytest.approx(category_precision(vectors, rows, asked[s], 8))
        assert sum(h.result["categories"][name]["queries"] for h in halves.values()) == \
            whole["categories"][name]["queries"]
    assert halves["val"].result["query_split"] == "val" and whole["query_split"] is None
    assert "queries from the val groups" in halves["val"].summary()

    probes, retrieval = load_results(sorted(out.glob("*.json")))
    for s in ("val", "test"):
        precision = {r["model"]: r["precision"] for r in score_table(probes, retrieval, s)[1]}
        assert precision["tagcount"] == pytest.approx(halves[s].result["precision_mean"])
    assert score_table([], [r for r in retrieval if not r["query_split"]], "val")[1][0]["precision"] == \
        pytest.approx(whole["precision_mean"])
    copy = tmp_path / "again.json"
    copy.write_text(json.dumps(halves["val"].result))
    with pytest.raises(GjpError, match="a second result for tagcount / knn / val"):
        load_results([out / "tagcount__knn__val.json", copy])

    code, _, err = run_gjp(["knn", "-e", str(emb), "-i", str(dataset), "--eval", "--split", "val", "--splits",
                            str(tmp_path / "missing.csv"), "-o", str(tmp_path / "r2")])
    assert code == 1 and "missing.csv" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()
    nowhere = tmp_path / "nowhere.csv"
    nowhere.write_text("group,split\n" + "".join(f"{g},train\n" for g in distinct))
    code, _, err = run_gjp(["knn", "-e", str(emb), "-i", str(dataset), "--eval", "--split", "val", "--splits",
                            str(nowhere), "-o", str(tmp_path / "r3")])
    assert code == 1 and "nowhere.csv" in err and "no tile" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_gjp(["knn", "-e", str(emb), "--query", "16_1_1", "--split", "val"])
    assert code == 2 and "--split" in err
