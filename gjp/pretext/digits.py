"""Digits-P-2: two handwritten digits side by side as one multipolygon, 90 classes.

PolygonGNN pretrains its encoder on MNIST-P-2 (two MNIST digits side by side, polygonised,
labelled with the two-digit number 10..99). Digits-P-2 is the same task built offline
from scikit-learn's bundled 8×8 digits (:func:`sklearn.datasets.load_digits`: 1797
images, values 0..16, about 180 per digit). scikit-learn (a dev dependency), scipy and
rasterio are imported only inside :func:`build_digits_p2`.

Construction:

* **Pools, no leakage.** The 1797 source images are split per digit class (a seeded
  permutation of that class's images): the first ``round(0.1 n)`` go to ``val``, the next
  ``round(0.1 n)`` to ``test``, the rest (≈ 80 %) to ``train``. A sample of split *s* takes
  both of its digits from pool *s* only, so no source image appears in two splits.
* **Classes.** Class ``c`` (0..89) is the number ``10 + c``: left digit ``a = (c+10)//10``
  (1..9), right digit ``b = (c+10) % 10`` (0..9). Every split is balanced: ``train`` has
  ``n_per_class`` samples per class, ``val`` and ``test`` ``max(1, n_per_class // 8)``
  each (40 → 40/5/5 per class, 4500 samples). Samples come in order train, val, test, then
  by class, then by draw; shuffling is the loader's job. The two images of a sample are
  drawn independently (with replacement: "11" may show the same image twice).
* **Pixels.** Each 8×8 image is upsampled on its own (``scipy.ndimage.zoom``, linear,
  ``grid_mode=True``, edge pixels extended: source pixel (i, j) covers exactly the
  upsampled block [i·u, (i+1)·u) × [j·u, (j+1)·u)), then the two are put side by side
  (8u × 16u), so no interpolation runs across the seam; touching ink still merges. The
  mask is ``value ≥ threshold · 16``. A draw whose left or right half has no ink is drawn
  again (never seen at the defaults).
* **Polygons.** ``rasterio.features.shapes`` (4-connected, identity transform: pixel
  corners at integer coordinates) polygonises the mask; the pieces are unioned
  (``shapely.union_all``; pieces meeting at a corner stay separate polygons) with their
  holes (most 0, 6, 8 and 9 have one, a quarter of the 4s, a few 2, 3, 5 and 7s, no 1),
  then simplified with GEOS' topology-preserving Douglas–Peucker at a tolerance of
  ``simplify`` **source pixels** (``simplify · upsample`` upsampled pixels; 0.25 → one
  upsampled pixel, which removes the raster staircase: 39 vertices per sample on average
  instead of about 140 at a quarter of an upsampled pixel).
* **Frame.** The local frame the encoder expects: x to the right, y up (raster rows
  flipped), scaled so the 16-pixel width is 1.0: x ∈ [0, 1], y ∈ [0, 0.5]. Rings are
  oriented (exteriors counter-clockwise, holes clockwise) and every sample is a
  MultiPolygon, even of one member.

The graphs are :meth:`gjp.dataset.graphs.EntityGraphs.from_geometries` (the visibility
kernel of ``gjp visibility``), one entity per sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gjp.dataset.graphs import EntityGraphs

SPLITS = ("train", "val", "test")
N_CLASSES = 90
#: Share of each digit class's source images that go to ``val``, and to ``test``.
HELD_OUT_SHARE = 0.1


@dataclass
class DigitsP2:
    graphs: EntityGraphs          # one entity per sample
    labels: np.ndarray            # [N] int64, class 0..89 = number 10..99
    split: np.ndarray             # [N] str, "train" / "val" / "test"
    sources: np.ndarray           # [N, 2] int64, indices into load_digits() of the left and right digit
    geometries: np.ndarray        # [N] shapely MultiPolygons, in the local frame
    params: dict = field(default_factory=dict)  # the arguments of build_digits_p2

    def __len__(self) -> int:
        return len(self.labels)


def digits_of(labels) -> tuple[np.ndarray, np.ndarray]:
    """The left and right digits of class ids (class c is the number 10 + c)."""
    number = np.asarray(labels) + 10
    return number // 10, number % 10


def source_pools(targets: np.ndarray, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Per split, per digit 0..9, the source image indices it may draw from (see module doc)."""
    pools: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(targets == digit))
        held = int(round(HELD_OUT_SHARE * len(members)))
        pools["val"].append(members[:held])
        pools["test"].append(members[held:2 * held])
        pools["train"].append(members[2 * held:])
    return pools


