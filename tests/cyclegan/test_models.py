import pytest
import torch
from torch import nn

from pipeline.cyclegan.models import (
    DiscriminatorConfig,
    GeneratorConfig,
    PatchDiscriminator,
    ResnetGenerator,
    build_nets,
    count_parameters,
    init_weights,
)


@pytest.mark.parametrize(
    ("n_blocks", "expected"),
    [(6, 7_837_699), (9, 11_378_179)],  # the reference's resnet_6blocks / resnet_9blocks at ngf 64
)
def test_generator_parameter_count_matches_reference(n_blocks, expected):
    assert count_parameters(ResnetGenerator(GeneratorConfig(ngf=64, n_blocks=n_blocks))) == expected


def test_patchgan_parameter_count_matches_reference():
    assert count_parameters(PatchDiscriminator(DiscriminatorConfig(ndf=64, n_layers=3))) == 2_764_737


def test_shapes_and_output_range():
    generator = ResnetGenerator(GeneratorConfig(ngf=4, n_blocks=1))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = generator(x)
    assert y.shape == x.shape
    assert y.abs().max() <= 1
    # 70x70 PatchGAN at 128x128 gives the reference's 14x14 map of patch scores.
    assert PatchDiscriminator(DiscriminatorConfig(ndf=2)).eval()(torch.zeros(1, 3, 128, 128)).shape == (
        1,
        1,
        14,
        14,
    )


def test_instance_norm_has_no_affine_parameters_or_running_stats():
    net = ResnetGenerator(GeneratorConfig(ngf=4, n_blocks=1))
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)
    assert not list(net.buffers())
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(m.bias is not None for m in convs)


def test_init_is_seeded_normal_with_zero_bias():
    def weights(seed):
        net = ResnetGenerator(GeneratorConfig(ngf=8, n_blocks=2))
        init_weights(net, torch.Generator().manual_seed(seed))
        return net

    a, b, c = weights(1), weights(1), weights(2)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
    conv_weights = torch.cat([m.weight.flatten() for m in a.modules() if isinstance(m, nn.Conv2d)])
    assert abs(conv_weights.mean()) < 2e-3 and abs(conv_weights.std() - 0.02) < 1e-3
    assert all(not m.bias.any() for m in a.modules() if isinstance(m, nn.Conv2d))


def test_build_nets_skips_discriminators_and_keeps_generator_init():
    gen, disc = GeneratorConfig(ngf=4, n_blocks=1), DiscriminatorConfig(ndf=4)
    full = build_nets(gen, disc, True, torch.Generator().manual_seed(0))
    no_d = build_nets(gen, disc, False, torch.Generator().manual_seed(0))
    assert set(full.named()) == {"G", "F", "D_X", "D_Y"}
    assert set(no_d.named()) == {"G", "F"} and no_d.discriminators == []
    # Every variant starts from the same G and F, with or without discriminators.
    assert all(torch.equal(p, q) for p, q in zip(full.G.parameters(), no_d.G.parameters(), strict=True))
