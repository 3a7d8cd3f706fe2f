"""GeoJEPA's tokens: tags and geometry fused into one token per entity, image tokens from
a frozen backbone, and the conditioning every token gets (where it is, which modality).

- :class:`TagTokens`: an entity's tags through the frozen tag embeddings (``gjp
  embed-tags``) as a mean (``nn.EmbeddingBag``), unit-normalised, then Linear → LayerNorm.
  An entity without tags gives zeros before the projection.
- :class:`GeometryTokens`: the entity's graph through a frozen
  :class:`gjp.models.polygnn.PolygonEncoder`, then Linear → LayerNorm.
- :class:`EntityFusion`: an MLP over [tag ‖ geometry]; a modality that is off is zeros.
  Modality dropout is decided **per entity** (the original decided per batch): in
  training, with probability ``p`` an entity loses its tag half or its geometry half
  (50/50), so the model learns to read either alone; never both, never in eval.
- :class:`Conditioning`: an MLP of a token's 8-number min box plus a learned embedding of
  its modality, returned for the caller to add (never added in place); in training the
  min box first gets Gaussian noise (σ = 5e-4 tile units, about 0.25 m in the US).
- ``balanced`` (``pretrain --set balanced_tokens=true``): the fused entity token is
  LayerNorm-ed, as the tag, geometry and image projections are, and the modality
  embedding starts at std 0.02 instead of N(0, 1). Unbalanced, the modality vector (norm
  ≈ √dim, the same for every entity) outweighs the entity's content about six to one at
  the encoder's input, and what the tile vectors keep of the tags is drowned.
- ``split`` (``pretrain --set entity_tokens=split``): with tags and geometry both on, an
  entity is two tokens instead of one fused token: its tag token and its geometry token,
  each with its own modality id and both at the entity's min box; modality dropout zeroes
  one of the two. Fused, the tags were lost in the fusion MLP (the stage diagnostic of
  experiment 2026-12-02b: precision@8 0.418 before it, 0.293 after); split, nothing stands
  between either modality and the encoder. Twice the entity tokens, so about twice the
  attention cost; it did not raise retrieval, since the pooled tile vector mixes the two
  kinds of token again (experiment 2026-12-02c), so it is an option, off by default.
- :class:`ImageTokens`: the cached patch and global tokens of a frozen image backbone,
  Linear → LayerNorm; each patch's min box is its square of the tile.
- :class:`TileTokenizer`: a collated batch → the token sequence of each tile (entities,
  then image tokens), its conditions and its padding.

Imports torch only.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MODALITIES = 3  # padding, entity, image (split entity tokens add: tag, geometry)


class TagTokens(nn.Module):
    def __init__(self, table: torch.Tensor, dim: int):
        super().__init__()
        self.bag = nn.EmbeddingBag.from_pretrained(table.float(), mode="mean", freeze=True)
        self.proj = nn.Sequential(nn.Linear(table.shape[1], dim), nn.LayerNorm(dim))

    def forward(self, tag_ids: torch.Tensor, tag_offsets: torch.Tensor) -> torch.Tensor:
        """``tag_ids`` flat, ``tag_offsets`` one start per entity (``collate_tiles``)."""
        return self.proj(F.normalize(self.bag(tag_ids, tag_offsets), dim=-1))


class GeometryTokens(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int):
        super().__init__()
        self.encoder = encoder.freeze() if hasattr(encoder, "freeze") else encoder.requires_grad_(False).eval()
        self.proj = nn.Sequential(nn.Linear(encoder.dim, dim), nn.LayerNorm(dim))

    def forward(self, graph, cached: torch.Tensor | None = None) -> torch.Tensor:
        """``cached``: the encoder's outputs for these entities, computed before (the
        encoder is frozen, so they are the same); otherwise the encoder runs on ``graph``."""
        if cached is None:
            with torch.no_grad():
                cached = self.encoder(graph)
        return self.proj(cached)


class EntityFusion(nn.Module):
    def __init__(self, dim: int, dropout: float = 0.3, norm: bool = False):
        super().__init__()
        self.dropout = dropout
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim),
                                 *([nn.LayerNorm(dim)] if norm else []))

    def forward(self, tag: torch.Tensor | None, geometry: torch.Tensor | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        both = tag is not None and geometry is not None  # dropout only when both modalities are on
        reference = tag if tag is not None else geometry
        tag = torch.zeros_like(reference) if tag is None else tag
        geometry = torch.zeros_like(reference) if geometry is None else geometry
        if self.training and self.dropout > 0 and both:
            tag, geometry = drop_one_modality(tag, geometry, self.dropout, generator)
        return self.mlp(torch.cat([tag, geometry], dim=-1))


def drop_one_modality(tag: torch.Tensor, geometry: torch.Tensor, p: float,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Modality dropout per entity: with probability ``p`` an entity's tag or its geometry
    (50/50, never both) is zeroed. New tensors: the inputs are untouched."""
    n = tag.shape[0]
    drop = torch.rand(n, generator=generator, device=tag.device) < p
    which = torch.rand(n, generator=generator, device=tag.device) < 0.5
    return tag * ~(drop & which)[:, None], geometry * ~(drop & ~which)[:, None]


