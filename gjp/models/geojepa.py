"""GeoJEPA's core: a context encoder, its EMA copy the target encoder, and a predictor,
over token tensors (the tokenizers of :mod:`gjp.models.tokenizers` make the tokens).

One training step, given tokens ``x`` [B,T,d] (conditioning already added), their
conditions ``c`` [B,T,d], padding, a context mask [B,T] and K target masks [B,K,T]:

1. the target encoder (no gradient, eval mode) sees every real token; its outputs are the
   targets;
2. the context encoder sees the context tokens only (every other token is a masked key);
3. the predictor, once per target block (the K blocks run as one batch of B·K), sees the
   projected context outputs plus their conditions and, in every target slot, a learned
   mask token plus that slot's condition; it predicts the target slots;
4. the loss: smooth-L1 against the LayerNorm-ed targets over real target tokens, plus
   β_v · (VICReg variance + covariance) of the predictions and of the context outputs.

:meth:`GeoJepa.embed` is how a tile becomes a vector after training: the target encoder
over all its real tokens (its output, or with ``pool_layer`` its residual stream after that
many blocks), centred on ``token_center`` (the mean of those tokens over the pretraining
tiles, which pretraining measures once it ends), then [mean ‖ max] over those tokens only
(never padding), so a tile's vector does not depend on its batch. Imports torch only.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from gjp.models.objective import ema_update, prediction_loss, vicreg_terms
from gjp.models.presets import preset_settings
from gjp.models.transformer import Encoder, TransformerConfig


@dataclass(frozen=True)
class GeoJepaConfig:
    dim: int = 384
    depth: int = 12
    heads: int = 8
    registers: int = 0
    predictor_dim: int = 192
    predictor_depth: int = 4
    predictor_heads: int = 6
    smooth_l1_beta: float = 1.0
    vicreg_beta: float = 0.02
    # The tokens a tile vector pools: None, the target encoder's output (after its final
    # norm); k, its residual stream after k blocks, before any norm (0: its input tokens).
    pool_layer: int | None = None

    def __post_init__(self):
        if self.pool_layer is not None and not (isinstance(self.pool_layer, int)
                                                and 0 <= self.pool_layer <= self.depth):
            raise ValueError(f"pool_layer={self.pool_layer!r}: give a block count from 0 to depth "
                             f"({self.depth}), or null for the encoder's output")

    @classmethod
    def preset(cls, name: str, **overrides) -> GeoJepaConfig:
        return cls(**{**preset_settings(PRESETS, name), **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


#: ``tiny`` for CPU tests and the demo; ``cpu`` is ``tiny`` at width 384 (the size issue 14's
#: experiment chose on validation; its training settings are in gjp.pretrain.geojepa.PRESET_TRAINING);
#: both pool the first block's residual stream, which retrieves better than the output
#: (docs/experiments/2026-12-03.md); ``base`` is the thesis's model.
PRESETS = {
    "tiny": {"dim": 64, "depth": 2, "heads": 4, "predictor_dim": 32, "predictor_depth": 1, "predictor_heads": 4,
             "pool_layer": 1},
    "cpu": {"dim": 384, "depth": 2, "heads": 4, "predictor_dim": 32, "predictor_depth": 1, "predictor_heads": 4,
            "pool_layer": 1},
    "small": {"dim": 192, "depth": 6, "heads": 6, "predictor_dim": 96, "predictor_depth": 2, "predictor_heads": 4},
    "base": {"dim": 384, "depth": 12, "heads": 8, "predictor_dim": 192, "predictor_depth": 4, "predictor_heads": 6},
}


class Predictor(nn.Module):
    def __init__(self, config: GeoJepaConfig):
        super().__init__()
        p = config.predictor_dim
        self.context_in = nn.Linear(config.dim, p)
        self.condition_in = nn.Linear(config.dim, p)
        self.mask_token = nn.Parameter(torch.zeros(p))
        self.encoder = Encoder(TransformerConfig(p, config.predictor_depth, config.predictor_heads))
        self.out = nn.Linear(p, config.dim)

    def forward(self, context_out, conditions, context_mask, target_mask) -> torch.Tensor:
        """All [N,T,…] (N = B·K): predictions [N,T,d], meaningful in target slots only."""
        conditions = self.condition_in(conditions)
        x = torch.where(context_mask[..., None], self.context_in(context_out), self.mask_token) + conditions
        visible = context_mask | target_mask
        return self.out(self.encoder(x, padding=~visible))


class GeoJepa(nn.Module):
    def __init__(self, config: GeoJepaConfig):
        super().__init__()
        self.config = config
        body = TransformerConfig(config.dim, config.depth, config.heads, registers=config.registers)
        self.context_encoder = Encoder(body)
        self.predictor = Predictor(config)
        self.target_encoder = copy.deepcopy(self.context_encoder).requires_grad_(False)
        # Every output token shares one large component; cosine neighbours of tiles pooled
        # around it hang on what is left. Zeros until pretraining's last pass sets it (and in
        # checkpoints from before it existed, so their tile vectors stay as they were).
        self.register_buffer("token_center", torch.zeros(config.dim))
        self.register_load_state_dict_pre_hook(_center_defaults_to_zero)

    def train(self, mode: bool = True):
        super().train(mode)
        self.target_encoder.eval()  # always: its outputs are targets, not a model in training
        return self

    def forward(self, tokens, conditions, padding, context_mask, target_masks, target_tokens=None) -> dict:
        """``target_tokens``: what the target encoder reads (the target tokenizer's clean
        tokens); ``tokens`` when not given."""
        b, k, t = target_masks.shape
        with torch.no_grad():
            targets = self.target_encoder(tokens if target_tokens is None else target_tokens, padding)
        context_out = self.context_encoder(tokens, ~context_mask)
        def per_target(v):  # [B,…] → [B·K,…]: the K target blocks as one batch
            return v.repeat_interleave(k, dim=0)

        predicted = self.predictor(per_target(context_out), per_target(conditions), per_target(context_mask),
                                   target_masks.reshape(b * k, t)).view(b, k, t, -1)
        real_targets = target_masks
        loss_prediction = prediction_loss(predicted, targets[:, None].expand_as(predicted), real_targets,
                                          self.config.smooth_l1_beta)
        pred_var, pred_cov = vicreg_terms(predicted[real_targets])
        ctx_var, ctx_cov = vicreg_terms(context_out[context_mask])
        regulariser = pred_var + pred_cov + ctx_var + ctx_cov
        loss = loss_prediction + self.config.vicreg_beta * regulariser
        return {"loss": loss, "prediction": loss_prediction.detach(), "variance": (pred_var + ctx_var).detach(),
                "covariance": (pred_cov + ctx_cov).detach(), "target_tokens": real_targets.sum(),
                "context_tokens": context_mask.sum(), "targets": targets}  # counts stay tensors: no sync, no graph break

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        ema_update(self.target_encoder, self.context_encoder, momentum)

    @torch.no_grad()
    def pooled_tokens(self, tokens, padding) -> tuple[torch.Tensor, torch.Tensor]:
        """(the tokens [B,T,d] a tile vector pools, before centring — see ``pool_layer`` —,
        token outputs [B,T,d] as the target encoder gives them)."""
        out, hidden = self.target_encoder.outputs(tokens, padding, self.config.pool_layer)
        return (out if hidden is None else hidden), out

    @torch.no_grad()
    def embed(self, tokens, padding) -> tuple[torch.Tensor, torch.Tensor]:
        """(tile vectors [B, 2d] = [mean ‖ max] over real pooled tokens centred on
        ``token_center``, token outputs [B,T,d] as the target encoder gives them)."""
        pooled, out = self.pooled_tokens(tokens, padding)
        return pool_tiles(pooled - self.token_center.to(pooled.dtype), padding), out


def _center_defaults_to_zero(module, state_dict, prefix, *_):
    state_dict.setdefault(prefix + "token_center", torch.zeros_like(module.token_center))


def pool_tiles(values: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """``[B,T,d]`` token values → ``[B,2d]`` tile vectors: [mean ‖ max] over real tokens
    (padding never counts; a tile without any real token gets zeros)."""
    real = (~padding)[..., None]
    mean = (values * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
    peak = values.masked_fill(~real, float("-inf")).amax(dim=1)
    peak = torch.where(real.any(dim=1), peak, torch.zeros_like(peak))
    return torch.cat([mean, peak], dim=-1)


class TileJepa(nn.Module):
    """A tokenizer and a :class:`GeoJepa` as one module: ``forward(batch, generator)`` is
    the JEPA step of one collated, masked batch (what DDP wraps, so both are trained and
    synchronised together). The outputs are GeoJepa's plus the batch's ``padding``.

    Without ``target_tokenizer`` (the default), the target encoder reads the online
    tokenizer's tokens. With it, the targets are read through a moving average of the
    tokenizer, always in eval mode, as I-JEPA's target encoder is a moving average of the
    whole context encoder, its input embedding included: targets are then clean (no
    modality dropout, no position noise, which are the context's augmentations) and the
    online tokenizer cannot shape them (``pretrain --set target_tokenizer=ema``)."""

    def __init__(self, tokenizer: nn.Module, model: GeoJepa, target_tokenizer: bool = False):
        super().__init__()
        self.tokenizer, self.model = tokenizer, model
        self.target_tokenizer = copy.deepcopy(tokenizer).requires_grad_(False) if target_tokenizer else None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.target_tokenizer is not None:
            self.target_tokenizer.eval()
        return self

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        tokens, conditions, padding = self.tokenizer(batch, generator)
        target_tokens = None
        if self.target_tokenizer is not None:
            with torch.no_grad():
                target_tokens = self.target_tokenizer(batch)[0]
        out = self.model(tokens, conditions, padding, batch["context_mask"], batch["target_masks"], target_tokens)
        return {**out, "padding": padding}

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        self.model.update_target(momentum)
        if self.target_tokenizer is not None:
            ema_update(self.target_tokenizer, self.tokenizer, momentum)
