"""What `python -m benchmarks.bench` measures: the modes (`Mode`), the sizes and timing of a run
(`BenchConfig`, `TINY` for the CPU smoke run), the default order of the modes, and the FLOPs of one
training iteration.
"""

from __future__ import annotations

import dataclasses

import torch

from pipeline.cyclegan.config import TrainConfig
from pipeline.cyclegan.losses import LossSwitches
from pipeline.cyclegan.step import (
    DiscriminatorObjective,
    GeneratorObjective,
    build_trainer,
    set_requires_grad,
)

H200_BF16_DENSE_TFLOPS = 790.0  # 8192^3 bf16 matmul measured on this workplace's H200 (KINDS.md)


@dataclasses.dataclass(frozen=True)
class Mode:
    """One measured configuration."""

    batch: int
    fast: bool = True
    compile: bool = False
    graphs: bool = False
    bf16: bool = True
    channels_last: bool = True
    dynamic_batch: bool = False  # one compile with a symbolic batch (>= 2) serves every batch size

    @property
    def key(self) -> str:
        if not self.fast:
            return "reference_b1"
        parts = ["fast"] + [name for name in ("compile", "graphs") if getattr(self, name)]
        return "_".join(parts) + f"_b{self.batch}"

    @property
    def label(self) -> str:
        if not self.fast:
            return "reference (fp32, eager, DataLoader)"
        flags = ["bf16" if self.bf16 else "fp32"] + ["cl"] * self.channels_last
        flags += ["compile"] * self.compile + ["graph"] * self.graphs
        return "fast " + "+".join(flags)


@dataclasses.dataclass
class BenchConfig:
    image_size: int = 128  # crop size: what the networks see
    load_size: int = 143
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 6
    batches: tuple[int, ...] = (8, 16, 32, 64)
    repeat_seconds: float = 1.0  # steps per timed run: about this long, from the warm-up's pace
    min_steps: int = 5
    max_steps: int = 500
    repeats: int = 5
    warmup: int = 5  # untimed steps per mode (the fast path captures after 3)
    reference_workers: int = 4  # the reference's --num_threads
    peak_tflops: float = H200_BF16_DENSE_TFLOPS
    compile_backend: str = "inductor"
    budget_s: float | None = None  # skip modes that would start after this many seconds
    profile: bool = True


TINY = BenchConfig(
    image_size=32,
    load_size=36,
    ngf=8,
    ndf=8,
    n_blocks=1,
    batches=(2, 4),
    repeat_seconds=0.02,
    min_steps=3,
    repeats=3,
    warmup=4,
    reference_workers=2,
    compile_backend="aot_eager",  # exercises dynamo + autograd tracing without a C++ build (CPU CI)
    profile=False,
)


def default_modes(cfg: BenchConfig) -> tuple[list[Mode], list[Mode]]:
    """(modes, late modes) in priority order (a budget cuts from the end): the headline numbers first;
    the late ones run after the per-phase timings and the kernel profile, which matter more."""
    largest = max(cfg.batches)
    modes = [
        Mode(1, fast=False, bf16=False, channels_last=False),
        Mode(1, graphs=True),
        Mode(1),
        Mode(largest),
    ]
    # One compile with a symbolic batch serves the whole sweep (largest first: the headline number).
    modes += [
        Mode(b, compile=True, graphs=True, dynamic_batch=True) for b in sorted(cfg.batches, reverse=True)
    ]
    return modes, [Mode(1, compile=True, graphs=True)]


def train_config(cfg: BenchConfig, mode: Mode, device: torch.device) -> TrainConfig:
    """The training config of `mode` at the benchmark's image and network sizes."""
    return TrainConfig(
        device=device.type,
        bf16=mode.bf16,
        fast=mode.fast,
        channels_last=mode.fast and mode.channels_last,
        compile=mode.compile,
        cuda_graphs=mode.graphs,
        load_size=cfg.load_size,
        crop_size=cfg.image_size,
        batch_size=mode.batch,
        ngf=cfg.ngf,
        ndf=cfg.ndf,
        n_blocks=cfg.n_blocks,
    )


def count_flops_per_pair(cfg: BenchConfig, switches: LossSwitches | None = None) -> float:
    """FLOPs of one training iteration at batch 1 (G objective forward+backward with D frozen, D
    objective forward+backward), counted by FlopCounterMode on meta tensors (no arithmetic runs)."""
    switches = switches or LossSwitches()
    from torch.utils.flop_counter import FlopCounterMode

    trainer = build_trainer(
        switches, train_config(cfg, Mode(1, fast=False), torch.device("cpu")), torch.device("cpu")
    )
    nets = trainer.nets
    for net in nets.named().values():
        net.to("meta")
    real_A = torch.empty(1, 3, cfg.image_size, cfg.image_size, device="meta")
    real_B = torch.empty_like(real_A)
    with FlopCounterMode(display=False) as counter:
        set_requires_grad(nets.discriminators, False)
        losses, fakes = GeneratorObjective(nets, switches, 10.0)(real_A, real_B)
        losses["loss_G"].backward()
        if switches.adversarial:
            set_requires_grad(nets.discriminators, True)
            d_losses = DiscriminatorObjective(nets)(
                real_A, real_B, fakes["fake_A"].detach(), fakes["fake_B"].detach()
            )
            (d_losses["loss_D_X"] + d_losses["loss_D_Y"]).backward()
    return float(counter.get_total_flops())