class Conditioning(nn.Module):
    def __init__(self, dim: int, noise: float = 5e-4, small_modality: bool = False, modalities: int = MODALITIES):
        super().__init__()
        self.noise = noise
        self.box = nn.Sequential(nn.Linear(8, dim), nn.GELU(), nn.Linear(dim, dim))
        self.modality = nn.Embedding(modalities, dim)
        if small_modality:  # as ViT's position embeddings: a nudge, not N(0, 1) (norm √dim) over the content
            nn.init.trunc_normal_(self.modality.weight, std=0.02)

    def forward(self, min_box: torch.Tensor, modality: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``min_box`` [..., 8] tile units, ``modality`` [...] ints → [..., dim]."""
        if self.training and self.noise > 0:
            min_box = min_box + self.noise * torch.randn(min_box.shape, generator=generator, device=min_box.device)
        return self.box(min_box) + self.modality(modality)


class ImageTokens(nn.Module):
    """A frozen image backbone's cached tokens (:mod:`gjp.dataset.image_tokens`: patch
    tokens, then the global one) → Linear → LayerNorm to the model width."""

    def __init__(self, backbone_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(backbone_dim, dim), nn.LayerNorm(dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)


class TileTokenizer(nn.Module):
    """A batch of ``collate_tiles`` → ``(tokens, conditions, padding)``, ``[B,T,d]`` each
    (padding ``[B,T]``): T slots = the tile's entities (each the fused tag/geometry token;
    with ``split``, the E entity slots twice: every entity's tag token, then every
    entity's geometry token in the same order) then, with images, its image tokens
    (patches row by row, then the global token unless ``image_global`` is off). Tokens have
    their conditioning added; ``conditions`` is the conditioning alone (what the predictor
    is told about a slot). ``tags``, ``geometry`` and ``images`` may each be None (that
    modality is off); without tags and geometry the entity slots are all padding."""

    def __init__(self, dim: int, tags: TagTokens | None, geometry: GeometryTokens | None,
                 images: ImageTokens | None = None, dropout: float = 0.3, noise: float = 5e-4,
                 image_global: bool = True, balanced: bool = False, split: bool = False):
        super().__init__()
        if tags is None and geometry is None and images is None:
            raise ValueError("a tokenizer needs tags, geometry, images or some of them")
        self.dim, self.tags, self.geometry, self.images = dim, tags, geometry, images
        self.image_global, self.dropout = image_global, dropout
        self.split = split and tags is not None and geometry is not None  # one modality: one token either way
        fuse = (tags is not None or geometry is not None) and not self.split
        self.fusion = EntityFusion(dim, dropout, norm=balanced) if fuse else None
        self.conditioning = Conditioning(dim, noise, small_modality=balanced,
                                         modalities=MODALITIES + 2 if self.split else MODALITIES)

    @property
    def entity_copies(self) -> int:
        """Token slots per entity slot: 2 when split, else 1 (what the masks must repeat)."""
        return 2 if self.split else 1

    def entity_outputs(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per real entity (in batch order), its encoder output ``[N_entities, d]``; split,
        the mean of its tag token's and its geometry token's."""
        slots = (batch["entity_batch"], batch["entity_slot"])
        if not self.split:
            return outputs[slots]
        e = batch["padding_mask"].shape[1]
        return (outputs[:, :e][slots] + outputs[:, e:2 * e][slots]) / 2

    def _split_entities(self, tag, geometry, batch, generator):
        """Split tokens: ``(tokens [B,2E,d], padding, min_box, modality)`` of the entity
        slots; modality dropout zeroes an entity's tag or its geometry token (never both)."""
        if self.training and self.dropout > 0:
            tag, geometry = drop_one_modality(tag, geometry, self.dropout, generator)
        padding, min_box = batch["padding_mask"], batch["min_box"]
        tokens = torch.cat([in_entity_slots(tag, batch), in_entity_slots(geometry, batch)], dim=1)
        real = (~padding).long()
        modality = torch.cat([real * TAG, real * GEOMETRY], dim=1)
        return tokens, padding.repeat(1, 2), min_box.repeat(1, 2, 1), modality

    def forward(self, batch: dict, generator: torch.Generator | None = None):
        padding = batch["padding_mask"]
        min_box, modality = batch["min_box"], batch["modality"]
        if self.split:
            tag = self.tags(batch["tag_ids"], batch["tag_offsets"])
            geometry = self.geometry(batch.get("graph"), batch.get("geometry_tokens"))
            tokens, padding, min_box, modality = self._split_entities(tag, geometry, batch, generator)
        elif self.fusion is not None:
            tag = self.tags(batch["tag_ids"], batch["tag_offsets"]) if self.tags is not None else None
            geometry = self.geometry(batch.get("graph"), batch.get("geometry_tokens")) \
                if self.geometry is not None else None
            tokens = in_entity_slots(self.fusion(tag, geometry, generator), batch)
        else:  # images alone: the entity slots are padding
            tokens = padding.new_zeros(*padding.shape, self.dim, dtype=min_box.dtype)
            padding = torch.ones_like(padding)
            modality = torch.zeros_like(modality)
        if self.images is not None:
            image, valid, box = image_slots(batch, self.image_global)
            b, p = valid.shape
            tokens = torch.cat([tokens, self.images(image).to(tokens.dtype)], dim=1)
            padding = torch.cat([padding, ~valid], dim=1)
            min_box = torch.cat([min_box, box.to(min_box.dtype).expand(b, p, 8)], dim=1)
            modality = torch.cat([modality, valid.long() * IMAGE], dim=1)
        conditions = self.conditioning(min_box, modality, generator)
        return tokens + conditions.to(tokens.dtype), conditions, padding


def in_entity_slots(values: torch.Tensor, batch: dict) -> torch.Tensor:
    """Per real entity values ``[N_entities, d]`` (batch order) → ``[B, E, d]``, each in
    its tile's entity slot, zeros in the padding (``collate_tiles``' layout)."""
    placed = values.new_zeros(*batch["padding_mask"].shape, values.shape[-1])
    return placed.index_put((batch["entity_batch"], batch["entity_slot"]), values)


ENTITY, IMAGE = 1, 2  # modality ids (0: padding), as the loader's collate_tiles numbers them
TAG, GEOMETRY = 3, 4  # split entity tokens' modality ids


def image_slots(batch: dict, include_global: bool = True):
    """``(tokens [B,P,C], valid [B,P], boxes [P,8])`` of a batch's image tokens, the
    global token (the last) left out unless ``include_global``: it sums up the whole
    image, so in every context it would leak what the targets hold."""
    image, valid, box = batch["image_tokens"], batch["image_token_valid"], batch["image_token_box"]
    if not include_global:
        image, valid, box = image[:, :-1], valid[:, :-1], box[:-1]
    return image, valid, box
