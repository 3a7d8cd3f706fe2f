"""`gjp pretrain --model polygnn` and `gjp embed --model polygnn`: the loss falls, runs are
reproducible, checkpoints round-trip, and embeddings feed knn --entity, probe and score."""

import json
import shutil

import numpy as np
import pytest
import torch

from gjp.embedders.geometry import load_polygnn
from gjp.embeddings import read_embeddings
from gjp.errors import GjpError
from gjp.pretrain.polygnn import PolygnnTrainConfig, learning_rate, pretrain_polygnn
from gjp.pretrain.runs import read_metrics

TINY = dict(preset="tiny", n_per_class=3, epochs=4, batch_size=32, warmup_steps=5)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    report = pretrain_polygnn(out, PolygnnTrainConfig(pretext="digits", seed=0, **TINY), device="cpu")
    return out, report


def test_the_learning_rate_warms_up_then_follows_a_cosine():
    config = PolygnnTrainConfig(lr=1e-2, min_lr=1e-4, warmup_steps=10)
    rates = [learning_rate(s, 110, config) for s in range(110)]
    assert rates[0] == pytest.approx(1e-3) and rates[9] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] == pytest.approx(1e-4, rel=0.01)


def test_a_digits_run_writes_its_directory_and_learns(digits_run):
    out, report = digits_run
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl", "model.pt", "report.html",
                                                     "summary.json"]
    assert (out / "report.html").read_text().count("<svg") >= 3
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "gjp-run" and config["model"] == "polygnn" and config["train"]["seed"] == 0
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # the loss falls on a tiny data set
    assert report.best_epoch in (1, 2, 3, 4) and 0 <= report.test["accuracy"] <= 1


def test_same_seed_same_weights(digits_run, tmp_path):
    out, _ = digits_run
    again = tmp_path / "again"
    pretrain_polygnn(again, PolygnnTrainConfig(pretext="digits", seed=0, **TINY), device="cpu")
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(again / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_osm_run_reports_every_target(monaco_dataset, tmp_path):
    _, _, dataset = monaco_dataset
    report = pretrain_polygnn(tmp_path / "osm", PolygnnTrainConfig(
        pretext="osm", dataset=str(dataset), preset="tiny", epochs=6, batch_size=64, warmup_steps=5,
        max_entities=None), device="cpu")  # all of Monaco: a 2,000 sample leaves ~200 train entities
    for key in ("kind_accuracy", "r2_log_area", "r2_aspect", "r2_log_length", "r2_elongation", "r2_log_parts"):
        assert np.isfinite(report.val[key]), key
    assert report.val["kind_accuracy"] > 0.4  # points, lines and polygons differ in their graphs


def test_embed_knn_probe_and_info_on_a_real_extract(digits_run, monaco_dataset, tmp_path, run_gjp):

    run, _ = digits_run
    root, _, dataset = monaco_dataset
    out = tmp_path / "polygnn.h5"

    def gjp(*args):
        return run_gjp(args)[0]

    assert gjp("-q", "embed", "--model", "polygnn", "--checkpoint", run, "-i", dataset, "-o", out) == 0
    emb = read_embeddings(out, entities=True)
    assert emb.vectors.shape[1] == 2 * emb.entity_vectors.shape[1] and np.isfinite(emb.vectors).all()
    assert len(emb.entity_vectors) == emb.entity_offsets[-1]
    # the same checkpoint gives identical entity embeddings when loaded again
    encoder, _ = load_polygnn(run)
    from gjp.dataset.format import open_dataset
    from gjp.dataset.graphs import EntityGraphs

    with open_dataset(dataset) as f:
        graphs = EntityGraphs.from_dataset(f)
    with torch.no_grad():
        direct = encoder(graphs.batch(np.arange(50))).numpy()
    np.testing.assert_allclose(direct, emb.entity_vectors[:50], atol=1e-5)
    # knn --entity finds entities; the nearest of a building is another polygon
    from gjp.evaluate.knn import query_entities

    _, hits, ref = query_entities(out, f"{emb.names[0]}:0", 5, "cosine")
    assert len(hits) == 5 and ref == f"{emb.names[0]}:0"
    page = tmp_path / "shapes.html"
    assert gjp("knn", "-e", out, "--entity", "--query", ref, "-k", "5", "--html", page, "-i", dataset) == 0
    assert page.read_text().count("<svg") == 6  # the query and its five neighbours, each drawn
    assert gjp("info", run) == 0
    # probe and score take it like any other model
    assert gjp("-q", "mktask", "building_count", "-i", dataset, "-o", tmp_path / "tasks" / "bc") == 0
    assert gjp("-q", "probe", "-e", out, "--task", tmp_path / "tasks" / "bc", "--head", "linear", "--seeds", "1",
               "-o", tmp_path / "results") == 0
    assert gjp("score", *sorted((tmp_path / "results").glob("*.json"))) == 0


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "model.pt").write_bytes(b"not a checkpoint"), "not a readable checkpoint"),
    (lambda run: (run / "config.json").write_text('{"format": "gjp-run", "format_version": 9}'), "version 9"),
    (lambda run: (run / "config.json").write_text(
        (run / "config.json").read_text().replace('"polygnn"', '"geojepa"')), "not 'polygnn'"),
    (lambda run: (run / "config.json").write_text(
        (run / "config.json").read_text().replace('"hidden": 32', '"hidden": 16')), "do not fit"),
], ids=["corrupt-weights", "other-version", "other-model", "other-size"])
def test_a_bad_checkpoint_is_one_line(digits_run, tmp_path, damage, message):
    run = tmp_path / "run"
    shutil.copytree(digits_run[0], run)
    damage(run)
    with pytest.raises(GjpError, match=message):
        load_polygnn(run)


