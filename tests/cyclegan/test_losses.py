import pytest
import torch
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.cyclegan.losses import (
    LossSwitches,
    discriminator_losses,
    generator_losses,
    lsgan_loss,
)
from pipeline.cyclegan.models import CycleGANNets, DiscriminatorConfig, GeneratorConfig, build_nets
from pipeline.cyclegan.pool import ImagePool

VARIANTS = {  # params.yaml's table
    "cycle_only": LossSwitches(adversarial=False, cycle_forward=True, cycle_backward=True),
    "gan_only": LossSwitches(adversarial=True, cycle_forward=False, cycle_backward=False),
    "gan_forward": LossSwitches(adversarial=True, cycle_forward=True, cycle_backward=False),
    "gan_backward": LossSwitches(adversarial=True, cycle_forward=False, cycle_backward=True),
    "cyclegan": LossSwitches(),
}
EXPECTED_TERMS = {
    "cycle_only": {"loss_cycle_forward", "loss_cycle_backward"},
    "gan_only": {"loss_G_adv", "loss_F_adv"},
    "gan_forward": {"loss_G_adv", "loss_F_adv", "loss_cycle_forward"},
    "gan_backward": {"loss_G_adv", "loss_F_adv", "loss_cycle_backward"},
    "cyclegan": {"loss_G_adv", "loss_F_adv", "loss_cycle_forward", "loss_cycle_backward"},
}


def tiny_nets(with_discriminators=True) -> CycleGANNets:
    gen, disc = GeneratorConfig(ngf=4, n_blocks=1), DiscriminatorConfig(ndf=4)
    return build_nets(gen, disc, with_discriminators, torch.Generator().manual_seed(0))


def images(seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1


class CallLog:
    """Forward hooks recording which network saw which input."""

    def __init__(self, nets: CycleGANNets):
        self.calls: list[tuple[str, torch.Tensor]] = []
        self.outputs: dict[int, str] = {}
        for name, net in nets.named().items():
            net.register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(_module, inputs, output):
            self.calls.append((name, inputs[0]))
            self.outputs[id(output)] = name

        return hook

    def count(self, name):
        return sum(1 for called, _ in self.calls if called == name)

    def fed_from(self, name, producer):
        """How often `name` ran on an output of `producer`."""
        return sum(1 for called, x in self.calls if called == name and self.outputs.get(id(x)) == producer)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_computes_exactly_its_terms(variant):
    switches = VARIANTS[variant]
    nets = tiny_nets()  # discriminators present even for cycle_only: they must stay unused
    log = CallLog(nets)
    losses, fakes = generator_losses(nets, images(0), images(1), switches, lambda_cycle=10.0)
    assert set(losses) == EXPECTED_TERMS[variant] | {"loss_G"}
    assert torch.allclose(losses["loss_G"], sum(v for k, v in losses.items() if k != "loss_G"))
    losses["loss_G"].backward()

    d_params = [p for d in nets.discriminators for p in d.parameters()]
    if switches.adversarial:
        assert log.count("D_X") == log.count("D_Y") == 1
    else:
        assert log.count("D_X") == log.count("D_Y") == 0
        assert all(p.grad is None for p in d_params)
    # backward cycle = labels -> F -> G: G applied to F's output happens only when it is on.
    assert log.fed_from("G", "F") == int(switches.cycle_backward)
    assert log.fed_from("F", "G") == int(switches.cycle_forward)
    assert log.count("G") == 1 + int(switches.cycle_backward)
    assert log.count("F") == 1 + int(switches.cycle_forward)
    assert ("rec_B" in fakes) == switches.cycle_backward
    assert ("rec_A" in fakes) == switches.cycle_forward


def test_identity_terms_only_when_weighted():
    nets = tiny_nets()
    losses, fakes = generator_losses(
        nets, images(0), images(1), LossSwitches(lambda_identity=0.5), lambda_cycle=10.0
    )
    assert {"loss_idt_G", "loss_idt_F"} <= set(losses)
    # The reference's names: idt_A = G_A(real_B) = G(y), idt_B = G_B(real_A) = F(x).
    assert torch.equal(fakes["idt_A"], nets.G(images(1))) and torch.equal(fakes["idt_B"], nets.F(images(0)))
    expected = 10.0 * 0.5 * (fakes["idt_A"] - images(1)).abs().mean()
    assert torch.allclose(losses["loss_idt_G"], expected)
    losses, _ = generator_losses(
        nets, images(0), images(1), LossSwitches(lambda_identity=0.0), lambda_cycle=10.0
    )
    assert not {k for k in losses if "idt" in k}


class Const(nn.Module):
    """A stand-in network: adds a constant (generators) or returns a constant score map (discriminators)."""

    def __init__(self, value, score=False):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))
        self.score = score

    def forward(self, x):
        return self.value.expand(x.shape[0], 1, 2, 2) if self.score else x + self.value


