"""GeoJEPA's masks: which tokens of each sample the context encoder sees, and which
ones (in several target blocks) the predictor must predict.

Drawn on the data side, vectorised over the batch with numpy, and padding-aware: only
valid tokens are ever context or target. One strategy per sample, drawn with the
configured probabilities (real probabilities: they are normalised and used as such):

- ``random``: each target takes ``max(1, floor(size · n))`` of the sample's ``n`` valid
  tokens, uniformly at random;
- ``area``: each target is a box of ``size`` of the tile's area and a drawn aspect ratio
  ``a`` (width / height = a²), placed anywhere it stays within ``margin`` of the tile; a
  token is a target when the mean of its min-box corners lies inside (inclusive). A box
  that catches nothing takes the one valid token nearest its centre instead, so no target
  is empty by accident;
- ``modality``: one modality present in the sample (drawn uniformly) is the context, each
  other modality one target; a sample with a single modality falls back to
  ``contiguous``;
- ``contiguous``: each target is a run of ``max(1, floor(size · n))`` consecutive valid
  tokens, starting anywhere it fits.

Targets may overlap one another (each is predicted on its own), but **never the
context**: the context is every valid token in no target. When that leaves less than
``min_context`` of the valid tokens, randomly chosen target tokens are taken out of every
target and given to the context until it holds ``ceil(min_context · n)``. (The original
topped the context up with a contiguous run that could also lie in a target, so the
predictor could read some answers off its input.)

Masks depend only on the tokens and the generator: :func:`mask_rng` seeds one from
(seed, epoch, batch index), so they do not depend on the number of loader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

STRATEGIES = ("random", "area", "modality", "contiguous")


@dataclass(frozen=True)
class MaskConfig:
    strategies: dict = field(default_factory=lambda: {"random": 0.25, "area": 0.75})  # probabilities
    targets: int = 4                  # target blocks per sample
    random_size: float = 0.2          # share of the valid tokens per random target
    area_size: float = 0.2            # share of the tile's area per area target
    aspect: tuple = (0.75, 1.5)       # range of a, the square root of width / height
    contiguous_size: float = 0.2      # share of the valid tokens per contiguous target
    min_context: float = 0.1          # share of the valid tokens the context keeps at least
    margin: float = 0.1               # how far an area box may reach beyond the tile

    def probabilities(self) -> np.ndarray:
        """The strategy probabilities in :data:`STRATEGIES` order; they must sum to 1."""
        unknown = set(self.strategies) - set(STRATEGIES)
        if unknown:
            raise ValueError(f"unknown masking strategy {sorted(unknown)[0]!r}: choose from {', '.join(STRATEGIES)}")
        p = np.array([float(self.strategies.get(s, 0.0)) for s in STRATEGIES])
        if (p < 0).any() or not math.isclose(p.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"masking strategy probabilities must be ≥ 0 and sum to 1, got {self.strategies}")
        return p / p.sum()


@dataclass
class Masks:
    context: np.ndarray    # [B, T] bool
    targets: np.ndarray    # [B, K, T] bool
    strategy: np.ndarray   # [B] index into STRATEGIES


def mask_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator of one batch's masks."""
    return np.random.default_rng([seed, epoch, batch, 0x6D61736B])  # the last word keeps it apart from other uses


def box_centres(min_box: np.ndarray) -> np.ndarray:
    """``[..., 8]`` min boxes (four corners) → ``[..., 2]`` the mean of their corners."""
    return min_box.reshape(*min_box.shape[:-1], 4, 2).mean(axis=-2)


def crop_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator of one batch's crops (a stream apart from its masks')."""
    return np.random.default_rng([seed, epoch, batch, 0x63726F70])


def crop(centres: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` of a tile's entities, kept together in space: the ``limit``
    nearest (by the centre of the min box, ties by index) to one drawn at random, in
    their original order. All of them when there are no more than ``limit``."""
    n = len(centres)
    if n <= limit:
        return np.arange(n)
    anchor = centres[rng.integers(n)]
    distance = np.square(centres - anchor).sum(axis=1)
    return np.sort(np.lexsort((np.arange(n), distance))[:limit])


