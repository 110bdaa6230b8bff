"""The CycleGAN objective, written once.

Domains and networks (the reference code's Cityscapes convention):

    X = domain A = street photos          Y = domain B = colour label maps
    G: X -> Y  (photo -> labels)          F: Y -> X  (labels -> photo)
    D_Y judges label maps: real y vs G(x) D_X judges photos: real x vs F(y)

Tensors keep the reference's names: real_A = x, real_B = y, fake_B = G(x), fake_A = F(y),
rec_A = F(G(x)), rec_B = G(F(y)), idt_B = G(y), idt_A = F(x).

Generator objective (G and F are optimised together), each term only when its switch is on:

    loss_G_adv          = MSE(D_Y(G(x)), 1)                      adversarial (least-squares GAN)
    loss_F_adv          = MSE(D_X(F(y)), 1)                      adversarial
    loss_cycle_forward  = lambda * |F(G(x)) - x|_1               forward cycle  photo -> G -> F -> photo
    loss_cycle_backward = lambda * |G(F(y)) - y|_1               backward cycle labels -> F -> G -> labels
    loss_idt_G          = lambda * identity * |G(y) - y|_1       identity (weight relative to lambda,
    loss_idt_F          = lambda * identity * |F(x) - x|_1                 as the reference's lambda_identity)
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

from pipeline.models import CycleGANNets

LossDict = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class LossSwitches:
    """One ablation variant (params `variants.<name>`): which terms of the objective are on."""

    adversarial: bool = True  # both directions: G against D_Y and F against D_X
    cycle_forward: bool = True  # photo -> G -> F -> photo
    cycle_backward: bool = True  # labels -> F -> G -> labels
    identity: float = 0.0  # identity-loss weight relative to lambda_cycle (0 = off, the paper's Cityscapes)

    def __post_init__(self) -> None:
        if self.identity < 0:
            raise ValueError(f"identity must be >= 0, got {self.identity}")
        if not (self.adversarial or self.cycle_forward or self.cycle_backward or self.identity > 0):
            raise ValueError("every loss term is off: turn on adversarial, a cycle, or identity")


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
    if switches.identity > 0:
        weight = lambda_cycle * switches.identity
        fakes["idt_B"] = G(real_B)
        fakes["idt_A"] = F(real_A)
        losses["loss_idt_G"] = weight * nnf.l1_loss(fakes["idt_B"], real_B)
        losses["loss_idt_F"] = weight * nnf.l1_loss(fakes["idt_A"], real_A)
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


class ImagePool:
    """History of generated images (Shrivastava et al.), with the reference's `util/image_pool.py` semantics.

    Until the pool holds `size` images every new image is stored and returned. After that each image
    is, with probability 1/2, returned as is, or swapped with a uniformly chosen stored image (the
    stored one is returned). Images of one batch are taken in order, so a later image can receive an
    earlier one of the same batch, exactly as the reference's loop does.

    Unlike the reference, a batch is handled with tensor ops only: the random decisions of a whole
    batch come from one `draw` on the CPU `generator` (one seed gives one sequence on every device),
    and `apply` runs on the device of the images with no host synchronisation and fixed shapes, so it
    can sit inside a captured CUDA graph. The stored images and the fill count live on that device.
    """

    def __init__(self, size: int, generator: torch.Generator):
        self.size = size
        self.generator = generator
        self.images: torch.Tensor | None = None  # (size, C, H, W); slots [0, count) are filled
        self._count: torch.Tensor | None = None  # 0-d int64 beside `images`, updated in place

    @property
    def count(self) -> int:
        """Stored images (reads the device counter: a host sync, for tests and checkpoints)."""
        return 0 if self._count is None else int(self._count)

    def draw(self, batch_size: int) -> torch.Tensor:
        """The random decisions for `batch_size` images, int64 (batch_size,) on the CPU, in one call.

        r in [0, 2*size): the image swaps with slot r - size when r >= size (probability 1/2, slot
        uniform), else it is returned as is. Ignored while the pool is filling. A pool of size 0 draws
        nothing (zeros).
        """
        if self.size == 0:
            return torch.zeros(batch_size, dtype=torch.long)
        return torch.randint(2 * self.size, (batch_size,), generator=self.generator)

    @torch.no_grad()
    def apply(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Return a batch like `images`, some of them replaced by older fakes; `draws` from `draw`,
        on the images' device."""
        images = images.detach()
        if self.size == 0:
            return images
        if self.images is None:
            # Stored in the fakes' own layout (channels_last on the fast path): no conversion per step.
            nhwc = (
                images.dim() == 4
                and not images.is_contiguous()
                and images.is_contiguous(memory_format=torch.channels_last)
            )
            layout = torch.channels_last if nhwc else torch.contiguous_format
            shape = (self.size, *images.shape[1:])
            self.images = torch.empty(
                shape, dtype=images.dtype, device=images.device, memory_format=layout
            ).zero_()
            self._count = torch.zeros((), dtype=torch.long, device=images.device)
        position = torch.arange(images.shape[0], device=images.device)
        fill_slot = self._count + position
        filling = fill_slot < self.size
        swap = draws >= self.size
        slot = torch.where(filling, fill_slot, draws - self.size * swap.long())
        writes = filling | swap
        returns_stored = swap & ~filling

        def latest_writer(slots: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor:
            # For each of `slots`: the last position in the batch that wrote it (-1: none).
            hits = (slots[:, None] == slot[None, :]) & writes[None, :]
            if before is not None:
                hits &= position[None, :] < before[:, None]
            return torch.where(hits, position[None, :], -1).amax(dim=1)

        def per_image(mask: torch.Tensor) -> torch.Tensor:
            return mask.view(-1, *([1] * (images.dim() - 1)))

        def pick(use_batch: torch.Tensor, index: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
            return torch.where(per_image(use_batch), images[index.clamp(min=0)], fallback)

        # What image i finds in its slot: an earlier image of this batch, or the stored one.
        earlier = latest_writer(slot, before=position)
        found = pick(earlier >= 0, earlier, self.images[slot])
        out = torch.where(per_image(returns_stored), found, images)
        # The pool after the batch: every slot holds the last image written to it.
        last = latest_writer(torch.arange(self.size, device=images.device), before=None)
        self.images.copy_(pick(last >= 0, last, self.images))
        self._count.copy_((self._count + images.shape[0]).clamp(max=self.size))
        return out

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """`apply` with a fresh `draw` (the plain path; the fast path draws ahead and packs the draws)."""
        return self.apply(images, self.draw(images.shape[0]).to(images.device))

    def state_dict(self) -> dict:
        """Tensors and ints only, so a checkpoint loads with `torch.load(weights_only=True)`."""
        count = self.count
        stored = self.images[:count].cpu() if self.images is not None else torch.empty(0)
        return {
            "size": self.size,
            "count": count,
            "images": stored.clone(),
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        if state["size"] != self.size:
            raise ValueError(f"pool size {state['size']} in the checkpoint, {self.size} configured")
        self.generator.set_state(state["rng"])
        self.images = self._count = None
        if state["count"]:
            stored = state["images"].to(device)
            self.images = stored.new_zeros((self.size, *stored.shape[1:]))
            self.images[: state["count"]] = stored
            self._count = torch.tensor(state["count"], dtype=torch.long, device=device)
