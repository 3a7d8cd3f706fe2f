"""`gjp pretrain --modalities T,G`: a tiny GeoJEPA learns on a real extract, never sees a
test group, and refuses bad input with one line."""

import json
import shutil

import numpy as np
import pytest

from gjp.dataset.format import decode, open_dataset
from gjp.errors import GjpError
from gjp.pretrain.geojepa import GeoJepaTrainConfig, pretrain_geojepa, tile_splits
from gjp.pretrain.polygnn import PolygnnTrainConfig, pretrain_polygnn


@pytest.fixture(scope="module")
def workspace(monaco_dataset, tmp_path_factory):
    """Monaco's dataset, its splits (from a task), tag embeddings, a tiny geometry encoder."""
    from gjp.tag_embeddings import embed_tags
    from gjp.tasks.make import make_task
    from gjp.tasks.spec import load_spec

    ws = tmp_path_factory.mktemp("jepa")
    shutil.copy(monaco_dataset[2], ws / "dataset.h5")
    make_task(load_spec("building_count"), ws / "dataset.h5", ws / "tasks" / "building_count")
    embed_tags(ws / "dataset.h5", ws / "tag-embeddings.parquet")
    pretrain_polygnn(ws / "runs" / "polygnn", PolygnnTrainConfig(pretext="digits", n_per_class=2, epochs=1),
                     device="cpu")
    return ws


def config(ws, **overrides):
    values = dict(dataset=str(ws / "dataset.h5"), tag_embeddings=str(ws / "tag-embeddings.parquet"),
                  geometry_encoder=str(ws / "runs" / "polygnn"), splits=str(ws / "tasks" / "splits.csv"),
                  epochs=4, batch_size=8, lr=1e-3)
    return GeoJepaTrainConfig(**{**values, **overrides})


def test_a_tiny_geojepa_learns_and_reports_validation(workspace, tmp_path):
    report = pretrain_geojepa(tmp_path / "run", config(workspace), device="cpu")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = np.mean([r["prediction"] for r in rows[:3]]), np.mean([r["prediction"] for r in rows[-3:]])
    assert last < 0.8 * first
    assert report.val_loss is not None and np.isfinite(report.val_loss)
    assert all(r["target_std"] > 0 and r["context_tokens"] > 0 and r["target_tokens"] > 0 for r in rows)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl",
                                                                  "report.html", "summary.json"]
    data = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert len(data["tag_embeddings_sha256"]) == len(data["geometry_encoder_sha256"]) == 64
    assert data["dataset"]["dataset_size"] == (workspace / "dataset.h5").stat().st_size
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count("<svg") >= 10 and "val_loss" in page and "target_rank" in page


def test_no_test_group_tile_enters_pretraining(workspace):
    train, val = tile_splits(workspace / "dataset.h5", workspace / "tasks" / "splits.csv", all_tiles=False)
    with open_dataset(workspace / "dataset.h5") as f:
        groups = decode(f["tiles/group"][()])
    split = dict(line.split(",") for line in (workspace / "tasks" / "splits.csv").read_text().split()[1:])
    assert {split[groups[i]] for i in train} == {"train"} and {split[groups[i]] for i in val} <= {"val"}
    assert not set(train) & set(val)
    held_out = [i for i, g in enumerate(groups) if split.get(g, "test") == "test"]
    assert held_out and not set(held_out) & (set(train) | set(val))