def draw_masks(valid: np.ndarray, centres: np.ndarray, modality: np.ndarray, config: MaskConfig,
               rng: np.random.Generator) -> Masks:
    """Masks for a batch: ``valid`` [B,T] (False = padding), ``centres`` [B,T,2] (the mean
    of each token's min-box corners, tile units), ``modality`` [B,T] (ints)."""
    valid = np.asarray(valid, dtype=bool)
    b, t = valid.shape
    k = config.targets
    n = valid.sum(axis=1)
    strategy = rng.choice(len(STRATEGIES), size=b, p=config.probabilities())
    candidates = {
        "random": _random(valid, n, k, config.random_size, rng),
        "area": _area(valid, np.asarray(centres, dtype=np.float64), k, config, rng),
        "contiguous": _contiguous(valid, n, k, config.contiguous_size, rng),
    }
    modal, single = _modality(valid, np.asarray(modality), k, rng)
    candidates["modality"] = np.where(single[:, None, None], candidates["contiguous"], modal)
    stacked = np.stack([candidates[s] for s in STRATEGIES])          # [S, B, K, T]
    targets = stacked[strategy, np.arange(b)]                        # [B, K, T]
    targets &= valid[:, None, :]
    context = valid & ~targets.any(axis=1)
    _keep_min_context(context, targets, valid, n, config.min_context, rng)
    return Masks(context, targets, strategy)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Each entry's rank along the last axis (0 = smallest)."""
    return np.argsort(np.argsort(scores, axis=-1, kind="stable"), axis=-1, kind="stable")


def _random(valid, n, k, size, rng):
    b, t = valid.shape
    scores = rng.random((b, k, t))
    scores[~np.broadcast_to(valid[:, None, :], scores.shape)] = 2.0  # padding sorts last
    count = np.maximum(1, np.floor(size * n)).astype(np.int64)
    return _ranks(scores) < count[:, None, None]


def _contiguous(valid, n, k, size, rng):
    b, t = valid.shape
    length = np.maximum(1, np.floor(size * n)).astype(np.int64)
    room = np.maximum(n - length, 0)
    start = np.floor(rng.random((b, k)) * (room[:, None] + 1)).astype(np.int64)
    position = np.cumsum(valid, axis=1) - 1                          # index among valid tokens
    return ((position[:, None, :] >= start[..., None]) & (position[:, None, :] < (start + length[:, None])[..., None])
            & valid[:, None, :])


def _area(valid, centres, k, config, rng):
    b, t = valid.shape
    s = config.area_size
    a = rng.uniform(config.aspect[0], config.aspect[1], (b, k))
    height = np.minimum(math.sqrt(s) / a, 1.0)
    width = np.minimum(s / height, 1.0)
    m = config.margin
    x0 = -m + rng.random((b, k)) * (1 + 2 * m - width)
    y0 = -m + rng.random((b, k)) * (1 + 2 * m - height)
    x, y = centres[:, None, :, 0], centres[:, None, :, 1]           # [B, 1, T]
    inside = ((x >= x0[..., None]) & (x <= (x0 + width)[..., None]) & (y >= y0[..., None])
              & (y <= (y0 + height)[..., None]) & valid[:, None, :])
    # a box that caught nothing takes the valid token nearest its centre
    cx, cy = (x0 + width / 2)[..., None], (y0 + height / 2)[..., None]
    distance = np.where(valid[:, None, :], (x - cx) ** 2 + (y - cy) ** 2, np.inf)
    nearest = np.argmin(distance, axis=-1)                           # [B, K]
    empty = ~inside.any(axis=-1) & valid.any(axis=1)[:, None]
    bi, ki = np.nonzero(empty)
    inside[bi, ki, nearest[bi, ki]] = True
    return inside


def _modality(valid, modality, k, rng):
    """Targets [B,K,T]: one per modality other than a drawn context modality; and which
    samples have a single modality (they fall back to contiguous)."""
    b, t = valid.shape
    kinds = np.unique(modality[valid]) if valid.any() else np.zeros(0, dtype=modality.dtype)
    present = np.stack([(valid & (modality == m)).any(axis=1) for m in kinds], axis=1) if len(kinds) else \
        np.zeros((b, 0), dtype=bool)                                 # [B, M]
    single = present.sum(axis=1) < 2
    scores = np.where(present, rng.random(present.shape), -1.0)
    context_kind = np.argmax(scores, axis=1)                         # uniform among present
    targets = np.zeros((b, k, t), dtype=bool)
    slot = np.zeros(b, dtype=np.int64)
    for j, m in enumerate(kinds):                                    # a handful of modalities
        use = present[:, j] & (context_kind != j) & (slot < k)
        rows = np.flatnonzero(use)
        targets[rows, slot[rows]] = valid[rows] & (modality[rows] == m)
        slot[rows] += 1
    return targets, single


def _keep_min_context(context, targets, valid, n, min_context, rng):
    """Move randomly chosen target tokens to the context until it holds
    ``ceil(min_context · n)`` tokens; in place, and the two stay disjoint."""
    need = np.minimum(np.ceil(min_context * n).astype(np.int64), n) - context.sum(axis=1)
    if not (need > 0).any():
        return
    in_targets = targets.any(axis=1)
    scores = np.where(in_targets, rng.random(context.shape), 2.0)
    release = (_ranks(scores) < np.maximum(need, 0)[:, None]) & in_targets
    context |= release
    targets &= ~release[:, None, :]


