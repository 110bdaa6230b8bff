"""Params section `train`: the typed, validated config of one training run, and its lr schedule."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

from pipeline.core.config import check_range

# Keys that say how a run is carried out, not what it trains: a checkpoint made under other values is
# continued, not restarted (max_steps only moves the stopping point; the device, the threads and the
# fast-path switches change how a step runs). They can change the last bits of the result (a GPU
# rounds otherwise than a CPU), so they stay DVC params deps. bf16, which changes the arithmetic on
# purpose, is not one of them.
RESUMABLE_KEYS = frozenset(
    {
        "device",
        "num_threads",
        "max_steps",
        "log_every",
        "fast",
        "compile",
        "cuda_graphs",
        "channels_last",
    }
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Params section `train`. The defaults here are the paper's Cityscapes settings; params.yaml's
    default profile shrinks them to fit a CPU.

    Batch size: `batch_size` photos and `batch_size` label maps per step, the global batch when
    several processes train data-parallel. The paper used 1 (the default); anything larger is a
    deviation from it. An epoch stays one pass over the larger domain, so a batch of B takes B times
    fewer optimiser steps per epoch. The learning rate is NOT rescaled with the batch: `lr` stays the
    paper's 2e-4 unless set otherwise. Adam normalises the gradient scale, so linear scaling (the SGD
    rule) would multiply the step size by B and is known to destabilise GAN training; sqrt scaling is
    a heuristic nobody has validated for CycleGAN. Keeping 2e-4 changes one thing at a time (batch
    1 is exactly the paper) and is what the reference code does when given a larger --batch_size.

    Fast path (`fast: true`, see `pipeline.cyclegan.fast`): device-resident data, pools and loss accumulation,
    fused Adam on CUDA; `channels_last`, `compile` and `cuda_graphs` refine it and need it. bf16 and
    CUDA graphs only take effect on CUDA (a CPU run ignores them, so one params file serves both).
    """

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = None  # CPU threads for torch (None = torch's default)
    bf16: bool = False  # bf16 autocast on CUDA (the paper trained in fp32); ignored on CPU
    fast: bool = False  # the fast path (pipeline.cyclegan.fast): data, pools and losses on the device
    channels_last: bool = False  # NHWC memory format for networks and images (fast path)
    compile: bool = False  # torch.compile the four networks (fast path; one compile serves every variant)
    cuda_graphs: bool = False  # capture the whole step as one CUDA graph (fast path; CUDA, one process)
    load_size: int = 143  # images are resized to this, then randomly cropped
    crop_size: int = 128
    flip: bool = True  # random horizontal flip
    max_images: int | None = None  # images per domain (None = all); the first N ids
    batch_size: int = 1  # global batch (see above); the paper: 1
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 6
    n_layers_D: int = 3
    lr: float = 2e-4  # not rescaled with batch_size (see above)
    beta1: float = 0.5
    beta2: float = 0.999
    epochs_constant: int = 100
    epochs_decay: int = 100
    lambda_cycle: float = 10.0
    pool_size: int = 50
    checkpoint_every: int = 500  # steps
    log_every: int = 10  # steps; on the fast path also how often losses are read back from the device
    max_steps: int | None = None  # stop early (tests, smoke runs); the lr schedule is unchanged
    experiment: str = "cyclegan-ablation"

    # Keys that only say how a run is recorded or checkpointed: no output of the train stage depends on
    # them (the checkpoint leaves them out), so they are not among its DVC params deps, and changing
    # them retrains nothing (tests/test_outputs.py proves it byte for byte).
    OUTPUT_NEUTRAL_KEYS: ClassVar[frozenset[str]] = frozenset({"experiment", "checkpoint_every"})

    def __post_init__(self) -> None:
        check_range(self, "seed", ge=0)
        check_range(self, ("load_size", "crop_size", "batch_size", "checkpoint_every", "log_every"), ge=1)
        check_range(self, ("ngf", "ndf", "n_blocks", "n_layers_D"), ge=1)
        check_range(self, ("max_images", "max_steps", "num_threads"), ge=1)  # or null
        check_range(self, ("lr", "lambda_cycle"), gt=0)
        check_range(self, ("beta1", "beta2"), ge=0, lt=1)  # Adam diverges for a beta of 1 or more
        check_range(self, ("epochs_constant", "epochs_decay", "pool_size"), ge=0)
        if self.crop_size > self.load_size:
            raise ValueError(f"crop_size {self.crop_size} exceeds load_size {self.load_size}")
        if self.crop_size < 3 * 2**self.n_layers_D:
            raise ValueError(
                f"crop_size must be >= {3 * 2**self.n_layers_D} for n_layers_D {self.n_layers_D}: the "
                "PatchGAN's last instance norms need maps of at least 2x2"
            )
        if self.crop_size % 4:
            raise ValueError(f"crop_size must be a multiple of 4 (two stride-2 stages), got {self.crop_size}")
        if self.epochs_constant + self.epochs_decay == 0:
            raise ValueError("epochs_constant and epochs_decay must not both be 0")
        needs_fast = [name for name in ("channels_last", "compile", "cuda_graphs") if getattr(self, name)]
        if needs_fast and not self.fast:
            raise ValueError(f"{', '.join(needs_fast)} need(s) fast: true (they refine the fast path)")

    @property
    def epochs(self) -> int:
        return self.epochs_constant + self.epochs_decay

    def stored(self) -> dict[str, Any]:
        """The config as a checkpoint keeps it: everything but `OUTPUT_NEUTRAL_KEYS`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.OUTPUT_NEUTRAL_KEYS}

    def fingerprint(self) -> dict[str, Any]:
        """The keys that decide what a run trains: a checkpoint is continued only under these values."""
        return {k: v for k, v in self.stored().items() if k not in RESUMABLE_KEYS}


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of `cfg.lr` during 0-based `epoch`: 1 for epochs_constant epochs, then linear to 0.

    The reference's `lambda_rule` with its scheduler stepped after each epoch: the last decay epoch runs
    at 1/(epochs_decay + 1) and the rate would reach 0 just after it.
    """
    return 1.0 - max(0, epoch + 1 - cfg.epochs_constant) / (cfg.epochs_decay + 1)


def target_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The steps a run of `cfg` takes: every epoch, or `max_steps` when it stops earlier."""
    total = cfg.epochs * steps_per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps is not None else total