@pytest.mark.parametrize("overrides, message", [
    ({"modalities": "T,I"}, "has no images"),
    ({"modalities": "X"}, "subset of T,G,I"),
    ({"image_tokens": "global"}, "--image-tokens 'global'"),
    ({"tag_embeddings": "nowhere.parquet"}, "no such file"),
    ({"splits": "nowhere.csv"}, "no splits"),
    ({"geometry_encoder": "nowhere"}, "not a run directory"),
], ids=["images", "unknown", "image-tokens", "no-tag-embeddings", "no-splits", "no-geometry-run"])
def test_bad_input_is_one_line_and_writes_nothing(workspace, tmp_path, overrides, message):
    cfg = config(workspace, **overrides)
    for key in ("tag_embeddings", "splits", "geometry_encoder"):
        if key in overrides:
            setattr(cfg, key, str(tmp_path / overrides[key]))
    with pytest.raises(GjpError, match=message):
        pretrain_geojepa(tmp_path / "run", cfg, device="cpu")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def run(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("geojepa-run") / "geojepa-TG"
    pretrain_geojepa(out, config(workspace, epochs=2), device="cpu")
    return out


def test_tile_vectors_are_pooled_around_the_mean_pooled_token_of_the_train_tiles(workspace, run, tmp_path):
    """Pretraining ends by measuring the mean of the tokens a tile vector pools (the tiny
    preset's: the residual stream after the first block) over the train tiles (whole,
    unmasked, as embed reads them); tile vectors pool those tokens centred on it. A
    checkpoint from before the centre existed loads with a zero centre: its tile vectors
    stay [mean ‖ max] of the uncentred tokens."""
    import torch

    from gjp.dataset.loader import TileDataset, collate_tiles
    from gjp.embedders.geojepa import geojepa_embeddings, load_geojepa

    tokenizer, model, _ = load_geojepa(run)
    train, _ = tile_splits(workspace / "dataset.h5", workspace / "tasks" / "splits.csv", False)
    tiles = TileDataset(workspace / "dataset.h5", train)
    outputs = []
    with torch.no_grad():
        for i in range(len(tiles)):  # one tile at a time: no batch can shape the reference
            tokens, _, padding = tokenizer(collate_tiles([tiles[i]]))
            outputs.append(model.pooled_tokens(tokens, padding)[0][~padding])
    centre = torch.cat(outputs).double().mean(dim=0).float()
    assert float(centre.norm()) > 0.1
    torch.testing.assert_close(model.token_center, centre, atol=1e-5, rtol=1e-4)

    vectors = geojepa_embeddings(workspace / "dataset.h5", run).vectors
    first = TileDataset(workspace / "dataset.h5")[0]
    with torch.no_grad():
        tokens, _, padding = tokenizer(collate_tiles([first]))
        pooled, output = model.pooled_tokens(tokens, padding)
        out = pooled[~padding]
    assert model.config.pool_layer == 1 and not torch.allclose(out, output[~padding])
    d = out.shape[1]
    np.testing.assert_allclose(vectors[0, :d], (out - centre).mean(dim=0).numpy(), atol=1e-5)
    np.testing.assert_allclose(vectors[0, d:], (out - centre).amax(dim=0).numpy(), atol=1e-5)

    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    checkpoint = torch.load(old / "checkpoint.pt", weights_only=True)
    del checkpoint["model"]["token_center"]
    torch.save(checkpoint, old / "checkpoint.pt")
    assert float(load_geojepa(old)[1].token_center.abs().sum()) == 0
    raw = geojepa_embeddings(workspace / "dataset.h5", old).vectors
    np.testing.assert_allclose(raw[0, :d], out.mean(dim=0).numpy(), atol=1e-5)
    np.testing.assert_allclose(raw[0, d:], out.amax(dim=0).numpy(), atol=1e-5)


def test_the_token_centre_pass_keeps_its_batches_within_the_entity_budget(workspace, run, monkeypatch):
    """The centre pass's memory is bounded by settings: no batch holds more than
    batch_size tiles or (unless it is one tile) CENTER_BATCH_ENTITIES padded entity
    slots, and the centre does not depend on the budget."""
    import types

    import torch

    import gjp.dataset.loader as loader
    from gjp.dataset.loader import TileDataset
    from gjp.embedders.geojepa import load_geojepa
    from gjp.pretrain import geojepa as pretrain
    from gjp.pretrain.distributed import Distributed
    from gjp.ui import QUIET

    tokenizer, model, _ = load_geojepa(run)
    train, _ = tile_splits(workspace / "dataset.h5", workspace / "tasks" / "splits.csv", False)
    tiles = TileDataset(workspace / "dataset.h5", train)
    step = types.SimpleNamespace(target_tokenizer=None, tokenizer=tokenizer, model=model, eval=lambda: None)
    batches, collate = [], loader.collate_tiles
    monkeypatch.setattr(loader, "collate_tiles", lambda samples: batches.append(samples) or collate(samples))
    monkeypatch.setattr(pretrain, "CENTER_BATCH_ENTITIES", 64)
    centre = pretrain._token_center(step, tiles, config(workspace), torch.device("cpu"), Distributed(), QUIET)
    sizes = [(len(b), max(len(s.kind) for s in b)) for b in batches]
    assert sum(n for n, _ in sizes) == len(tiles) and len(sizes) > len(tiles) / config(workspace).batch_size
    assert all(n <= config(workspace).batch_size and (n == 1 or n * max(widest, 1) <= 64) for n, widest in sizes)
    torch.testing.assert_close(centre, model.token_center, atol=1e-5, rtol=1e-4)


def test_embeddings_do_not_depend_on_the_batch_and_feed_every_evaluation(workspace, run, tmp_path):
    from gjp.embedders.embed import embed
    from gjp.embedders.geojepa import geojepa_embeddings
    from gjp.embeddings import read_embeddings

    one = geojepa_embeddings(workspace / "dataset.h5", run, batch_size=1)
    many = geojepa_embeddings(workspace / "dataset.h5", run, batch_size=16)
    np.testing.assert_allclose(one.vectors, many.vectors, atol=1e-5)
    np.testing.assert_allclose(one.entity_vectors, many.entity_vectors, atol=1e-5)
    report = embed(str(run), workspace / "dataset.h5", tmp_path / "e.h5")
    emb = read_embeddings(tmp_path / "e.h5", entities=True)
    assert report.model == "geojepa-TG" and emb.vectors.shape[1] == 2 * emb.entity_vectors.shape[1]
    from gjp.evaluate.knn import query_entities, query_tiles

    assert len(query_tiles(tmp_path / "e.h5", emb.names[0], 3, "cosine")[1]) == 3
    assert len(query_entities(tmp_path / "e.h5", f"{emb.names[0]}:0", 3, "cosine")[1]) == 3


def test_targets_come_from_a_moving_average_of_the_tokenizer_without_augmentation(workspace, run, tmp_path):
    """As I-JEPA's target encoder averages the whole context encoder, input embedding
    included: the targets' tokens are clean (no modality dropout, no position noise), the
    EMA moves the tokenizer's trained weights and never its frozen tag table, and the
    tile vectors are read through that tokenizer."""
    import torch

    from gjp.dataset.format import read_vocabulary
    from gjp.dataset.loader import BatchIndices, TileDataset
    from gjp.embedders.geojepa import load_geojepa
    from gjp.models.geojepa import TileJepa
    from gjp.pretrain.geojepa import build_model
    from gjp.pretrain.masks import MaskConfig, MaskingCollator
    from gjp.pretrain.runs import load_checkpoint

    vocabulary = len(read_vocabulary(workspace / "dataset.h5"))
    table = np.random.default_rng(0).standard_normal((vocabulary, 8)).astype(np.float32)
    tokenizer, model, _ = build_model(config(workspace, modalities="T", modality_dropout=1.0, position_noise=0.1),
                                      table, None)
    step = TileJepa(tokenizer, model, target_tokenizer=True).train()
    assert step.tokenizer.training and not step.target_tokenizer.training
    ds = TileDataset(workspace / "dataset.h5")
    batch = MaskingCollator(MaskConfig(), seed=0)(ds.__getitems__(BatchIndices(range(6), epoch=0, number=0)))
    out = step(batch, torch.Generator().manual_seed(0))
    clean = step.target_tokenizer(batch)[0]
    assert torch.equal(out["targets"], model.target_encoder(clean, out["padding"]))
    noisy = step.tokenizer(batch, torch.Generator().manual_seed(1))[0]
    assert not torch.allclose(noisy, clean)   # the online tokens are augmented, the targets' not
    frozen = step.target_tokenizer.tags.bag.weight.clone()
    trained = step.target_tokenizer.tags.proj[0].weight.clone()
    with torch.no_grad():
        step.tokenizer.tags.proj[0].weight.add_(1.0)
    step.update_target(0.5)
    assert torch.equal(step.target_tokenizer.tags.bag.weight, frozen)
    torch.testing.assert_close(step.target_tokenizer.tags.proj[0].weight, 0.5 * trained + 0.5 * (trained + 1.0))

    ema = tmp_path / "ema"
    pretrain_geojepa(ema, config(workspace, epochs=1, target_tokenizer="ema"), device="cpu")
    checkpoint = load_checkpoint(ema / "checkpoint.pt")
    tokenizer, _, _ = load_geojepa(ema)
    for name, value in tokenizer.state_dict().items():
        assert torch.equal(value, checkpoint["target_tokenizer"][name])
    assert not all(torch.equal(checkpoint["tokenizer"][k], v) for k, v in checkpoint["target_tokenizer"].items())
    # a run of the default (shared) tokenizer, or from before the option, is read through its only one
    old = tmp_path / "old"
    shutil.copytree(run, old)
    settings = json.loads((old / "config.json").read_text())
    assert settings["train"].pop("target_tokenizer") == "shared"
    (old / "config.json").write_text(json.dumps(settings))
    checkpoint = load_checkpoint(old / "checkpoint.pt")
    assert "target_tokenizer" not in checkpoint
    tokenizer, _, _ = load_geojepa(old)
    for name, value in tokenizer.state_dict().items():
        assert torch.equal(value, checkpoint["tokenizer"][name])


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "checkpoint.pt").write_bytes(b"junk"), "not a readable checkpoint"),
    (lambda r: (r / "config.json").write_text((r / "config.json").read_text().replace('"geojepa"', '"polygnn"')),
     "not 'geojepa'"),
    (lambda r: (r / "config.json").write_text((r / "config.json").read_text().replace('"dim": 64', '"dim": 32')),
     "do not fit"),
], ids=["corrupt", "other-model", "other-size"])
def test_a_bad_run_is_one_line(run, tmp_path, damage, message):
    from gjp.embedders.geojepa import load_geojepa

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    damage(copy)
    with pytest.raises(GjpError, match=message):
        load_geojepa(copy)