class MaskingCollator:
    """``collate_fn`` for pretraining: :func:`gjp.dataset.loader.collate_tiles`, plus the
    masks over the batch's token slots: its entities, then, with ``images``, its image
    tokens (patches row by row, then the global token unless ``image_global`` is off: the
    slots :class:`gjp.models.tokenizers.TileTokenizer` makes), each placed at the centre
    of its min box (tile frame, y up); image slots of a tile without an image, or of a
    patch mostly without data, are padding. Adds ``context_mask`` [B,T], ``target_masks``
    [B,K,T] (torch bool), ``mask_strategy`` [B], and the batch's ``epoch`` and ``number``
    (which seed the model's own randomness of the batch too). Seeded from (seed, the
    batch's epoch, its number), which :class:`gjp.dataset.loader.BatchIndices` carries to
    every worker.

    With ``max_entities``, a tile of more entities is first cropped to the
    ``max_entities`` nearest one drawn at random (:func:`crop`): attention costs the square
    of a tile's tokens, so a few dense city tiles would otherwise take most of the compute.

    With ``entity_copies=2`` (split entity tokens: every entity a tag and a geometry
    token), the masks are drawn over entities as always, then each entity's mask is
    repeated for its two tokens: an entity is hidden or seen whole, so the predictor never
    reads a target entity's tags off its visible geometry, or the reverse."""

    ENTITY, IMAGE = 1, 2

    def __init__(self, config: MaskConfig, seed: int = 0, images: bool = False, image_global: bool = True,
                 entities: bool = True, max_entities: int = 0, entity_copies: int = 1):
        config.probabilities()  # fail now, not in a worker
        if max_entities < 0:
            raise ValueError(f"max_entities must be ≥ 0 (0: no crop), got {max_entities}")
        if entity_copies not in (1, 2):
            raise ValueError(f"entity_copies must be 1 or 2, got {entity_copies}")
        self.config, self.seed = config, seed
        self.images, self.image_global, self.entities = images, image_global, entities
        self.max_entities, self.entity_copies = max_entities, entity_copies

    def __call__(self, samples) -> dict:
        import torch

        from gjp.dataset.loader import collate_tiles
        from gjp.models.tokenizers import image_slots

        epoch, number = getattr(samples, "epoch", None), getattr(samples, "number", None)
        if epoch is None or number is None:
            raise ValueError("masks need the batch's epoch and number: load with LengthGroupedBatchSampler "
                             "(or give BatchIndices)")
        samples = list(samples)
        if self.max_entities:  # a tile of more entities is cropped to a window of them
            rng = crop_rng(self.seed, epoch, number)
            samples = [s if len(s.kind) <= self.max_entities else
                       s.select(crop(box_centres(s.min_box), self.max_entities, rng))
                       for s in samples]
        batch = collate_tiles(samples)
        valid = ~batch["padding_mask"].numpy() if self.entities else np.zeros(batch["padding_mask"].shape, bool)
        centres = box_centres(batch["min_box"].numpy())
        modality = np.where(valid, self.ENTITY, 0)
        if self.images:
            if "image_tokens" not in batch:
                raise ValueError("image masks need a dataset loaded with its image tokens")
            _, image_valid, box = image_slots(batch, self.image_global)
            image_valid = image_valid.numpy()
            patches = box.numpy().reshape(-1, 4, 2).mean(axis=1)
            b = valid.shape[0]
            valid = np.concatenate([valid, image_valid], axis=1)
            centres = np.concatenate([centres, np.broadcast_to(patches, (b, *patches.shape))], axis=1)
            modality = np.concatenate([modality, np.where(image_valid, self.IMAGE, 0)], axis=1)
        masks = draw_masks(valid, centres, modality, self.config, mask_rng(self.seed, epoch, number))
        context, targets = masks.context, masks.targets
        if self.entity_copies > 1:  # the tokenizer's slots: the entity slots once per copy, then the images
            e = batch["padding_mask"].shape[1]
            slots = np.concatenate([np.tile(np.arange(e), self.entity_copies), np.arange(e, context.shape[1])])
            context, targets = context[:, slots], targets[:, :, slots]
        batch.update(context_mask=torch.from_numpy(context), target_masks=torch.from_numpy(targets),
                     mask_strategy=torch.from_numpy(masks.strategy), epoch=epoch, number=number)
        return batch
