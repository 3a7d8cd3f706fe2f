"""GeoJEPA with image tokens (`--modalities I`, `T,I`): real NAIP chips through the cached
EfficientNet-Lite0 tokens, masks over entity and image slots, pretraining and embedding
through the command line. No OSM extract covers the bundled chips, so the tiles here get
made-up entities (a bench and a tree per tile, real chips): the image path is tested on
its own, as docs/DECISIONS.md says."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from gjp import grid

CHIPS = Path(__file__).parent / "data" / "naip_z16"
XS, YS = range(10476, 10480), range(25336, 25340)  # the 16 chips: a 4 × 4 block


def tile_lines():
    lines, n = [], 0
    for x in XS:
        for y in YS:
            w, s, e, north = grid.tile_bounds(x, y, 16)
            for tags, fx, fy in (("amenity=bench", 0.3, 0.4), ("natural=tree", 0.7, 0.6)):
                n += 1
                lines.append(f"n{n} v1 x{w + fx * (e - w):.7f} y{s + fy * (north - s):.7f} T{tags}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, build_graphs, opl_pbf):
    """``both.h5`` (16 tiles, entities and chips), ``chips.h5`` (the chips alone),
    ``plain.h5`` (the entities alone), and the tag embeddings of both.h5."""
    from gjp.dataset.pack import pack_dataset
    from gjp.imagery.chips import import_chips
    from gjp.tag_embeddings import embed_tags

    root = tmp_path_factory.mktemp("jepa-images")
    graphs = build_graphs(opl_pbf(tile_lines(), root / "benches.osm.pbf"), root)
    import_chips(sorted(CHIPS.glob("16_*.webp")), root / "images")
    pack_dataset(graphs, root / "both.h5", images_dir=root / "images", min_tag_count=1)
    pack_dataset(graphs, root / "plain.h5", min_tag_count=1)
    pack_dataset(None, root / "chips.h5", images_dir=root / "images")
    embed_tags(root / "both.h5", root / "tag-embeddings.parquet")
    return root


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_images_alone_pretrain_learn_and_embed_whatever_the_batch(ws, run_gjp):
    code, _, err = run_gjp(["pretrain", "--modalities", "I", "-i", ws / "chips.h5", "--all-tiles", "--preset", "tiny", "--epochs", "8",
                            "--batch-size", "4", "--lr", "1e-3", "-o", ws / "runs" / "I", "-q"])
    assert code == 0, err
    rows = metrics(ws / "runs" / "I")
    assert len(rows) == 8 * 4
    first, last = np.mean([r["prediction"] for r in rows[:4]]), np.mean([r["prediction"] for r in rows[-4:]])
    assert last < 0.8 * first
    assert all(r["context_tokens"] > 0 and r["target_tokens"] > 0 for r in rows)
    assert all(r["context_tokens"] < 4 * 49 for r in rows)  # patches only: no global token
    config = json.loads((ws / "runs" / "I" / "config.json").read_text())
    assert config["image"]["backbone"] == "efficientnet_lite0" and config["image"]["dim"] == 1280
    assert config["train"]["image_tokens"] == "patches" and config["tiles"]["train"] == 16
    assert (ws / "chips.image-tokens.efficientnet_lite0.h5").exists()  # the cache, next to the dataset

    vectors = {}
    for batch in (1, 16):
        out = ws / f"I-{batch}.h5"
        code, _, err = run_gjp(["embed", "--model", ws / "runs" / "I", "-i", ws / "chips.h5", "--batch-size", batch,
                                "-o", out, "-q"])
        assert code == 0, err
        with h5py.File(out, "r") as f:
            vectors[batch] = f["tiles/vectors"][()]
            assert len(f["tiles/name"]) == 16 and "entities" not in f
    assert vectors[1].shape == (16, 128) and np.isfinite(vectors[1]).all()
    np.testing.assert_allclose(vectors[1], vectors[16], rtol=1e-5, atol=1e-5)
    assert np.unique(vectors[1].round(4), axis=0).shape[0] == 16  # every chip its own vector


def test_tags_and_images_with_the_global_token(ws, run_gjp):
    code, _, err = run_gjp(["pretrain", "--modalities", "T,I", "-i", ws / "both.h5", "--all-tiles",
                            "--tag-embeddings", ws / "tag-embeddings.parquet", "--image-tokens", "patches+global",
                            "--preset", "tiny", "--epochs", "2", "--batch-size", "8", "-o", ws / "runs" / "TI", "-q"])
    assert code == 0, err
    rows = metrics(ws / "runs" / "TI")
    assert all(r["context_tokens"] < 8 * (2 + 50) for r in rows)
    assert np.isfinite([r["loss"] for r in rows]).all()
    code, _, err = run_gjp(["embed", "--model", ws / "runs" / "TI", "-i", ws / "both.h5", "-o", ws / "TI.h5", "-q"])
    assert code == 0, err
    with h5py.File(ws / "TI.h5", "r") as f:
        assert f["tiles/vectors"].shape == (16, 128) and f["entities/vectors"].shape == (32, 64)


def test_images_asked_of_a_dataset_without_them_is_one_line(ws, run_gjp):
    code, out, err = run_gjp(["pretrain", "--modalities", "T,I", "-i", ws / "plain.h5", "--all-tiles",
                              "--tag-embeddings", ws / "tag-embeddings.parquet", "-o", ws / "runs" / "none"])
    assert code == 1 and out == ""
    assert err.strip().count("\n") == 0 and "plain.h5: has no images" in err
    assert not (ws / "runs" / "none").exists() and not list(ws.glob("plain.image-tokens*"))


def test_masks_cover_entity_and_image_slots_without_overlap(ws):
    from gjp.dataset.image_tokens import ensure_image_tokens
    from gjp.dataset.loader import BatchIndices, TileDataset
    from gjp.pretrain.masks import MaskConfig, MaskingCollator

    dataset = TileDataset(ws / "both.h5", image_tokens=ensure_image_tokens(ws / "both.h5"))
    config = MaskConfig(strategies={"modality": 1.0}, min_context=0.0)  # no top-up: modalities stay apart
    for image_global, slots in ((False, 49), (True, 50)):
        collator = MaskingCollator(config, seed=1, images=True, image_global=image_global)
        batch = collator(dataset.__getitems__(BatchIndices(range(16), 0, 3)))
        context, targets = batch["context_mask"], batch["target_masks"]
        assert context.shape == (16, 2 + slots) and targets.shape[-1] == 2 + slots
        assert not (context[:, None] & targets).any()
        # one modality is the context, the other the target: entities and image never mixed
        entity_context = context[:, :2].any(dim=1)
        image_context = context[:, 2:].any(dim=1)
        assert torch.equal(entity_context, ~image_context)
        union = targets.any(dim=1)
        assert torch.equal(union[:, 2:].any(dim=1), entity_context)
        valid = torch.cat([~batch["padding_mask"], batch["image_token_valid"][:, :slots]], dim=1)
        assert not ((context | union) & ~valid).any()  # never a padding slot