def _nan_vertex(path):
    import h5py

    with h5py.File(path, "r+") as f:
        nodes = f["graph/nodes"][()]
        nodes[7] = np.nan
        f["graph/nodes"][...] = nodes


@pytest.mark.parametrize("args, damage, message", [
    (["embed", "--model", "polygnn", "--checkpoint", "run", "-o", "e.h5"],
     lambda ws: (ws / "run" / "model.pt").write_bytes(b"\x00" * 100), "not a readable checkpoint"),
    (["embed", "--model", "polygnn", "-o", "e.h5"], None, "--checkpoint"),
    (["embed", "--model", "polygnn", "--checkpoint", "run", "-o", "e.h5"],
     lambda ws: _nan_vertex(ws / "dataset.h5"), "not finite"),
    (["pretrain", "--model", "polygnn", "--pretext", "osm", "-o", "runs/x"],
     lambda ws: _nan_vertex(ws / "dataset.h5"), "not finite"),
    (["pretrain", "--model", "polygnn", "--pretext", "osm", "-i", "chips.h5", "-o", "runs/x"], None,
     "no entity graphs"),
    (["pretrain", "--model", "polygnn", "--pretext", "digits", "-o", "run"], None, "--overwrite"),
], ids=["corrupt-checkpoint", "no-checkpoint", "nan-vertex-embed", "nan-vertex-pretrain", "images-only",
        "run-exists"])
def test_bad_input_to_the_geometry_steps(digits_run, monaco_dataset, tmp_path, args, damage, message, run_gjp):
    from PIL import Image

    from gjp.dataset.pack import pack_dataset
    from gjp.imagery.chips import import_chips

    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copytree(digits_run[0], ws / "run")
    shutil.copy(monaco_dataset[2], ws / "dataset.h5")
    (ws / "chips").mkdir()
    Image.fromarray(np.full((224, 224, 4), 255, np.uint8), mode="RGBA").save(ws / "chips" / "16_1_1.png")
    import_chips([ws / "chips" / "16_1_1.png"], ws / "images")
    pack_dataset(None, ws / "chips.h5", images_dir=ws / "images")
    if damage is not None:
        damage(ws)
    before = sorted(str(p.relative_to(ws)) for p in ws.rglob("*"))
    code, _, err = run_gjp(["-q", *args], ws)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("gjp: error: ") and message in lines[0], err
    assert sorted(str(p.relative_to(ws)) for p in ws.rglob("*")) == before
