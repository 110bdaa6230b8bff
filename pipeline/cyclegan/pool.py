"""The history pool of generated images that D_X and D_Y are trained on (Shrivastava et al.)."""

from __future__ import annotations

import torch


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