def test_a_resumed_run_goes_on_exactly_as_an_uninterrupted_one(workspace, tmp_path, monkeypatch):
    import torch

    from gjp.models.geojepa import GeoJepa
    from gjp.pretrain.geojepa import progress_dir

    cfg = config(workspace, epochs=3)
    pretrain_geojepa(tmp_path / "whole", cfg, device="cpu")
    whole = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = sum(r["epoch"] == 1 for r in whole)

    # the same run, killed in its third epoch
    real, calls = GeoJepa.update_target, []

    def dies_in_epoch_three(self, momentum):
        calls.append(1)
        if len(calls) == 2 * per_epoch + 1:
            raise KeyboardInterrupt
        return real(self, momentum)

    monkeypatch.setattr(GeoJepa, "update_target", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        pretrain_geojepa(tmp_path / "cut", cfg, device="cpu")
    monkeypatch.setattr(GeoJepa, "update_target", real)
    assert not (tmp_path / "cut").exists() and (progress_dir(tmp_path / "cut") / "state.pt").exists()
    with pytest.raises(GjpError, match="other settings"):
        pretrain_geojepa(tmp_path / "cut", config(workspace, epochs=3, lr=2e-3), device="cpu", resume=True)
    pretrain_geojepa(tmp_path / "cut", cfg, device="cpu", resume=True)
    resumed = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    assert resumed[-1]["val_loss"] == whole[-1]["val_loss"]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not progress_dir(tmp_path / "cut").exists()
    with pytest.raises(GjpError, match="nothing to resume"):
        pretrain_geojepa(tmp_path / "again", cfg, device="cpu", resume=True)


def test_a_run_stopped_in_the_token_centre_pass_publishes_nothing_and_resumes(workspace, tmp_path, monkeypatch):
    import torch

    import gjp.pretrain.geojepa as trainer
    from gjp.pretrain.geojepa import progress_dir

    cfg = config(workspace, epochs=2)
    pretrain_geojepa(tmp_path / "whole", cfg, device="cpu")
    # an earlier run stands at the output; the new one is stopped after its last step, while measuring the centre
    earlier = tmp_path / "cut"
    earlier.mkdir()
    (earlier / "checkpoint.pt").write_text("the earlier run")
    real = trainer._token_center

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_token_center", stopped)
    with pytest.raises(KeyboardInterrupt):
        pretrain_geojepa(earlier, cfg, device="cpu", overwrite=True)
    monkeypatch.setattr(trainer, "_token_center", real)
    assert [p.name for p in earlier.iterdir()] == ["checkpoint.pt"]
    assert (earlier / "checkpoint.pt").read_text() == "the earlier run"
    assert (progress_dir(earlier) / "state.pt").exists()  # the last whole epoch before the stop
    pretrain_geojepa(earlier, cfg, device="cpu", overwrite=True, resume=True)
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(earlier / "checkpoint.pt", weights_only=True)["model"]
    assert a["token_center"].abs().sum() > 0 and all(torch.equal(a[k], b[k]) for k in a)


def test_a_vertex_that_is_not_finite_is_refused_before_training(workspace, tmp_path):
    import h5py

    damaged = tmp_path / "dataset.h5"
    shutil.copy(workspace / "dataset.h5", damaged)
    with h5py.File(damaged, "r+") as f:
        nodes = f["graph/nodes"][()]
        nodes[3] = np.nan
        f["graph/nodes"][...] = nodes
    with pytest.raises(GjpError, match="not finite"):
        pretrain_geojepa(tmp_path / "run", config(workspace, dataset=str(damaged)), device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.h5"]
    # the scan reads a few vertices at a time and still finds the entity
    from gjp.dataset.graphs import check_dataset_graphs

    with open_dataset(damaged) as f:
        owner = int(np.searchsorted(f["graph/node_offsets"][()], 3, side="right") - 1)
        with pytest.raises(GjpError, match=f"entity {owner} has a vertex"):
            check_dataset_graphs(f, str(damaged), chunk=2)


def test_torchrun_with_two_processes_makes_the_updates_of_one_process_accumulating_their_batches(workspace, tmp_path):
    """DDP (gloo, 2 CPU processes, each its share of the batches) against one process
    that accumulates the same two batches per step: the same losses and weights; only
    rank 0 writes."""
    import os
    import subprocess
    import sys

    import torch

    from gjp.dataset.loader import LengthGroupedBatchSampler

    train, _ = tile_splits(workspace / "dataset.h5", workspace / "tasks" / "splits.csv", all_tiles=False)
    batch = next(b for b in range(6, 20) if len(LengthGroupedBatchSampler(np.ones(len(train)), b)) % 2 == 0)
    common = ["pretrain", "--modalities", "T,G", "-i", "dataset.h5", "--geometry-encoder", "runs/polygnn",
              "--preset", "tiny", "--epochs", "2", "--batch-size", str(batch), "--lr", "1e-3", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    subprocess.run([sys.executable, "-m", "gjp", *common, "--accumulate", "2", "-o", str(tmp_path / "one")],
                   cwd=workspace, env=env, check=True, capture_output=True, timeout=300)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "gjp", *common, "-o", str(tmp_path / "two")],
                         cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.split() == [str(tmp_path / "two")]  # rank 0 alone speaks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # and writes
    one, two = ([json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
                for name in ("one", "two"))
    assert len(one) == len(two) > 2
    assert [r["target_tokens"] for r in one] == [r["target_tokens"] for r in two]
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-4)
    config_two = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config_two["processes"] == 2 and config_two["tiles_per_step"] == 2 * batch
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4, msg=key)


def test_geometry_tokens_are_cached_once_per_encoder_and_equal_the_encoder(workspace, tmp_path, run_gjp):
    import torch

    from gjp.dataset.geometry_tokens import GeometryTokenFile, ensure_geometry_tokens
    from gjp.dataset.loader import TileDataset, collate_tiles
    from gjp.embedders.geometry import load_polygnn

    dataset = tmp_path / "dataset.h5"
    shutil.copy(workspace / "dataset.h5", dataset)
    path = ensure_geometry_tokens(dataset, workspace / "runs" / "polygnn")
    assert path.parent == tmp_path and path.name.startswith("dataset.geometry-tokens.")
    before = path.stat().st_mtime_ns
    assert ensure_geometry_tokens(dataset, workspace / "runs" / "polygnn") == path  # fresh: reused
    assert path.stat().st_mtime_ns == before
    encoder, _ = load_polygnn(workspace / "runs" / "polygnn")
    tiles = TileDataset(dataset, geometry_tokens=path)
    batch = collate_tiles([tiles[i] for i in range(20)])
    with torch.no_grad():
        live = encoder(batch["graph"])
    torch.testing.assert_close(batch["geometry_tokens"], live, rtol=1e-5, atol=1e-5)
    code, out, _ = run_gjp(["info", path])
    assert code == 0 and f"of the {tiles.tile_offsets[-1]} entities of dataset.h5, from the encoder of" in out

    # another encoder: another cache, the first one untouched
    other = tmp_path / "polygnn-2"
    pretrain_polygnn(other, PolygnnTrainConfig(pretext="digits", n_per_class=2, epochs=1, seed=5), device="cpu")
    second = ensure_geometry_tokens(dataset, other)
    assert second != path and path.stat().st_mtime_ns == before
    assert GeometryTokenFile(second).describe()["encoder_sha256"] != GeometryTokenFile(path).describe()["encoder_sha256"]

    # a rewritten dataset: recomputed; a damaged cache: one line naming it
    shutil.copy(workspace / "dataset.h5", tmp_path / "new.h5")  # the same tiles, written again
    (tmp_path / "new.h5").replace(dataset)
    assert ensure_geometry_tokens(dataset, workspace / "runs" / "polygnn") == path
    assert path.stat().st_mtime_ns != before
    path.write_bytes(b"not hdf5")
    with pytest.raises(GjpError, match=f"{path.name}: damaged geometry-token cache"):
        ensure_geometry_tokens(dataset, workspace / "runs" / "polygnn")


def test_loader_workers_change_nothing_and_registers_are_an_option(workspace, tmp_path):
    import torch

    cfg = config(workspace, epochs=1, registers=2)
    pretrain_geojepa(tmp_path / "alone", cfg, device="cpu")
    pretrain_geojepa(tmp_path / "shared", cfg, device="cpu", workers=2)
    alone, shared = ([json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
                     for name in ("alone", "shared"))
    assert [r["loss"] for r in alone] == [r["loss"] for r in shared]
    a = torch.load(tmp_path / "alone" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "shared" / "checkpoint.pt", weights_only=True)["model"]
    assert a["context_encoder.registers"].shape == (1, 2, 64)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretraining_on_shards_equals_pretraining_on_one_file(workspace, monaco_dataset, tmp_path):
    """`pack-h5 --shard-tiles` cuts the same tiles into several files; pretraining on the
    shard directory sees the same train tiles in the same order, so the same batches,
    losses and weights (each shard with its own geometry-token cache)."""
    import torch

    from gjp.dataset.pack import pack_dataset

    with open_dataset(workspace / "dataset.h5") as f:
        n_tiles = len(f["tiles/name"])
    pack_dataset(monaco_dataset[1], tmp_path / "shards", shard_tiles=n_tiles // 3)
    assert len(list((tmp_path / "shards").glob("dataset-*[0-9].h5"))) >= 3
    one = pretrain_geojepa(tmp_path / "one", config(workspace, epochs=2), device="cpu")
    many = pretrain_geojepa(tmp_path / "many", config(workspace, epochs=2, dataset=str(tmp_path / "shards")),
                            device="cpu")
    assert many.train_loss == pytest.approx(one.train_loss, rel=1e-5)
    assert many.val_loss == pytest.approx(one.val_loss, rel=1e-5)
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "many" / "checkpoint.pt", weights_only=True)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    assert len(list((tmp_path / "shards").glob("dataset-*.geometry-tokens.*.h5"))) >= 3
    data = json.loads((tmp_path / "many" / "config.json").read_text())["data"]
    assert isinstance(data["dataset"], list) and len(data["dataset"]) >= 3


def test_settings_for_ablations_reach_the_config_and_refuse_unknown_keys():
    from gjp.models.geojepa import GeoJepaConfig
    from gjp.pretrain.geojepa import build_model, with_settings

    base = GeoJepaTrainConfig(modalities="T")
    cfg = with_settings(base, ["modality_dropout=0", "position_noise=0", 'mask.strategies={"random": 1}',
                               "model.vicreg_beta=0", "momentum=[0.99, 1.0]"])
    assert cfg.modality_dropout == 0.0 and isinstance(cfg.modality_dropout, float) and cfg.position_noise == 0.0
    assert cfg.mask["strategies"] == {"random": 1} and cfg.mask["targets"] == base.mask["targets"]
    assert cfg.momentum == (0.99, 1.0) and base.model == {}
    _, model, model_config = build_model(cfg, np.zeros((5, 8), np.float32), None)
    assert model_config.vicreg_beta == 0 and model_config.dim == GeoJepaConfig.preset("tiny").dim
    for bad, message in (("nosuch=1", "not a pretraining setting"), ("mask.nosuch=1", "not a mask setting"),
                         ("epochs=many", "not of its default's type"), ("modalities", "KEY=VALUE"),
                         ("seed.x=1", "has no keys")):
        with pytest.raises(GjpError, match=message):
            with_settings(base, [bad])
    with pytest.raises(GjpError, match="model.nosuch: not a model setting"):
        build_model(with_settings(base, ["model.nosuch=1"]), np.zeros((5, 8), np.float32), None)
    with pytest.raises(GjpError, match=r"--set model: pool_layer=3: give a block count from 0 to depth \(2\)"):
        build_model(with_settings(base, ["model.pool_layer=3"]), np.zeros((5, 8), np.float32), None)
    assert build_model(with_settings(base, ["model.pool_layer=null"]), np.zeros((5, 8), np.float32),
                       None)[2].pool_layer is None


def test_balanced_tokens_and_a_share_of_the_tiles_are_settings_a_run_keeps(workspace, run, tmp_path):
    """balanced_tokens: entity tokens LayerNorm-ed and a small modality embedding, so the
    conditioning does not drown the content; tile_fraction: a seeded share of the train
    tiles (the scaling study). Both reach the saved run, and embed rebuilds it."""
    import torch

    from gjp.embedders.geojepa import geojepa_embeddings, load_geojepa
    from gjp.pretrain.geojepa import build_model

    table = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    plain, _, _ = build_model(GeoJepaTrainConfig(modalities="T"), table, None)
    balanced, _, _ = build_model(GeoJepaTrainConfig(modalities="T", balanced_tokens=True), table, None)
    assert plain.conditioning.modality.weight.std() > 0.5 > 0.05 > balanced.conditioning.modality.weight.std()
    entities = balanced.eval().fusion(balanced.tags(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2])), None)
    torch.testing.assert_close(entities.std(dim=-1, unbiased=False), torch.ones(2), atol=1e-3, rtol=0)

    half = tmp_path / "half"
    pretrain_geojepa(half, config(workspace, epochs=1, balanced_tokens=True, tile_fraction=0.5), device="cpu")
    whole = json.loads((run / "config.json").read_text())["tiles"]["train"]
    saved = json.loads((half / "config.json").read_text())
    assert saved["tiles"]["train"] == round(whole / 2) and saved["train"]["balanced_tokens"] is True
    tokenizer, _, _ = load_geojepa(half)
    assert isinstance(tokenizer.fusion.mlp[-1], torch.nn.LayerNorm)
    one = geojepa_embeddings(workspace / "dataset.h5", half, batch_size=1)
    many = geojepa_embeddings(workspace / "dataset.h5", half, batch_size=16)
    np.testing.assert_allclose(one.vectors, many.vectors, atol=1e-5)
    for bad in (0.0, 1.5):
        with pytest.raises(GjpError, match="tile_fraction"):
            pretrain_geojepa(tmp_path / "bad", config(workspace, tile_fraction=bad), device="cpu")
    assert not (tmp_path / "bad").exists()