def test_lsgan_and_cycle_values_on_a_hand_case():
    nets = CycleGANNets(
        G=Const(0.5), F=Const(-0.25), D_X=Const(0.25, score=True), D_Y=Const(0.75, score=True)
    )
    x, y = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    losses, fakes = generator_losses(nets, x, y, LossSwitches(), lambda_cycle=10.0)
    assert losses["loss_G_adv"].item() == pytest.approx((0.75 - 1) ** 2)
    assert losses["loss_F_adv"].item() == pytest.approx((0.25 - 1) ** 2)
    # F(G(x)) = x + 0.25 and G(F(y)) = y + 0.25: each cycle is 10 * 0.25.
    assert losses["loss_cycle_forward"].item() == pytest.approx(2.5)
    assert losses["loss_cycle_backward"].item() == pytest.approx(2.5)
    assert losses["loss_G"].item() == pytest.approx(0.0625 + 0.5625 + 5.0)
    d = discriminator_losses(nets, x, y, fakes["fake_A"], fakes["fake_B"])
    # Halved: 0.5 * ((D(real) - 1)^2 + D(fake)^2).
    assert d["loss_D_X"].item() == pytest.approx(0.5 * ((0.25 - 1) ** 2 + 0.25**2))
    assert d["loss_D_Y"].item() == pytest.approx(0.5 * ((0.75 - 1) ** 2 + 0.75**2))
    assert lsgan_loss(torch.full((1, 1, 3, 3), 2.0), False).item() == pytest.approx(4.0)


def test_discriminator_losses_do_not_reach_the_generators():
    nets = tiny_nets()
    _, fakes = generator_losses(nets, images(0), images(1), LossSwitches(), lambda_cycle=10.0)
    d = discriminator_losses(nets, images(0), images(1), fakes["fake_A"], fakes["fake_B"])
    (d["loss_D_X"] + d["loss_D_Y"]).backward()
    assert all(p.grad is None for p in nets.G.parameters())
    assert all(p.grad is not None for p in nets.D_X.parameters())


def test_switches_validate():
    with pytest.raises(ValueError, match="every loss term is off"):
        LossSwitches(adversarial=False, cycle_forward=False, cycle_backward=False)
    with pytest.raises(ValueError):
        LossSwitches(lambda_identity=-1)
    LossSwitches(adversarial=False, cycle_forward=False, cycle_backward=False, lambda_identity=0.5)


def test_switches_load_from_params_mapping():
    from pipeline.core.config import from_mapping

    switches = from_mapping(LossSwitches, {"adversarial": False, "lambda_identity": 0}, "variants.x")
    assert switches == LossSwitches(adversarial=False, lambda_identity=0.0)
    with pytest.raises(PipelineError, match=r"variants\.x\.cycle"):
        from_mapping(LossSwitches, {"cycle": True}, "variants.x")


def _numbered(start, count):
    return torch.arange(start, start + count, dtype=torch.float32).view(count, 1, 1, 1).expand(count, 3, 2, 2)


def test_pool_fills_then_swaps_half_the_time():
    pool = ImagePool(4, torch.Generator().manual_seed(0))
    first = pool.query(_numbered(0, 4))
    assert torch.equal(first, _numbered(0, 4))  # filling: everything returned as is
    returned_old = 0
    for start in range(100, 1100, 10):
        batch = _numbered(start, 10)
        returned_old += int((pool.query(batch) != batch)[:, 0, 0, 0].sum())
    assert 400 < returned_old < 600  # about half of 1000 queries come from history
    assert pool.count == 4


def test_pool_is_seeded_and_its_state_round_trips():
    a = ImagePool(3, torch.Generator().manual_seed(5))
    a.query(_numbered(0, 5))
    restored = ImagePool(3, torch.Generator().manual_seed(999))
    restored.load_state_dict(a.state_dict())
    torch.save(a.state_dict(), buffer := __import__("io").BytesIO())
    buffer.seek(0)
    torch.load(buffer, weights_only=True)
    for start in (10, 20, 30):
        assert torch.equal(a.query(_numbered(start, 4)), restored.query(_numbered(start, 4)))


def test_pool_of_size_zero_passes_through():
    pool = ImagePool(0, torch.Generator())
    batch = _numbered(0, 2)
    assert torch.equal(pool.query(batch), batch)
