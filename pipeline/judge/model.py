"""The judge's network: FCN-8s in shape (class scores at strides 32, 16 and 8, fused coarse to fine)
with a compact VGG-style encoder of five stages of two 3x3 conv + BatchNorm + ReLU, each halving the
resolution. `FCNConfig.width` scales it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.labels import NUM_CLASSES


@dataclass
class FCNConfig:
    width: int = 24
    num_classes: int = NUM_CLASSES


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class FCN8s(nn.Module):
    """Images in [-1, 1] ``(N, 3, H, W)`` -> class logits ``(N, num_classes, H, W)``."""

    def __init__(self, cfg: FCNConfig) -> None:
        super().__init__()
        widths = [cfg.width * m for m in (1, 2, 4, 8, 8)]  # strides 2, 4, 8, 16, 32
        stages, in_ch = [], 3
        for out_ch in widths:
            stages.append(
                nn.Sequential(_conv_bn_relu(in_ch, out_ch, stride=2), _conv_bn_relu(out_ch, out_ch))
            )
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.score_8 = nn.Conv2d(widths[2], cfg.num_classes, 1)
        self.score_16 = nn.Conv2d(widths[3], cfg.num_classes, 1)
        self.score_32 = nn.Conv2d(widths[4], cfg.num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = []
        x = images
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        # FCN-8s: coarse scores refined by the finer strides' scores (bilinear instead of learned
        # deconvolution, which the original initialised to bilinear anyway).
        scores = self.score_32(features[4])
        scores = resize(scores, features[3].shape[-2:]) + self.score_16(features[3])
        scores = resize(scores, features[2].shape[-2:]) + self.score_8(features[2])
        return resize(scores, images.shape[-2:])


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def init_weights(net: nn.Module, generator: torch.Generator) -> None:
    """He-normal convolutions from `generator` (never the global RNG), BatchNorm to identity."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
