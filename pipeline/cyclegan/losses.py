"""The CycleGAN objective, written once.

Domains and networks (the reference code's Cityscapes convention):

    X = domain A = street photos          Y = domain B = colour label maps
    G: X -> Y  (photo -> labels)          F: Y -> X  (labels -> photo)
    D_Y judges label maps: real y vs G(x) D_X judges photos: real x vs F(y)

Tensors keep the reference's names (its G_A is G, its G_B is F): real_A = x, real_B = y,
fake_B = G(x), fake_A = F(y), rec_A = F(G(x)), rec_B = G(F(y)), idt_A = G(y), idt_B = F(x).

Generator objective (G and F are optimised together), each term only when its switch is on:

    loss_G_adv          = MSE(D_Y(G(x)), 1)                      adversarial (least-squares GAN)
    loss_F_adv          = MSE(D_X(F(y)), 1)                      adversarial
    loss_cycle_forward  = lambda * |F(G(x)) - x|_1               forward cycle  photo -> G -> F -> photo
    loss_cycle_backward = lambda * |G(F(y)) - y|_1               backward cycle labels -> F -> G -> labels
    loss_idt_G          = lambda * lambda_identity * |G(y) - y|_1    identity (the reference's loss_idt_A;
    loss_idt_F          = lambda * lambda_identity * |F(x) - x|_1              loss_idt_B)
    loss_G              = sum of the terms above

Discriminator objective (halved, as in the reference, so D learns at half the generators' rate), on fakes
drawn from a history pool (`ImagePool`) rather than the latest generator output:

    loss_D_Y = 0.5 * (MSE(D_Y(y), 1) + MSE(D_Y(pool_Y(G(x))), 0))
    loss_D_X = 0.5 * (MSE(D_X(x), 1) + MSE(D_X(pool_X(F(y))), 0))

|.|_1 and MSE are means over pixels. A term that is off is never computed (its forward pass does not
run) and is absent from the returned dict, so nothing logs it as a fake zero.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as nnf

from pipeline.core.config import check_range
from pipeline.cyclegan.models import CycleGANNets

LossDict = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class LossSwitches:
    """One ablation variant (params `variants.<name>`): which terms of the objective are on."""

    adversarial: bool = True  # both directions: G against D_Y and F against D_X
    cycle_forward: bool = True  # photo -> G -> F -> photo
    cycle_backward: bool = True  # labels -> F -> G -> labels
    # The paper's lambda_identity: the identity loss's weight relative to lambda_cycle (the reference's
    # --lambda_identity, 0.5 in its defaults); 0 turns it off, as the paper did for Cityscapes.
    lambda_identity: float = 0.0

    def __post_init__(self) -> None:
        check_range(self, "lambda_identity", ge=0)
        if not (self.adversarial or self.cycle_forward or self.cycle_backward or self.lambda_identity > 0):
            raise ValueError("every loss term is off: turn on adversarial, a cycle, or lambda_identity")


def lsgan_loss(prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean squared distance of the patch scores to 1 (real) or 0 (fake)."""
    target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
    return nnf.mse_loss(prediction, target)


def generator_losses(
    nets: CycleGANNets,
    real_A: torch.Tensor,
    real_B: torch.Tensor,
    switches: LossSwitches,
    lambda_cycle: float,
) -> tuple[LossDict, dict[str, torch.Tensor]]:
    """The generator objective of one batch: (named losses incl. `loss_G`, the images computed on the way).

    The discriminators are only run for the adversarial terms; their parameters are expected to be
    frozen by the caller (the reference's order: G and F step with D fixed).
    """
    G, F = nets.G, nets.F
    adversarial = switches.adversarial
    fakes: dict[str, torch.Tensor] = {}
    losses: LossDict = {}
    if adversarial or switches.cycle_forward:
        fakes["fake_B"] = G(real_A)
    if adversarial or switches.cycle_backward:
        fakes["fake_A"] = F(real_B)
    if adversarial:
        if nets.D_X is None or nets.D_Y is None:
            raise ValueError("the adversarial terms need D_X and D_Y")
        losses["loss_G_adv"] = lsgan_loss(nets.D_Y(fakes["fake_B"]), True)
        losses["loss_F_adv"] = lsgan_loss(nets.D_X(fakes["fake_A"]), True)
    if switches.cycle_forward:
        fakes["rec_A"] = F(fakes["fake_B"])
        losses["loss_cycle_forward"] = lambda_cycle * nnf.l1_loss(fakes["rec_A"], real_A)
    if switches.cycle_backward:
        fakes["rec_B"] = G(fakes["fake_A"])
        losses["loss_cycle_backward"] = lambda_cycle * nnf.l1_loss(fakes["rec_B"], real_B)
    if switches.lambda_identity > 0:
        weight = lambda_cycle * switches.lambda_identity
        fakes["idt_A"] = G(real_B)
        fakes["idt_B"] = F(real_A)
        losses["loss_idt_G"] = weight * nnf.l1_loss(fakes["idt_A"], real_B)
        losses["loss_idt_F"] = weight * nnf.l1_loss(fakes["idt_B"], real_A)
    losses["loss_G"] = torch.stack(list(losses.values())).sum()
    return losses, fakes


def discriminator_losses(
    nets: CycleGANNets,
    real_A: torch.Tensor,
    real_B: torch.Tensor,
    pooled_fake_A: torch.Tensor,
    pooled_fake_B: torch.Tensor,
) -> LossDict:
    """The halved LSGAN discriminator losses `loss_D_X`, `loss_D_Y`; fakes are detached here."""
    if nets.D_X is None or nets.D_Y is None:
        raise ValueError("discriminator_losses needs D_X and D_Y (the variant has no adversarial term)")

    def halved(D: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return 0.5 * (lsgan_loss(D(real), True) + lsgan_loss(D(fake.detach()), False))

    return {
        "loss_D_X": halved(nets.D_X, real_A, pooled_fake_A),
        "loss_D_Y": halved(nets.D_Y, real_B, pooled_fake_B),
    }
