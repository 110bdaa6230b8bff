"""Training one ablation variant: the reference's update order, resumable checkpoints, MLflow tracking.

One step (as the reference's `optimize_parameters`): G and F take one Adam step on the generator
objective with D_X and D_Y frozen, then D_X and D_Y take one Adam step on real images and pooled
fakes (`pipeline.losses` writes the objective out). The learning rate is constant for
`epochs_constant` epochs, then decays linearly towards 0 over `epochs_decay` epochs.

Everything random draws from seeded generators whose states are in the checkpoint (data order, crops
and flips, both pools), so a run killed at any point and rerun continues bit-identically on the same
device and torch build.

Two ways to run the same step (same functions, same losses, same random draws):

- the plain path (default; CPU, and the reference for checking): batches built on the CPU, losses
  read back after every step;
- the fast path (`train.fast: true`, meant for GPUs, see `pipeline.fast`): the domains decoded once
  into uint8 tensors on the device with crop and flip done there, the pools on the device, losses
  accumulated on the device and read back every `log_every` steps, fused Adam, and optionally
  channels_last, `torch.compile` of the networks and the whole step captured as one CUDA graph.

Launched by `torchrun` with several processes, one variant trains data-parallel (`pipeline.distributed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from pipeline import distributed, tracking
from pipeline.checkpoint import CHECKPOINT_NAME, FORMAT, load_checkpoint, save_checkpoint
from pipeline.config import to_flat_dict
from pipeline.data import LABEL_SUBSET, PHOTO_SUBSET, UnpairedSampler, load_training_domains, to_model_range
from pipeline.distributed import Parallel
from pipeline.errors import PipelineError
from pipeline.losses import ImagePool, LossDict, LossSwitches, discriminator_losses, generator_losses
from pipeline.models import CycleGANNets, DiscriminatorConfig, GeneratorConfig, build_nets
from pipeline.split import read_manifest

# Keys that say how a run is carried out, not what it computes: changing them does not invalidate a
# checkpoint (max_steps only moves the stopping point).
# The fast-path switches change how a step runs, not what it computes (bf16, which does change the
# arithmetic, is part of the identity).
OPERATIONAL_KEYS = frozenset(
    {
        "device",
        "num_threads",
        "checkpoint_every",
        "log_every",
        "max_steps",
        "experiment",
        "fast",
        "compile",
        "cuda_graphs",
        "channels_last",
    }
)
SAMPLE_IMAGES = 4  # images per domain in the per-epoch sample grid


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

    Fast path (`fast: true`, see `pipeline.fast`): device-resident data, pools and loss accumulation,
    fused Adam on CUDA; `channels_last`, `compile` and `cuda_graphs` refine it and need it. bf16 and
    CUDA graphs only take effect on CUDA (a CPU run ignores them, so one params file serves both).
    """

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = None  # CPU threads for torch (None = torch's default)
    bf16: bool = False  # bf16 autocast on CUDA (the paper trained in fp32); ignored on CPU
    fast: bool = False  # the fast path (pipeline.fast): data, pools and losses on the device
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

    def __post_init__(self) -> None:
        positive = (
            "load_size",
            "crop_size",
            "batch_size",
            "lr",
            "lambda_cycle",
            "checkpoint_every",
            "log_every",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.crop_size > self.load_size:
            raise ValueError(f"crop_size {self.crop_size} exceeds load_size {self.load_size}")
        if self.crop_size < 3 * 2**self.n_layers_D:
            raise ValueError(
                f"crop_size must be >= {3 * 2**self.n_layers_D} for n_layers_D {self.n_layers_D}: the "
                "PatchGAN's last instance norms need maps of at least 2x2"
            )
        if self.crop_size % 4:
            raise ValueError(f"crop_size must be a multiple of 4 (two stride-2 stages), got {self.crop_size}")
        if self.epochs_constant < 0 or self.epochs_decay < 0 or self.epochs_constant + self.epochs_decay == 0:
            raise ValueError("epochs_constant and epochs_decay must be >= 0 and not both 0")
        for name in ("max_images", "max_steps", "num_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {getattr(self, name)}")
        if self.pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {self.pool_size}")
        needs_fast = [name for name in ("channels_last", "compile", "cuda_graphs") if getattr(self, name)]
        if needs_fast and not self.fast:
            raise ValueError(f"{', '.join(needs_fast)} need(s) fast: true (they refine the fast path)")

    @property
    def epochs(self) -> int:
        return self.epochs_constant + self.epochs_decay

    def identity(self) -> dict[str, Any]:
        """The keys that decide what a run computes (everything but OPERATIONAL_KEYS)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in OPERATIONAL_KEYS}


@dataclasses.dataclass
class TrainResult:
    checkpoint: Path
    step: int
    mlflow_run_id: str | None
    resumed: bool  # continued from a checkpoint
    skipped: bool  # the checkpoint was already finished: nothing trained
    history: list[dict[str, float]]


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved. `exit_code` is 128 + signal number."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint saved")


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of `cfg.lr` during 0-based `epoch`: 1 for epochs_constant epochs, then linear to 0.

    The reference's `lambda_rule` with its scheduler stepped after each epoch: the last decay epoch runs
    at 1/(epochs_decay + 1) and the rate would reach 0 just after it.
    """
    return 1.0 - max(0, epoch + 1 - cfg.epochs_constant) / (cfg.epochs_decay + 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            "train.device is cuda but no CUDA device is visible: set train.device: auto or cpu"
        )
    return torch.device(name)


def derive_seed(seed: int, purpose: str) -> int:
    """Independent 63-bit seed per purpose (init, data, pools) from the one configured seed."""
    digest = hashlib.sha256(f"{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def seeded(seed: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, purpose))


def _set_requires_grad(nets: list[torch.nn.Module], flag: bool) -> None:
    for net in nets:
        for param in net.parameters():
            param.requires_grad_(flag)


class GeneratorObjective(torch.nn.Module):
    """G and F with the generator objective as their forward: the unit DDP wraps for the G step.

    The discriminators are held in a tuple, so they are not registered here: D is frozen during the
    G step and its parameters belong to `DiscriminatorObjective` (DDP syncs each parameter once).
    """

    def __init__(self, nets: CycleGANNets, switches: LossSwitches, lambda_cycle: float):
        super().__init__()
        self.G, self.F = nets.G, nets.F
        self.discriminators = (nets.D_X, nets.D_Y)
        self.switches, self.lambda_cycle = switches, lambda_cycle

    def forward(self, real_A: torch.Tensor, real_B: torch.Tensor) -> tuple[LossDict, dict[str, torch.Tensor]]:
        nets = CycleGANNets(self.G, self.F, *self.discriminators)
        return generator_losses(nets, real_A, real_B, self.switches, self.lambda_cycle)


class DiscriminatorObjective(torch.nn.Module):
    """D_X and D_Y with the (halved) discriminator objective as their forward: the unit of the D step."""

    def __init__(self, nets: CycleGANNets):
        super().__init__()
        self.D_X, self.D_Y = nets.D_X, nets.D_Y
        self.generators = (nets.G, nets.F)  # not registered: not used here

    def forward(
        self,
        real_A: torch.Tensor,
        real_B: torch.Tensor,
        pooled_fake_A: torch.Tensor,
        pooled_fake_B: torch.Tensor,
    ) -> LossDict:
        nets = CycleGANNets(*self.generators, self.D_X, self.D_Y)
        return discriminator_losses(nets, real_A, real_B, pooled_fake_A, pooled_fake_B)


@dataclasses.dataclass
class Objectives:
    """What `Trainer.step` calls: the objectives over (maybe compiled) networks, maybe DDP-wrapped."""

    generator: torch.nn.Module
    discriminator: torch.nn.Module | None


def build_objectives(
    nets: CycleGANNets, switches: LossSwitches, cfg: TrainConfig, parallel: Parallel | None
) -> Objectives:
    generator: torch.nn.Module = GeneratorObjective(nets, switches, cfg.lambda_cycle)
    discriminator = DiscriminatorObjective(nets) if switches.adversarial else None
    if parallel is not None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Every parameter is used in every step (no find_unused_parameters); instance norm has no buffers.
        wrap = functools.partial(
            DDP,
            device_ids=[parallel.device.index] if parallel.device.type == "cuda" else None,
            gradient_as_bucket_view=True,
        )
        generator = wrap(generator)
        discriminator = wrap(discriminator) if discriminator is not None else None
    return Objectives(generator, discriminator)


@dataclasses.dataclass
class Trainer:
    """The mutable training state: networks, optimisers, schedulers, pools."""

    nets: CycleGANNets  # the networks as built (checkpoints and sample grids use these)
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    pools: dict[str, ImagePool]  # "X": fake photos for D_X, "Y": fake label maps for D_Y
    switches: LossSwitches
    cfg: TrainConfig
    device: torch.device
    objectives: Objectives | None = None  # default: the objectives over `nets`, single process
    parallel: Parallel | None = None
    capturable: bool = False  # the step may be captured as a CUDA graph (device lr, no autocast cache)
    optimizer_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.objectives is None:
            self.objectives = build_objectives(self.nets, self.switches, self.cfg, self.parallel)

    def autocast(self) -> contextlib.AbstractContextManager:
        enabled = self.cfg.bf16 and self.device.type == "cuda"
        # The autocast weight cache would be filled during capture and replayed stale: off for graphs.
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=not self.capturable
        )

    @property
    def world_size(self) -> int:
        return self.parallel.world_size if self.parallel is not None else 1

    def draw_pools(self, local_batch: int) -> dict[str, torch.Tensor]:
        """Both pools' random decisions for the next step (CPU, for the global batch)."""
        return {name: pool.draw(local_batch * self.world_size) for name, pool in self.pools.items()}

    def _pooled(self, name: str, fakes: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        draws = draws.to(fakes.device, non_blocking=True)
        if self.parallel is None:
            return self.pools[name].apply(fakes, draws)
        # A global pool (see pipeline.distributed): every rank applies the same draws to all fakes.
        pooled = self.pools[name].apply(self.parallel.gather(fakes.detach()), draws)
        return pooled[self.parallel.local_rows(fakes.shape[0])]

    def step(
        self,
        real_A: torch.Tensor,
        real_B: torch.Tensor,
        pool_draws: dict[str, torch.Tensor] | None = None,
        mark: Callable[[str], None] | None = None,
    ) -> LossDict:
        """One training iteration; returns the detached losses (generator and, if on, discriminator).

        `pool_draws` (from `draw_pools`) are drawn here when not given. Nothing in here reads a value
        back to the host, so on the fast path the step can be captured as a CUDA graph. `mark(phase)`,
        if given, is called at the end of each phase ("G step", "pools", "D step"; the benchmark's
        per-phase timings).
        """
        discriminators = self.nets.discriminators
        _set_requires_grad(discriminators, False)  # D is fixed while G and F step
        self.optimizers["G"].zero_grad(set_to_none=True)
        with self.autocast():
            losses, fakes = self.objectives.generator(real_A, real_B)
        losses["loss_G"].backward()
        self.optimizers["G"].step()
        if mark is not None:
            mark("G step")
        if self.switches.adversarial:
            _set_requires_grad(discriminators, True)
            self.optimizers["D"].zero_grad(set_to_none=True)
            if pool_draws is None:
                pool_draws = self.draw_pools(real_A.shape[0])
            pooled_fake_A = self._pooled("X", fakes["fake_A"], pool_draws["X"])
            pooled_fake_B = self._pooled("Y", fakes["fake_B"], pool_draws["Y"])
            if mark is not None:
                mark("pools")
            with self.autocast():
                d_losses = self.objectives.discriminator(real_A, real_B, pooled_fake_A, pooled_fake_B)
            (d_losses["loss_D_X"] + d_losses["loss_D_Y"]).backward()
            self.optimizers["D"].step()
            losses.update(d_losses)
            if mark is not None:
                mark("D step")
        return {name: value.detach() for name, value in losses.items()}

    @torch.no_grad()
    def sample_grid(self, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
        """Rows x, G(x), F(G(x)) and y, F(y), G(F(y)) per sample (those the variant computes), in [0, 1]."""
        import torchvision

        with self.autocast():
            _, fakes = generator_losses(self.nets, real_A, real_B, self.switches, self.cfg.lambda_cycle)
        row_A = [real_A] + [fakes[k] for k in ("fake_B", "rec_A") if k in fakes]
        row_B = [real_B] + [fakes[k] for k in ("fake_A", "rec_B") if k in fakes]
        columns = max(len(row_A), len(row_B))
        tiles = []
        for index in range(real_A.shape[0]):
            for row in (row_A, row_B):
                images = [image[index].float() for image in row]
                images += [torch.full_like(images[0], -1.0)] * (columns - len(images))  # black filler
                tiles += images
        grid = torchvision.utils.make_grid(torch.stack(tiles), nrow=columns, padding=2, pad_value=1.0)
        return ((grid + 1) / 2).clamp(0, 1).cpu()

    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": {name: net.state_dict() for name, net in self.nets.named().items()},
            "optimizers": {name: _portable(opt.state_dict()) for name, opt in self.optimizers.items()},
            "schedulers": {name: _portable(sched.state_dict()) for name, sched in self.schedulers.items()},
            "pools": {name: pool.state_dict() for name, pool in self.pools.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, net in self.nets.named().items():
            net.load_state_dict(state["nets"][name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
            self._adopt_options(opt)
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        for name, pool in self.pools.items():
            pool.load_state_dict(state["pools"][name], self.device)

    def _adopt_options(self, optimizer: torch.optim.Optimizer) -> None:
        """Undo what `Optimizer.load_state_dict` brings from the checkpoint's run: that run's
        implementation flags and lr type. A checkpoint from either path resumes on either path."""
        on_device = bool(self.optimizer_options.get("fused") or self.optimizer_options.get("capturable"))
        for group in optimizer.param_groups:
            group.update(self.optimizer_options)
            if not self.optimizer_options:
                group.update({"fused": None, "capturable": False})
            lr = float(group["lr"])
            group["lr"] = torch.tensor(lr, device=self.device) if self.capturable else lr
            for param in group["params"]:
                param_state = optimizer.state.get(param, {})
                for key, value in param_state.items():
                    if key == "step" and torch.is_tensor(value):
                        param_state[key] = value.to(param.device if on_device else "cpu", torch.float32)
                    elif torch.is_tensor(value) and value.shape == param.shape:
                        # Moments in the parameter's own layout (channels_last or not): the fused and
                        # multi-tensor kernels walk them element by element alongside the parameter.
                        param_state[key] = torch.empty_like(param).copy_(value)


def _portable(state: Any) -> Any:
    """A copy of an optimiser or scheduler state dict with 0-d lr tensors as floats (device-free)."""
    if isinstance(state, dict):
        return {k: (v if k == "state" else _portable(v)) for k, v in state.items()}
    if isinstance(state, list):
        return [_portable(v) for v in state]
    if torch.is_tensor(state) and state.dim() == 0 and state.is_floating_point():
        return float(state)
    return state


class DynamicBatch(torch.nn.Module):
    """Marks the batch dimension of its input dynamic (>= 2) before calling a compiled network, so one
    compile serves every batch size >= 2 (the benchmark's sweep); only the batch dim is symbolic."""

    def __init__(self, compiled: torch.nn.Module):
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] >= 2:
            torch._dynamo.mark_dynamic(x, 0)
        return self.compiled(x)


def build_trainer(
    switches: LossSwitches,
    cfg: TrainConfig,
    device: torch.device,
    parallel: Parallel | None = None,
    compile_options: dict[str, Any] | None = None,
) -> Trainer:
    """Networks (seeded init), Adam optimisers, LambdaLR schedulers and pools for one variant.

    On the fast path: channels_last, fused Adam on CUDA (capturable with a device lr when the step is
    to be captured), and `torch.compile` of each network (`compile_options` go to `torch.compile`;
    default static shapes; `dynamic_batch: True` compiles once for every batch size >= 2) inside the
    objectives, while `nets` keep the plain modules.
    """
    nets = build_nets(
        GeneratorConfig(ngf=cfg.ngf, n_blocks=cfg.n_blocks),
        DiscriminatorConfig(ndf=cfg.ndf, n_layers=cfg.n_layers_D),
        with_discriminators=switches.adversarial,
        generator=seeded(cfg.seed, "init"),
    )
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for net in nets.named().values():
        net.to(device, memory_format=memory_format).train()
    cuda = device.type == "cuda"
    capturable = cfg.cuda_graphs and cuda and parallel is None
    options: dict[str, Any] = {}
    if cfg.fast and cuda:
        options = {"fused": True, "capturable": capturable, "foreach": None}
    schedule = functools.partial(lr_factor, cfg=cfg)
    groups = {"G": itertools.chain(nets.G.parameters(), nets.F.parameters())}
    pools = {}
    if switches.adversarial:
        groups["D"] = itertools.chain(nets.D_X.parameters(), nets.D_Y.parameters())
        pools = {
            "X": ImagePool(cfg.pool_size, seeded(cfg.seed, "pool_X")),
            "Y": ImagePool(cfg.pool_size, seeded(cfg.seed, "pool_Y")),
        }
    optimizers = {
        name: torch.optim.Adam(
            params,
            # A captured step reads the lr from device memory, where the scheduler updates it in place.
            lr=torch.tensor(cfg.lr, device=device) if capturable else cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            **options,
        )
        for name, params in groups.items()
    }
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for name, opt in optimizers.items()}
    compute = nets
    if cfg.fast and cfg.compile:
        compile_options = {"dynamic": False, **(compile_options or {})}
        dynamic_batch = compile_options.pop("dynamic_batch", False)
        compiled = {name: torch.compile(net, **compile_options) for name, net in nets.named().items()}
        if dynamic_batch:
            compiled = {name: DynamicBatch(net) for name, net in compiled.items()}
        compute = CycleGANNets(compiled["G"], compiled["F"], compiled.get("D_X"), compiled.get("D_Y"))
    objectives = build_objectives(compute, switches, cfg, parallel)
    return Trainer(
        nets, optimizers, schedulers, pools, switches, cfg, device, objectives, parallel, capturable, options
    )


class LossLog:
    """Per-step losses kept where they were computed until read back (one host sync per read-back).

    `record` copies a step's losses into a row of a device buffer (no sync); `read` fetches the rows
    recorded since the last read, averaged over ranks under DDP, and stops the run at the first NaN or
    inf, naming its step and term even when it is read back steps later.
    """

    def __init__(self, capacity: int, device: torch.device, parallel: Parallel | None = None):
        self.capacity, self.device, self.parallel = capacity, device, parallel
        self.names: list[str] = []
        self.buffer: torch.Tensor | None = None
        self.steps: list[int] = []

    def record(self, step: int, losses: LossDict) -> None:
        if self.buffer is None:
            self.names = list(losses)
            self.buffer = torch.empty(
                (self.capacity, len(self.names)), dtype=torch.float32, device=self.device
            )
        if len(self.steps) == self.capacity:
            raise RuntimeError(f"LossLog holds {self.capacity} unread steps: read it back first")
        torch.stack([losses[name].float() for name in self.names], out=self.buffer[len(self.steps)])
        self.steps.append(step)

    def read(self, read_every: int = 1) -> list[tuple[int, dict[str, float]]]:
        """(step, {loss name: value}) for each unread step, oldest first; PipelineError on NaN/inf."""
        if not self.steps:
            return []
        values = self.buffer[: len(self.steps)]
        if self.parallel is not None:
            values = self.parallel.mean(values)
        rows = values.tolist()
        steps, self.steps = self.steps, []
        for step, row in zip(steps, rows, strict=True):
            for name, value in zip(self.names, row, strict=True):
                if not math.isfinite(value):
                    late = (
                        f" (found when reading losses back after step {steps[-1]}; the fast path reads "
                        f"them every {read_every} steps)"
                        if steps[-1] != step
                        else ""
                    )
                    raise PipelineError(
                        f"{name} is {value} at step {step}{late}: training diverged; lower train.lr or "
                        "check the data, then delete the checkpoint and rerun"
                    )
        return [
            (step, dict(zip(self.names, row, strict=True))) for step, row in zip(steps, rows, strict=True)
        ]


class PlainSteps:
    """The plain path's step: draws and images on the CPU, batches moved to the device each step."""

    def __init__(self, trainer: Trainer, sampler: UnpairedSampler):
        self.trainer, self.sampler = trainer, sampler
        self.local_batch = sampler.batch_size // trainer.world_size

    def step(self) -> LossDict:
        draw = self.sampler.next_draw()
        pool_draws = self.trainer.draw_pools(self.local_batch)
        if self.trainer.parallel is not None:
            rows = self.trainer.parallel.local_rows(self.local_batch)
            draw = draw.rows(rows.start, rows.stop)
        real_A, real_B = (
            batch.to(self.trainer.device, non_blocking=True) for batch in self.sampler.materialize(draw)
        )
        return self.trainer.step(real_A, real_B, pool_draws)


def data_fingerprint(split_dir: Path) -> dict[str, str | None]:
    """What identifies the training data: `train_sha256`, a hash of the training domains' manifest rows
    and file bytes (about a second for the full split; val and evaluator files do not count), and
    `data_version`, DVC's md5 of the whole split folder (a tag for MLflow, None outside a DVC repo)."""
    digest = hashlib.sha256()
    for subset in (PHOTO_SUBSET, LABEL_SUBSET):
        rows = read_manifest(split_dir, subset=subset).sort_values("image_id", kind="stable")
        for image_id, relative in zip(rows["image_id"], rows["path"], strict=True):
            digest.update(f"{subset}/{image_id}/{relative}\n".encode())
            try:
                digest.update((split_dir / relative).read_bytes())
            except OSError as exc:
                raise PipelineError(
                    f"cannot read {split_dir / relative} ({exc}): rerun the split stage"
                ) from None
    return {"train_sha256": digest.hexdigest(), "data_version": tracking.dvc_data_version(split_dir)}


def ablation_key(data: dict[str, str | None], cfg: TrainConfig) -> str:
    """Same data + same train section (variant aside) = same ablation = one MLflow parent run."""
    payload = json.dumps({"data": data["train_sha256"], "train": cfg.identity()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _config_record(cfg: TrainConfig, switches: LossSwitches) -> dict[str, Any]:
    return {"train": dataclasses.asdict(cfg), "switches": dataclasses.asdict(switches)}


def config_differences(
    state: dict[str, Any], variant: str, cfg: TrainConfig, switches: LossSwitches, data: dict[str, str | None]
) -> list[str]:
    """Why a checkpoint cannot be resumed under the current params ([] if it can)."""
    stored = {f"train.{k}": v for k, v in state["config"]["train"].items() if k not in OPERATIONAL_KEYS}
    stored.update({f"variant.{k}": v for k, v in state["config"]["switches"].items()})
    stored["variant"] = state["variant"]
    stored["data.train_sha256"] = state["data"]["train_sha256"]
    current = {f"train.{k}": v for k, v in cfg.identity().items()}
    current.update({f"variant.{k}": v for k, v in dataclasses.asdict(switches).items()})
    current["variant"] = variant
    current["data.train_sha256"] = data["train_sha256"]
    return [
        f"{key}: checkpoint {stored.get(key, '<absent>')!r}, now {current.get(key, '<absent>')!r}"
        for key in sorted(set(stored) | set(current))
        if stored.get(key, "<absent>") != current.get(key, "<absent>")
    ]


def _target_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    total = cfg.epochs * steps_per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps is not None else total


def write_plots(path: Path | None, history: list[dict[str, float]]) -> None:
    """Per-epoch mean losses as CSV (columns epoch, step, losses), atomically, for `dvc plots`."""
    if path is None:
        return
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)
    columns = ["epoch", "step", *sorted({k for row in history for k in row} - {"epoch", "step"})]
    pd.DataFrame(history, columns=columns).to_csv(tmp, index=False)
    os.replace(tmp, path)


def epoch_row(sums: dict[str, float], steps: int, step: int, steps_per_epoch: int) -> dict[str, float]:
    """One plots row: the mean of each loss over the `steps` steps of the epoch that ends at `step`."""
    row = {"epoch": (step - 1) // steps_per_epoch, "step": step}
    row.update({name: total / steps for name, total in sums.items()})
    return row


def plot_rows(
    history: list[dict[str, float]], sums: dict[str, float], steps: int, step: int, steps_per_epoch: int
) -> list[dict[str, float]]:
    """The finished epochs' rows plus the epoch in progress, if any (a run stopped by max_steps)."""
    return history + ([epoch_row(sums, steps, step, steps_per_epoch)] if steps else [])


@contextlib.contextmanager
def _signals_saved_as_flag() -> Iterator[dict[str, int | None]]:
    """SIGINT/SIGTERM set a flag the loop checks between steps (a half-done step is never saved).

    A second signal gets the default behaviour. Only the main thread can install handlers; elsewhere
    (e.g. a Prefect worker thread) signals keep their defaults.
    """
    flag: dict[str, int | None] = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        flag["signum"] = signum
        signal.signal(signum, previous[signum])

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _say(variant: str, message: str) -> None:
    print(f"train[{variant}]: {message}", file=sys.stderr, flush=True)


def _resumable_checkpoint(
    path: Path,
    variant: str,
    cfg: TrainConfig,
    switches: LossSwitches,
    data: dict[str, str | None],
    say: Callable[[str], None],
) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path)
    except PipelineError as exc:
        say(f"starting over: {exc}")
        return None
    differences = config_differences(state, variant, cfg, switches, data)
    if differences:
        say("starting over: the checkpoint was trained with other settings:\n  " + "\n  ".join(differences))
        return None
    return state


def train_variant(
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    variant_name: str,
    switches: LossSwitches,
    cfg: TrainConfig,
    metrics_path: str | os.PathLike | None = None,
    on_step: Callable[[int, LossDict], None] | None = None,
    track: bool = True,
) -> TrainResult:
    """Train (or resume, or skip if finished) one variant; the checkpoint is `<out_dir>/checkpoint.pt`.

    `metrics_path`: the per-epoch loss CSV for `dvc plots`. `on_step(step, losses)` runs after every
    step, once that step's checkpoint (if due) is written; `losses` are the step's detached loss
    tensors (reading them synchronises with the device; on a captured step they are valid until the
    next step). `track=False` logs nothing to MLflow (a machine without a store). Launched by `torchrun`,
    trains data-parallel (`pipeline.distributed`): rank 0 alone tracks and writes files. Raises
    `TrainingInterrupted` on SIGINT/SIGTERM (after saving) and `PipelineError` on a NaN/inf loss.
    """
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    plots_path = Path(metrics_path) if metrics_path is not None else None
    checkpoint_path = out_dir / CHECKPOINT_NAME
    device = resolve_device(cfg.device)
    parallel = distributed.from_environment(device, cfg.batch_size)
    try:
        if parallel is not None:
            device = parallel.device
        is_main = parallel is None or parallel.is_main
        data = data_fingerprint(split_dir)
        say = functools.partial(_say, variant_name) if is_main else lambda _message: None
        state = _resumable_checkpoint(checkpoint_path, variant_name, cfg, switches, data, say)
        if state is not None and state["step"] >= _target_steps(cfg, state["steps_per_epoch"]):
            say(f"already trained ({state['step']} steps, same settings): nothing to do")
            rows = plot_rows(
                state["history"],
                state["epoch_sums"],
                state["epoch_steps"],
                state["step"],
                state["steps_per_epoch"],
            )
            if is_main:
                write_plots(plots_path, rows)  # DVC removed it before rerunning the stage
            return TrainResult(checkpoint_path, state["step"], state["mlflow_run_id"], True, True, rows)

        if cfg.num_threads is not None:
            # Tiny CPU convolutions gain little from threads, and on a busy machine spinning OpenMP
            # workers can make a step 10x slower: the default profile pins one thread.
            torch.set_num_threads(cfg.num_threads)
        if parallel is not None and cfg.cuda_graphs and device.type == "cuda":
            say("cuda_graphs is off under DDP (the gradient all-reduce is not captured); compile applies")
        domains = load_training_domains(split_dir, cfg.load_size, cfg.max_images)
        sampler = UnpairedSampler(domains, cfg.crop_size, cfg.batch_size, seeded(cfg.seed, "data"), cfg.flip)
        trainer = build_trainer(switches, cfg, device, parallel)
        loop = _Loop(
            variant_name, cfg, switches, data, trainer, sampler, checkpoint_path, plots_path, domains, track
        )
        if state is not None:
            loop.restore(state)
            say(f"resuming from step {loop.step} of {loop.target}")
        del state
        loop.open_run()
        return loop.run(on_step)
    finally:
        distributed.shutdown(parallel)


def make_steps(trainer: Trainer, sampler: UnpairedSampler) -> PlainSteps:
    """The step runner for the configured path (`pipeline.fast.FastSteps` when `train.fast`)."""
    if trainer.cfg.fast:
        from pipeline.fast import FastSteps

        return FastSteps(trainer, sampler)
    return PlainSteps(trainer, sampler)


class _Loop:
    """The bookkeeping around the steps: epochs, read-backs, logging, checkpoints, the MLflow run."""

    def __init__(
        self, variant, cfg, switches, data, trainer, sampler, checkpoint_path, plots_path, domains, track=True
    ):
        self.variant, self.cfg, self.switches, self.data = variant, cfg, switches, data
        self.trainer, self.sampler = trainer, sampler
        self.checkpoint_path, self.plots_path = checkpoint_path, plots_path
        self.parallel = trainer.parallel
        self.is_main = self.parallel is None or self.parallel.is_main
        self.track = track and self.is_main
        self.steps_per_epoch = sampler.steps_per_epoch
        self.target = _target_steps(cfg, self.steps_per_epoch)
        # The plain path checks every step's losses at once; the fast path every log_every steps.
        self.read_every = cfg.log_every if cfg.fast else 1
        self.log = LossLog(self.read_every, trainer.device, self.parallel)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.epoch_sums: dict[str, float] = {}
        self.epoch_steps = 0
        self.window: dict[str, float] = {}
        self.run_id: str | None = None
        self.resumed = False
        # Fixed sample images for the per-epoch grid: centre crops of the first ids of each domain.
        offset = (cfg.load_size - cfg.crop_size) // 2
        window = (
            slice(None),
            slice(None),
            slice(offset, offset + cfg.crop_size),
            slice(offset, offset + cfg.crop_size),
        )
        self.samples = tuple(
            to_model_range(images[:SAMPLE_IMAGES][window]).to(trainer.device)
            for images in (domains.photos, domains.labels)
        )

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def restore(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"]["torch_cpu"])
        if self.trainer.device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step, self.history = state["step"], state["history"]
        self.epoch_sums, self.epoch_steps = state["epoch_sums"], state["epoch_steps"]
        self.run_id = state["mlflow_run_id"]
        self.resumed = True

    def state_dict(self, finished: bool) -> dict[str, Any]:
        cuda = self.trainer.device.type == "cuda"
        return {
            "format": FORMAT,
            "variant": self.variant,
            "config": _config_record(self.cfg, self.switches),
            "data": dict(self.data),
            **self.trainer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": {
                "torch_cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if cuda else [],
            },
            "step": self.step,
            "epoch": self.epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "finished": finished,
            "history": self.history,
            "epoch_sums": self.epoch_sums,
            "epoch_steps": self.epoch_steps,
            "mlflow_run_id": self.run_id,
        }

    def save(self, finished: bool = False) -> None:
        if self.is_main:
            save_checkpoint(self.checkpoint_path, self.state_dict(finished))

    def open_run(self) -> None:
        """Reopen the checkpoint's MLflow run, or start a new one nested under the ablation's parent."""
        if not self.track:
            return
        if self.run_id is not None and tracking.reopen_run(self.run_id):
            return
        if self.run_id is not None:
            _say(
                self.variant,
                f"MLflow run {self.run_id} is gone from {tracking.tracking_uri()}: starting a new one",
            )
        parent = tracking.parent_run_id(self.cfg.experiment, ablation_key(self.data, self.cfg))
        params = to_flat_dict(self.cfg, "train.")
        params.update(to_flat_dict(self.switches, "variant."))
        params["variant.name"] = self.variant
        tags = {
            "data_version": str(self.data["data_version"]),
            "cyclegan.variant": self.variant,
            "cyclegan.train_sha256": str(self.data["train_sha256"]),
        }
        self.run_id = tracking.start_run(self.cfg.experiment, self.variant, parent, params, tags)

    def run(self, on_step: Callable[[int, LossDict], None] | None) -> TrainResult:
        status = "FAILED"
        try:
            with _signals_saved_as_flag() as interrupt:
                self._train(interrupt, on_step)
            self.save(finished=True)
            self._end_of_training()
            status = "FINISHED"
        except TrainingInterrupted:
            status = "KILLED"
            raise
        finally:
            if self.track and self.run_id is not None:
                tracking.end_run(self.run_id, status)
        return TrainResult(self.checkpoint_path, self.step, self.run_id, self.resumed, False, self._rows())

    def _stop_requested(self, interrupt: dict[str, int | None]) -> bool:
        if self.parallel is None:
            return interrupt["signum"] is not None
        # Every rank must stop at the same step: agree at read-back boundaries (one tiny all-reduce).
        if self.step % self.read_every:
            return False
        stop = self.parallel.any(interrupt["signum"] is not None)
        if stop and interrupt["signum"] is None:
            interrupt["signum"] = signal.SIGTERM  # another rank was signalled
        return stop

    def _train(self, interrupt: dict[str, int | None], on_step) -> None:
        cfg = self.cfg
        steps = make_steps(self.trainer, self.sampler)
        window_steps, window_start = 0, time.perf_counter()
        bar = tqdm(
            total=self.target,
            initial=self.step,
            desc=self.variant,
            unit="step",
            mininterval=1.0,
            dynamic_ncols=True,
            disable=not self.is_main,
        )
        with bar:
            while self.step < self.target:
                if self._stop_requested(interrupt):
                    self._read_back()
                    self.save()
                    raise TrainingInterrupted(interrupt["signum"], self.step)
                losses = steps.step()
                self.step += 1
                self.log.record(self.step, losses)
                window_steps += 1
                self.epoch_steps += 1
                bar.update(1)
                end_of_epoch = self.step % self.steps_per_epoch == 0
                checkpoint_due = self.step % cfg.checkpoint_every == 0 and self.step < self.target
                log_due = self.step % cfg.log_every == 0 or self.step == self.target
                if log_due or end_of_epoch or checkpoint_due or self.step % self.read_every == 0:
                    self._read_back()
                if log_due:
                    elapsed = time.perf_counter() - window_start
                    img_per_s = window_steps * cfg.batch_size / max(elapsed, 1e-9)
                    self._log_window(window_steps, img_per_s, bar)
                    window_steps, window_start = 0, time.perf_counter()
                if end_of_epoch:
                    self._end_of_epoch()
                if checkpoint_due:
                    self.save()
                if on_step is not None:
                    on_step(self.step, losses)
        timings = getattr(steps, "timings", None)
        if timings:
            _say(self.variant, "fast path: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))

    def _read_back(self) -> None:
        """Fetch the unread steps' losses (NaN/inf check) into the log window and the epoch sums."""
        for _step, values in self.log.read(self.read_every):
            for name, value in values.items():
                self.window[name] = self.window.get(name, 0.0) + value
                self.epoch_sums[name] = self.epoch_sums.get(name, 0.0) + value

    def _log_window(self, steps: int, img_per_s: float, bar: tqdm) -> None:
        means = {name: total / steps for name, total in self.window.items()}
        self.window = {}
        shown = {k: means[k] for k in ("loss_G", "loss_D_X", "loss_D_Y") if k in means}
        bar.set_postfix(
            epoch=self.epoch, img_s=f"{img_per_s:.1f}", **{k: f"{v:.3f}" for k, v in shown.items()}
        )
        if not self.track:
            return
        metrics = {f"train/{name}": value for name, value in means.items()}
        metrics["train/lr"] = float(self.trainer.optimizers["G"].param_groups[0]["lr"])
        metrics["train/img_per_s"] = img_per_s
        metrics["train/epoch"] = self.epoch
        tracking.log_metrics(self.run_id, metrics, step=self.step)

    def _rows(self) -> list[dict[str, float]]:
        return plot_rows(self.history, self.epoch_sums, self.epoch_steps, self.step, self.steps_per_epoch)

    def _end_of_epoch(self) -> None:
        self.history.append(epoch_row(self.epoch_sums, self.epoch_steps, self.step, self.steps_per_epoch))
        self.epoch_sums, self.epoch_steps = {}, 0
        if self.is_main:
            write_plots(self.plots_path, self.history)
        for scheduler in self.trainer.schedulers.values():
            scheduler.step()
        if self.track:
            grid = self.trainer.sample_grid(*self.samples)
            self._log_image(grid, f"samples/epoch_{self.epoch:03d}.png")

    def _log_image(self, grid: torch.Tensor, artifact_file: str) -> None:
        import torchvision

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(artifact_file).name
            torchvision.utils.save_image(grid, local)
            tracking.log_artifacts(self.run_id, local, str(Path(artifact_file).parent))

    def _end_of_training(self) -> None:
        if not self.is_main:
            return
        write_plots(self.plots_path, self._rows())  # with the partial epoch if max_steps stopped mid-epoch
        if self.track:
            tracking.log_artifacts(self.run_id, self.checkpoint_path, "checkpoint")
        _say(self.variant, f"finished {self.step} steps; checkpoint {self.checkpoint_path}")
