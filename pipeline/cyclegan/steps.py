"""Running steps: the plain path's step, the per-step loss log and its NaN/inf check, the path chooser."""

from __future__ import annotations

import math

import torch

from pipeline.core.errors import PipelineError
from pipeline.cyclegan.distributed import Parallel
from pipeline.cyclegan.losses import LossDict
from pipeline.cyclegan.trainer import Trainer
from pipeline.data.domains import UnpairedSampler


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


def make_steps(trainer: Trainer, sampler: UnpairedSampler) -> PlainSteps:
    """The step runner for the configured path (`pipeline.fast.FastSteps` when `train.fast`)."""
    if trainer.cfg.fast:
        from pipeline.cyclegan.fast import FastSteps  # imports CUDA-only helpers; CPU runs skip it

        return FastSteps(trainer, sampler)
    return PlainSteps(trainer, sampler)
