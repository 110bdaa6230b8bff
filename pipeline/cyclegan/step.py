"""One training step of one variant, in the reference's order of updates, and the state it updates.

Read `Trainer.step` as the reference's `optimize_parameters`:

1. G and F take one Adam step on the generator objective (`pipeline.cyclegan.losses.generator_losses`:
   adversarial, cycle and identity terms, as the variant switches them) with D_X and D_Y frozen;
2. the new fakes go through the history pools (`pipeline.cyclegan.pool.ImagePool`);
3. D_X and D_Y take one Adam step on real images and pooled fakes (`discriminator_losses`, halved).

Nothing in a step reads a value back to the host, so the fast path (`pipeline.cyclegan.fast`, an
add-on that feeds the same step from device-resident data) can capture it as a CUDA graph, and DDP
(`pipeline.cyclegan.distributed`, the other add-on) wraps the two objectives the step calls.
`PlainSteps` feeds the step on the plain path: a batch drawn and built on the CPU each step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Any

import torch

from pipeline.core.device import seeded
from pipeline.cyclegan.config import TrainConfig, lr_factor
from pipeline.cyclegan.distributed import Parallel
from pipeline.cyclegan.losses import LossDict, LossSwitches, discriminator_losses, generator_losses
from pipeline.cyclegan.models import CycleGANNets, DiscriminatorConfig, GeneratorConfig, build_nets
from pipeline.cyclegan.pool import ImagePool
from pipeline.data.domains import UnpairedSampler


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
        # A global pool (see pipeline.cyclegan.distributed): every rank applies the same draws to all fakes.
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
        set_requires_grad(discriminators, False)  # D is fixed while G and F step
        self.optimizers["G"].zero_grad(set_to_none=True)
        with self.autocast():
            losses, fakes = self.objectives.generator(real_A, real_B)
        losses["loss_G"].backward()
        self.optimizers["G"].step()
        if mark is not None:
            mark("G step")
        if self.switches.adversarial:
            set_requires_grad(discriminators, True)
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


def set_requires_grad(nets: list[torch.nn.Module], flag: bool) -> None:
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


def make_steps(trainer: Trainer, sampler: UnpairedSampler) -> PlainSteps:
    """The step runner for the configured path (`pipeline.cyclegan.fast.FastSteps` when `train.fast`)."""
    if trainer.cfg.fast:
        from pipeline.cyclegan.fast import FastSteps  # imports CUDA-only helpers; CPU runs skip it

        return FastSteps(trainer, sampler)
    return PlainSteps(trainer, sampler)
