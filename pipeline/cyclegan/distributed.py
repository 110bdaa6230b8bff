"""Data-parallel training of one variant over several processes (torch DDP, launched by `torchrun`).

    python -m torch.distributed.run --nproc_per_node 4 -m stages.train --variant cyclegan ...

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; `train_variant` sees them and trains with one process
per GPU (NCCL), or per CPU process with gloo (how the tests run it). The semantics are those of one
process with the same global batch:

- `train.batch_size` is the global batch; each rank takes its contiguous share of every batch the
  (identically seeded) sampler draws, so the images seen are exactly the single-process ones.
- Gradients are averaged over ranks (DDP), which equals the gradient of the global-batch mean loss:
  every loss is a mean over images of equal-sized shares, and instance norm is per image.
- The history pools are global: each rank gathers every rank's fakes, queries its own copy of the pool
  with the same draws (so the copies stay identical), and keeps its share of the result. D therefore
  sees exactly the fakes a single process would.
- Losses are averaged over ranks when they are read back; only rank 0 logs to MLflow and writes the
  checkpoint. Every rank reads the checkpoint when resuming.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from pipeline.core.errors import PipelineError


@dataclasses.dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_rows(self, local_batch: int) -> slice:
        """This rank's rows of a global batch made of `local_batch` rows per rank."""
        return slice(self.rank * local_batch, (self.rank + 1) * local_batch)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `tensor` along dim 0, in rank order (the global batch)."""
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over ranks (a new tensor)."""
        total = tensor.clone()
        dist.all_reduce(total)
        return total / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (one small all-reduce)."""
        value = torch.tensor([int(flag)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()


def from_environment(device: torch.device, batch_size: int) -> Parallel | None:
    """Join the process group `torchrun` describes (None when not launched by it, or with one process).

    `device` is the resolved training device type: CUDA uses NCCL and GPU `LOCAL_RANK`, CPU uses gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if batch_size % world_size:
        raise PipelineError(
            f"train.batch_size {batch_size} is the global batch and must be a multiple of the "
            f"{world_size} processes: change it or --nproc_per_node"
        )
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise PipelineError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs: lower --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Parallel(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown(parallel: Parallel | None) -> None:
    """Leave the process group (a no-op for single-process training)."""
    if parallel is not None and dist.is_initialized():
        dist.destroy_process_group()
