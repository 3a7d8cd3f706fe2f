"""GeoJEPA's objective and the target encoder's update, as small functions of tensors.

- :func:`prediction_loss`: smooth-L1 between the predictor's outputs and the LayerNorm-ed
  target-encoder outputs, averaged over real target tokens only (padding and unused
  target slots never count, so the loss does not depend on how a batch is padded);
- :func:`vicreg_terms`: VICReg's variance term (the mean over dimensions of
  ``relu(1 − std)``) and covariance term (the sum of squared off-diagonal covariances
  over the width), over a set of token vectors, against collapse;
- :func:`ema_update`: ``target ← m · target + (1 − m) · online``, in place, without
  gradients.

Imports torch only.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def prediction_loss(predicted: torch.Tensor, target: torch.Tensor, real: torch.Tensor,
                    beta: float = 1.0) -> torch.Tensor:
    """``predicted``, ``target`` [..., D]; ``real`` [...] bool (True = a real target token).
    The target is LayerNorm-ed over its width (no parameters) and carries no gradient."""
    target = F.layer_norm(target.detach().float(), target.shape[-1:])
    per_token = F.smooth_l1_loss(predicted.float(), target, beta=beta, reduction="none").mean(dim=-1)
    real = real.to(per_token.dtype)
    return (per_token * real).sum() / real.sum().clamp(min=1)


def vicreg_terms(x: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [N, D] token vectors (real tokens only) → (variance term, covariance term)."""
    x = x.float()
    n, d = x.shape
    if n < 2:
        zero = x.sum() * 0
        return zero, zero
    x = x - x.mean(dim=0)
    std = torch.sqrt(x.var(dim=0) + eps)
    variance = F.relu(1 - std).mean()
    cov = (x.T @ x) / (n - 1)
    off_diagonal = cov - torch.diag(torch.diag(cov))
    covariance = off_diagonal.pow(2).sum() / d
    return variance, covariance


@torch.no_grad()
def ema_update(target: torch.nn.Module, online: torch.nn.Module, momentum: float) -> None:
    """Move every parameter of ``target`` towards ``online``'s (same architecture). The
    online module's frozen parameters (a tag table, a frozen encoder) are left alone: they
    are equal already, and rounding would make them drift."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        if o.requires_grad:
            t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
