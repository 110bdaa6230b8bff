"""CycleGAN networks, layer for layer as in junyanz/pytorch-CycleGAN-and-pix2pix (`models/networks.py`).

- `ResnetGenerator`: Johnson et al.'s ResNet generator (the reference's `resnet_6blocks`/`resnet_9blocks`
  with instance norm): reflection pad + 7x7 stem, two stride-2 downsamplings, N residual blocks with
  reflection padding, two fractionally-strided upsamplings, 7x7 head, tanh.
- `PatchDiscriminator`: the 70x70 PatchGAN (the reference's `NLayerDiscriminator`, n_layers=3).

Instance norm is the reference's for CycleGAN (`--norm instance`): no affine parameters, no running
statistics (so eval() and train() compute the same thing), and the convolutions before it keep their
bias (the reference turns biases on exactly when the norm is instance norm).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

IMAGE_CHANNELS = 3


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    ngf: int = 64  # filters in the first layer; doubled by each downsampling
    n_blocks: int = 6  # residual blocks: 6 for 128x128 (the paper's Cityscapes setting), 9 for 256x256

    def __post_init__(self) -> None:
        if self.ngf < 1 or self.n_blocks < 0:
            raise ValueError(f"ngf must be >= 1 and n_blocks >= 0, got {self.ngf}, {self.n_blocks}")


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    ndf: int = 64  # filters in the first layer
    n_layers: int = 3  # stride-2 layers; 3 gives the 70x70 receptive field

    def __post_init__(self) -> None:
        if self.ndf < 1 or self.n_layers < 1:
            raise ValueError(f"ndf and n_layers must be >= 1, got {self.ndf}, {self.n_layers}")


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + (pad, conv3x3, norm, ReLU, pad, conv3x3, norm)(x)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=True),
            _norm(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=True),
            _norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Image-to-image generator; takes and returns NCHW images in [-1, 1] (side a multiple of 4)."""

    def __init__(self, cfg: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        ngf = cfg.ngf
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(IMAGE_CHANNELS, ngf, kernel_size=7, bias=True),
            _norm(ngf),
            nn.ReLU(True),
        ]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=True),
                _norm(ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4) for _ in range(cfg.n_blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult,
                    ngf * mult // 2,
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    bias=True,
                ),
                _norm(ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, IMAGE_CHANNELS, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake score per overlapping patch (70x70 for n_layers=3), no sigmoid (LSGAN)."""

    def __init__(self, cfg: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        ndf, kw, padw = cfg.ndf, 4, 1
        layers: list[nn.Module] = [
            nn.Conv2d(IMAGE_CHANNELS, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, cfg.n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            # The last of these keeps stride 1: it widens the receptive field without shrinking the map.
            stride = 2 if n < cfg.n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=stride, padding=padw, bias=True),
                _norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers += [nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@torch.no_grad()
def init_weights(module: nn.Module, generator: torch.Generator, gain: float = 0.02) -> None:
    """The reference's `init_type='normal'`: conv weights ~ N(0, gain), biases 0, drawn from `generator`."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            # Drawn on the CPU so a seed gives the same weights whatever device the module lives on.
            weight = torch.randn(layer.weight.shape, generator=generator) * gain
            layer.weight.copy_(weight)
            if layer.bias is not None:
                layer.bias.zero_()


@dataclasses.dataclass
class CycleGANNets:
    """The four networks; see `pipeline.cyclegan.losses` for what each one maps and judges.

    The discriminators are None when the variant has no adversarial term: they are then neither
    built, run, optimised nor saved.
    """

    G: ResnetGenerator  # photo (X, domain A) -> label map (Y, domain B)
    F: ResnetGenerator  # label map (Y) -> photo (X)
    D_X: PatchDiscriminator | None  # real photo vs F(y)
    D_Y: PatchDiscriminator | None  # real label map vs G(x)

    def named(self) -> dict[str, nn.Module]:
        """The networks that exist, by name (the checkpoint's keys)."""
        nets = {"G": self.G, "F": self.F, "D_X": self.D_X, "D_Y": self.D_Y}
        return {name: net for name, net in nets.items() if net is not None}

    @property
    def discriminators(self) -> list[PatchDiscriminator]:
        return [net for net in (self.D_X, self.D_Y) if net is not None]


def build_nets(
    gen_cfg: GeneratorConfig,
    disc_cfg: DiscriminatorConfig,
    with_discriminators: bool,
    generator: torch.Generator,
) -> CycleGANNets:
    """Build and initialise G, F (and D_X, D_Y); G and F first, so every variant starts from the same G, F."""
    G, F = ResnetGenerator(gen_cfg), ResnetGenerator(gen_cfg)
    init_weights(G, generator)
    init_weights(F, generator)
    D_X = D_Y = None
    if with_discriminators:
        D_X, D_Y = PatchDiscriminator(disc_cfg), PatchDiscriminator(disc_cfg)
        init_weights(D_X, generator)
        init_weights(D_Y, generator)
    return CycleGANNets(G=G, F=F, D_X=D_X, D_Y=D_Y)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