def test_the_stage_diagnostic_of_a_run_reports_every_stage(workspace, run, tmp_path):
    """examples/experiments/token_retrieval.py: precision@k at each stage, the last one the
    run's own tile vectors (the same retrieval as `knn --eval` over them)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "experiments" / "token_retrieval.py"
    out = subprocess.run([sys.executable, str(script), str(run), str(workspace / "dataset.h5"), "-k", "2"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    rows = {line.split("|")[1].strip(): [float(c) for c in line.split("|")[2:4]] for line in out[2:]}
    assert list(rows) == ["tag", "fused", "conditioning", "tokens", "output"]
    assert all(0 <= p <= 1 and norm > 0 for p, norm in rows.values())
    from gjp.embedders.embed import embed
    from gjp.evaluate.knn import evaluate_retrieval

    embed(str(run), workspace / "dataset.h5", tmp_path / "e.h5")
    report = evaluate_retrieval(tmp_path / "e.h5", workspace / "dataset.h5", k=2, output_dir=tmp_path)
    assert rows["output"][0] == pytest.approx(report.result["precision_mean"], abs=1e-3)


def test_the_pooling_diagnostic_scores_each_variant_on_each_query_half(workspace, run, tmp_path):
    """examples/experiments/pooling.py: precision@k of pooling variants for validation, test
    and every query; its token-centred row is the run's own tile vectors (`gjp embed`)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "experiments" / "pooling.py"
    out = subprocess.run([sys.executable, str(script), str(run), str(workspace), "-k", "2"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    rows = {line.split("|")[1].strip(): [None if c.strip() == "–" else float(c) for c in line.split("|")[2:5]]
            for line in out[2:]}
    assert list(rows) == ["raw", "mean", "max", "tile-centred", "tile-standardised", "token-centred",
                          "token-standardised", "max token-centred"]
    assert all(p is None or 0 <= p <= 1 for cells in rows.values() for p in cells)
    from gjp.embedders.embed import embed
    from gjp.evaluate.knn import evaluate_retrieval

    embed(str(run), workspace / "dataset.h5", tmp_path / "e.h5")
    for column, split in enumerate(("val", "test", None)):
        try:
            report = evaluate_retrieval(tmp_path / "e.h5", workspace / "dataset.h5", k=2, output_dir=tmp_path,
                                        overwrite=True, query_split=split,
                                        splits=workspace / "tasks" / "splits.csv")
        except GjpError:  # Monaco's small validation half has no category tile to ask from: a dash
            assert split is not None and all(cells[column] is None for cells in rows.values())
            continue
        assert rows["token-centred"][column] == pytest.approx(report.result["precision_mean"], abs=1e-3)
    assert rows["token-centred"][2] is not None and rows["raw"][2] is not None
    missing = subprocess.run([sys.executable, str(script), str(run), str(workspace), "--train-dataset",
                              str(tmp_path / "none.h5")], capture_output=True, text=True)
    assert missing.returncode == 2 and "none.h5" in missing.stderr and "Traceback" not in missing.stderr

    # --pool-layer names the layer the run pools (tiny: 1) → the same uncentred rows
    same = subprocess.run([sys.executable, str(script), str(run), str(workspace), "-k", "2", "--pool-layer", "1"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert same[2:5] == out[2:5]   # raw, mean, max
    deep = subprocess.run([sys.executable, str(script), str(run), str(workspace), "--pool-layer", "3"],
                          capture_output=True, text=True)
    assert deep.returncode == 2 and "--pool-layer: pool_layer=3" in deep.stderr and "Traceback" not in deep.stderr


def test_split_entity_tokens_give_each_entity_a_tag_and_a_geometry_token_masked_together(workspace, tmp_path):
    """entity_tokens=split: an entity is its tag token and its geometry token (own modality
    ids, the same min box), the collator's masks hide or show both at once, and embed gives
    one vector per tile and per entity, whatever the batch."""
    import torch

    from gjp.dataset.loader import BatchIndices, TileDataset
    from gjp.embedders.geojepa import geojepa_embeddings, load_geojepa
    from gjp.models.tokenizers import GEOMETRY, TAG
    from gjp.pretrain.masks import MaskConfig, MaskingCollator

    split = tmp_path / "split"
    pretrain_geojepa(split, config(workspace, epochs=1, entity_tokens="split", balanced_tokens=True), device="cpu")
    assert json.loads((split / "config.json").read_text())["train"]["entity_tokens"] == "split"
    tokenizer, _, _ = load_geojepa(split)
    assert tokenizer.fusion is None and tokenizer.entity_copies == 2

    data = TileDataset(workspace / "dataset.h5")
    collate = MaskingCollator(MaskConfig(), seed=3, entity_copies=2)
    batch = collate(data.__getitems__(BatchIndices(range(8), epoch=0, number=0)))
    e = batch["padding_mask"].shape[1]
    with torch.no_grad():
        tokens, conditions, padding = tokenizer(batch)
        tags = tokenizer.tags(batch["tag_ids"], batch["tag_offsets"])
    assert tokens.shape[1] == padding.shape[1] == batch["context_mask"].shape[1] == 2 * e
    slots = (batch["entity_batch"], batch["entity_slot"])
    torch.testing.assert_close((tokens - conditions)[:, :e][slots], tags)          # the tags, untouched by fusion
    modality = tokenizer.conditioning.modality.weight
    torch.testing.assert_close(conditions[:, :e][slots] - conditions[:, e:][slots],
                               (modality[TAG] - modality[GEOMETRY]).expand(len(tags), -1), atol=1e-5, rtol=0)
    assert torch.equal(batch["context_mask"][:, :e], batch["context_mask"][:, e:])
    assert torch.equal(batch["target_masks"][..., :e], batch["target_masks"][..., e:])
    assert batch["target_masks"].any() and not (batch["context_mask"][:, None] & batch["target_masks"]).any()

    one = geojepa_embeddings(workspace / "dataset.h5", split, batch_size=1)
    many = geojepa_embeddings(workspace / "dataset.h5", split, batch_size=16)
    np.testing.assert_allclose(one.vectors, many.vectors, atol=1e-5)
    entities = np.concatenate([b.entity_vectors for b in many.blocks()])
    assert len(entities) == many.entities and np.isfinite(entities).all()
    with pytest.raises(GjpError, match="entity_tokens=mixed: choose one of fused, split"):
        pretrain_geojepa(tmp_path / "bad", config(workspace, entity_tokens="mixed"), device="cpu")


def test_the_default_preset_is_the_configuration_chosen_on_validation(workspace, run_gjp, tmp_path):
    """`gjp pretrain` with no --preset is `cpu`: T tokens, balanced, width 384, 64 epochs,
    tile vectors pooled from the first block's residual stream (issue 14's choice);
    explicit options and --set override the preset's settings."""
    cpu = GeoJepaTrainConfig.from_preset("cpu", epochs=None, lr=None)
    assert (cpu.balanced_tokens, cpu.epochs, cpu.lr) == (True, 64, GeoJepaTrainConfig().lr)
    assert GeoJepaTrainConfig.from_preset("cpu", epochs=3).epochs == 3
    tiny = GeoJepaTrainConfig.from_preset("tiny")
    assert (tiny.balanced_tokens, tiny.epochs) == (False, GeoJepaTrainConfig().epochs)
    # the preset is exactly the experiment's runs (tiny at width 384, balanced): the same weights from a seed
    from gjp.pretrain.geojepa import build_model

    table = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    as_preset = build_model(GeoJepaTrainConfig.from_preset("cpu", modalities="T"), table, None)
    as_settings = build_model(GeoJepaTrainConfig(modalities="T", preset="tiny", balanced_tokens=True,
                                                 model={"dim": 384}), table, None)
    assert as_preset[2] == as_settings[2]
    for part in (0, 1):
        one, other = as_preset[part].state_dict(), as_settings[part].state_dict()
        assert one.keys() == other.keys() and all(one[k].equal(other[k]) for k in one)

    common = ["pretrain", "-i", workspace / "dataset.h5", "--tag-embeddings", workspace / "tag-embeddings.parquet",
              "--splits", workspace / "tasks" / "splits.csv", "--epochs", "1", "--batch-size", "16", "-q"]
    code, _, err = run_gjp([*common, "-o", tmp_path / "default"])
    assert code == 0, err
    saved = json.loads((tmp_path / "default" / "config.json").read_text())
    assert saved["preset"] == "cpu" and saved["train"]["modalities"] == "T" and saved["train"]["balanced_tokens"]
    assert (saved["model_config"]["dim"], saved["model_config"]["depth"], saved["model_config"]["pool_layer"]) \
        == (384, 2, 1)
    code, _, err = run_gjp([*common, "--preset", "tiny", "--set", "balanced_tokens=true", "-o", tmp_path / "tiny"])
    assert code == 0, err
    saved = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert saved["model_config"]["dim"] == 64 and saved["train"]["balanced_tokens"]
    # polygnn has no cpu preset: refused before its data is read (the dataset named here does not exist)
    code, out, err = run_gjp(["pretrain", "--model", "polygnn", "--pretext", "osm", "-i", tmp_path / "none.h5",
                              "--preset", "cpu", "-o", tmp_path / "p"])
    assert code == 1 and "--preset: unknown preset 'cpu'" in err and "none.h5" not in err
    assert "Traceback" not in err and not (tmp_path / "p").exists()
