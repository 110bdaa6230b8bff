"""Design (b) of `python -m benchmarks.concurrent`: N runs as one batched model in one process
(`StackedRuns`, vmapped), built from each run's own trainer and sampler, and its measurement.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import functional_call, stack_module_state

from benchmarks.concurrent_config import ConcurrentConfig, check_finite, run_seeds, sync, synthetic_domains
from pipeline.core.device import seeded
from pipeline.cyclegan.losses import LossDict, LossSwitches, discriminator_losses, generator_losses
from pipeline.cyclegan.models import CycleGANNets
from pipeline.cyclegan.step import Trainer, build_trainer
from pipeline.data.domains import BatchDraw, TrainingDomains, UnpairedSampler, materialize

NET_NAMES = ("G", "F", "D_X", "D_Y")
POOL_NAMES = ("X", "Y")  # X: fake photos for D_X, Y: fake label maps for D_Y


class StackedRuns:
    """N independent runs of one variant, trained at batch 1 each, as one batched model.

    Built from N trainers (`build_trainer`: each run's seeded initial networks and its two pools) and N
    samplers (each run's seeded data stream, all over the same domains). The networks are stacked
    (leading dim: the run) into new tensors, which train; the trainers' networks and optimisers are not
    kept. The pools stay each run's own `ImagePool`s. `step()` returns each loss as an (N,) tensor, one
    entry per run.
    """

    def __init__(self, trainers: Sequence[Trainer], samplers: Sequence[UnpairedSampler]):
        if len(trainers) != len(samplers) or not trainers:
            raise ValueError("one sampler per trainer, at least one of each")
        first = trainers[0]
        self.runs = len(trainers)
        self.cfg, self.switches, self.device = first.cfg, first.switches, first.device
        names = list(first.nets.named())
        self.params: dict[str, dict[str, torch.Tensor]] = {}
        self._bases: dict[str, torch.nn.Module] = {}
        for name in names:
            nets = [trainer.nets.named()[name] for trainer in trainers]
            params, buffers = stack_module_state(nets)
            if buffers:  # instance norm without running statistics has none
                raise ValueError(f"{name} has buffers; StackedRuns stacks parameters only")
            self.params[name] = params
            self._bases[name] = copy.deepcopy(nets[0]).to("meta")  # structure only, no storage
        self.dtype = next(iter(self.params["G"].values())).dtype
        self.pools = [trainer.pools for trainer in trainers]
        self.samplers = list(samplers)
        self.crop_size = self.samplers[0].crop_size
        # The domains once on the device (every sampler draws from the same images), as the fast path.
        self.photos = self.samplers[0].photos.to(self.device)
        self.labels = self.samplers[0].labels.to(self.device)
        cuda = self.device.type == "cuda"
        options: dict[str, Any] = {"fused": True} if cuda else {}
        betas = (self.cfg.beta1, self.cfg.beta2)
        groups = {"G": ("G", "F"), "D": ("D_X", "D_Y")}
        self.optimizers = {
            group: torch.optim.Adam(
                [p for name in members for p in self.params[name].values()],
                lr=self.cfg.lr,
                betas=betas,
                **options,
            )
            for group, members in groups.items()
            if all(name in self.params for name in members)
        }
        self._generator = torch.vmap(self._generator_objective)
        self._discriminator = torch.vmap(self._discriminator_objective)

    # The per-run objectives, written for ONE run (its parameters, its batch of 1); vmap batches them.
    def _nets(self, params: dict[str, dict[str, torch.Tensor]]) -> CycleGANNets:
        def network(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
            if name not in params:
                return None
            return lambda x: functional_call(self._bases[name], params[name], (x,))

        return CycleGANNets(*(network(name) for name in NET_NAMES))

    def _generator_objective(self, params, real_A, real_B):
        return generator_losses(self._nets(params), real_A, real_B, self.switches, self.cfg.lambda_cycle)

    def _discriminator_objective(self, params, real_A, real_B, pooled_fake_A, pooled_fake_B):
        return discriminator_losses(self._nets(params), real_A, real_B, pooled_fake_A, pooled_fake_B)

    def _autocast(self) -> torch.autocast:
        enabled = self.cfg.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _discriminators_trainable(self, flag: bool) -> None:
        for name in ("D_X", "D_Y"):
            for param in self.params.get(name, {}).values():
                param.requires_grad_(flag)

    def next_draws(self) -> torch.Tensor:
        """(10, N) int64 on the device: per run (column) its sampler's draw and its pools' decisions."""
        columns = []
        for sampler, pools in zip(self.samplers, self.pools, strict=True):
            pool_rows = [
                pools[name].draw(1) if name in pools else torch.zeros(1, dtype=torch.long)
                for name in POOL_NAMES
            ]
            columns.append(torch.cat([sampler.next_draw().pack(), torch.stack(pool_rows)]))
        return torch.cat(columns, dim=1).to(self.device, non_blocking=True)

    def step(self) -> LossDict:
        """One training iteration of every run; detached losses, each (N,)."""
        draws = self.next_draws()
        real_A, real_B = materialize(BatchDraw.unpack(draws), self.photos, self.labels, self.crop_size)
        # (N, 1, 3, H, W): vmap hands each run a batch of one image.
        real_A, real_B = (images.to(self.dtype).unsqueeze(1) for images in (real_A, real_B))
        self._discriminators_trainable(False)  # D is fixed while G and F step
        self.optimizers["G"].zero_grad(set_to_none=True)
        with self._autocast():
            losses, fakes = self._generator(self.params, real_A, real_B)
        losses["loss_G"].sum().backward()  # d(sum over runs)/d(run i's weights) = run i's own gradient
        self.optimizers["G"].step()
        if self.switches.adversarial:
            self._discriminators_trainable(True)
            self.optimizers["D"].zero_grad(set_to_none=True)
            pooled = {}
            for row, (pool_name, fake_name) in enumerate((("X", "fake_A"), ("Y", "fake_B"))):
                decisions = draws[8 + row]
                pooled[pool_name] = torch.stack(
                    [
                        pools[pool_name].apply(fakes[fake_name][run], decisions[run : run + 1])
                        for run, pools in enumerate(self.pools)
                    ]
                )
            discriminator_params = {name: self.params[name] for name in ("D_X", "D_Y")}
            with self._autocast():
                d_losses = self._discriminator(discriminator_params, real_A, real_B, pooled["X"], pooled["Y"])
            (d_losses["loss_D_X"] + d_losses["loss_D_Y"]).sum().backward()
            self.optimizers["D"].step()
            losses.update(d_losses)
        return {name: value.detach() for name, value in losses.items()}

    def run_state(self, run: int) -> dict[str, dict[str, torch.Tensor]]:
        """Run `run`'s networks as state dicts (what its own trainer's `nets` would hold)."""
        return {
            name: {key: value[run].detach().clone() for key, value in params.items()}
            for name, params in self.params.items()
        }


def build_stacked(
    seeds: Sequence[int],
    cfg: ConcurrentConfig,
    domains: TrainingDomains,
    device: torch.device,
    switches: LossSwitches | None = None,
) -> StackedRuns:
    """Design (b) for runs of `seeds`: each run's trainer and sampler exactly as a lone run builds them."""
    switches = switches or LossSwitches()
    trainers, samplers = [], []
    for seed in seeds:
        train_cfg = cfg.train_config(seed, device)
        trainers.append(build_trainer(switches, train_cfg, device))
        samplers.append(
            UnpairedSampler(domains, train_cfg.crop_size, 1, seeded(seed, "data"), train_cfg.flip)
        )
    return StackedRuns(trainers, samplers)


def measure_stacked(runs: int, steps: int, cfg: ConcurrentConfig, device: torch.device) -> dict[str, Any]:
    """Design (b) at N = `runs`: the median (high) of `repeats` timed windows of `steps` steps."""
    threads = torch.get_num_threads()
    if device.type == "cpu":  # by default the cores design (a) would use: N processes x cfg.threads
        torch.set_num_threads(cfg.batched_threads or min(runs * cfg.threads, os.cpu_count() or 1))
    try:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.cuda.reset_peak_memory_stats(device)
        stacked = build_stacked(run_seeds(runs), cfg, synthetic_domains(cfg), device)
        for _ in range(cfg.warmup):
            stacked.step()
        windows = []
        for _ in range(cfg.repeats):
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                losses = stacked.step()
            sync(device)
            windows.append(time.perf_counter() - start)
        check_finite(losses)
        result = {
            "wall_s": statistics.median_high(windows),
            "windows_s": windows,
            "threads": torch.get_num_threads(),
        }
        if device.type == "cuda":
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        return result
    finally:
        torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.cuda.empty_cache()
