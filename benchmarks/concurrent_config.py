"""What both designs of `python -m benchmarks.concurrent` share: one run's size and timing
(`ConcurrentConfig`, `TINY` for the CPU smoke run), the synthetic domains every run trains on, the runs'
seeds, and the checks around the timed steps.
"""

from __future__ import annotations

import dataclasses

import torch

from pipeline.cyclegan.config import TrainConfig
from pipeline.cyclegan.losses import LossDict
from pipeline.data.domains import TrainingDomains


@dataclasses.dataclass(frozen=True)
class ConcurrentConfig:
    """What one run is (size of images and networks) and how it is timed."""

    image_size: int = 128  # crop size: what the networks see
    load_size: int = 143  # the synthetic domains' image size (random crops of it)
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 6
    warmup: int = 3  # untimed steps per run (cuDNN autotuning, Adam state, allocator)
    repeats: int = 3  # timed windows of `steps` steps; the median (high) window gives the figure
    threads: int = 1  # torch CPU threads per run (design a: per process)
    batched_threads: int | None = None  # design b's one process (None: N x threads, up to the cores)
    images: int = 16  # synthetic images per domain
    bf16: bool = True  # bf16 autocast on CUDA (ignored on the CPU, as train.bf16 is)
    budget_s: float | None = None  # start no (design, N) measurement after this many seconds

    def train_config(self, seed: int, device: torch.device) -> TrainConfig:
        """One run's training config: the paper's settings at this size, batch 1."""
        return TrainConfig(
            seed=seed,
            device=device.type,
            num_threads=self.threads,
            bf16=self.bf16,
            fast=device.type == "cuda",  # device-resident data and pools, fused Adam
            load_size=self.load_size,
            crop_size=self.image_size,
            batch_size=1,
            ngf=self.ngf,
            ndf=self.ndf,
            n_blocks=self.n_blocks,
        )


TINY = ConcurrentConfig(image_size=32, load_size=36, ngf=8, ndf=8, n_blocks=1, warmup=1, repeats=1, images=8)
TINY_RUNS, TINY_STEPS = (1, 2), 3


def synthetic_domains(cfg: ConcurrentConfig) -> TrainingDomains:
    """Random uint8 photos and label maps (the same in every process: seeded)."""
    generator = torch.Generator().manual_seed(0)
    shape = (cfg.images, 3, cfg.load_size, cfg.load_size)
    photos, labels = (torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8) for _ in "AB")
    ids = [str(i) for i in range(cfg.images)]
    return TrainingDomains(photos=photos, labels=labels, photo_ids=ids, label_ids=list(ids))


def run_seeds(runs: int) -> list[int]:
    return list(range(runs))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_finite(losses: LossDict) -> None:
    """Raise `FloatingPointError` naming the first loss that is NaN or infinite."""
    for name, value in losses.items():
        if not torch.isfinite(value).all():
            raise FloatingPointError(f"{name} is not finite after the timed steps: {value.tolist()}")