def build_digits_p2(n_per_class: int = 40, seed: int = 0, upsample: int = 4, threshold: float = 0.4,
                    simplify: float = 0.25, k: int = 1) -> DigitsP2:
    """Digits-P-2 (see the module doc): deterministic for the same arguments."""
    from sklearn.datasets import load_digits

    params = dict(n_per_class=n_per_class, seed=seed, upsample=upsample, threshold=threshold,
                  simplify=simplify, k=k)
    if n_per_class < 1 or upsample < 1:
        raise ValueError("n_per_class and upsample must be at least 1")
    digits = load_digits()
    images, targets = digits.images, digits.target
    rng = np.random.default_rng(seed)
    pools = source_pools(targets, rng)
    zoomed: dict[int, np.ndarray] = {}  # source index → its upsampled mask, computed once

    def mask_of(i: int) -> np.ndarray:
        if i not in zoomed:
            zoomed[i] = _upsample(images[i], upsample) >= threshold * 16.0
        return zoomed[i]

    counts = {"train": n_per_class, "val": max(1, n_per_class // 8), "test": max(1, n_per_class // 8)}
    geometries, labels, split, sources = [], [], [], []
    for s in SPLITS:
        for c in range(N_CLASSES):
            a, b = divmod(c + 10, 10)
            for _ in range(counts[s]):
                for _attempt in range(1000):
                    ia, ib = int(rng.choice(pools[s][a])), int(rng.choice(pools[s][b]))
                    left, right = mask_of(ia), mask_of(ib)
                    if left.any() and right.any():
                        break
                else:  # pragma: no cover - a threshold above every pixel of the pool
                    raise ValueError(f"no ink at threshold {threshold} for digits {a} and {b} in {s}")
                geometries.append(_polygon(np.concatenate([left, right], axis=1), simplify * upsample))
                labels.append(c)
                split.append(s)
                sources.append((ia, ib))
    geoms = np.empty(len(geometries), dtype=object)
    geoms[:] = geometries
    return DigitsP2(graphs=EntityGraphs.from_geometries(geoms, k), labels=np.asarray(labels, np.int64),
                    split=np.asarray(split), sources=np.asarray(sources, np.int64).reshape(-1, 2),
                    geometries=geoms, params=params)


def _upsample(image: np.ndarray, factor: int) -> np.ndarray:
    from scipy import ndimage

    if factor == 1:
        return np.asarray(image, dtype=np.float64)
    return ndimage.zoom(np.asarray(image, dtype=np.float64), factor, order=1, grid_mode=True, mode="nearest")


def _polygon(mask: np.ndarray, tolerance: float):
    """The mask's ink as one MultiPolygon in the local frame (see the module doc);
    ``tolerance`` in mask pixels."""
    import rasterio.features
    import shapely
    from shapely.geometry import MultiPolygon, shape

    pieces = [shape(g) for g, _ in rasterio.features.shapes(mask.astype(np.uint8), mask=mask, connectivity=4)]
    geom = shapely.union_all(pieces)
    if tolerance > 0:
        geom = shapely.simplify(geom, tolerance, preserve_topology=True)
    rows, width = mask.shape
    scale = 1.0 / width
    geom = shapely.transform(geom, lambda xy: np.column_stack([xy[:, 0] * scale, (rows - xy[:, 1]) * scale]))
    geom = shapely.orient_polygons(geom, exterior_cw=False)
    if geom.geom_type == "Polygon":
        geom = MultiPolygon([geom])
    return geom


def ring_counts(geometries) -> tuple[np.ndarray, np.ndarray]:
    """Per geometry, its number of polygons and of interior rings (holes)."""
    import shapely

    geometries = np.asarray(geometries, dtype=object)
    parts = shapely.get_num_geometries(geometries)
    polygons, owner = shapely.get_parts(geometries, return_index=True)
    holes = np.bincount(owner, weights=shapely.get_num_interior_rings(polygons), minlength=len(geometries))
    return parts.astype(np.int64), holes.astype(np.int64)


def describe(d: DigitsP2) -> str:
    """One line: samples per split, classes, mean vertices per sample, share with holes."""
    per_split = "/".join(f"{int((d.split == s).sum())}" for s in SPLITS)
    vertices = np.diff(d.graphs.node_offsets)
    _, holes = ring_counts(d.geometries)
    return (f"Digits-P-2: {len(d)} samples (train/val/test {per_split}), "
            f"{len(np.unique(d.labels))} classes, {vertices.mean():.1f} vertices per sample "
            f"(max {vertices.max() if len(vertices) else 0}), {100.0 * (holes > 0).mean():.1f}% with holes")
