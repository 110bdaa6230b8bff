"""Measuring one mode of `python -m benchmarks.bench`: the reference-equivalent run (a torch
DataLoader over the PNGs, the plain step), the fast path, the timed runs of each, and the diagnostics of
an eager fast step (per-phase times, the kernel profile, host syncs per captured step).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import random
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks.bench_config import BenchConfig, Mode, train_config
from pipeline.core.device import seeded
from pipeline.cyclegan.curves import LossLog
from pipeline.cyclegan.losses import LossSwitches
from pipeline.cyclegan.step import build_trainer
from pipeline.data.domains import LABEL_SUBSET, PHOTO_SUBSET, UnpairedSampler
from pipeline.data.manifest import read_manifest

REFERENCE_PRINT_FREQ = 100  # the reference reads its losses back every print_freq iterations


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _steps_per_run(step: Callable[[], None], cfg: BenchConfig, device: torch.device) -> int:
    """Timed steps per run: about `repeat_seconds`, judged from three (warm) steps."""
    probe = _timed_runs(step, 3, 1, device)[0] / 3
    return max(cfg.min_steps, min(cfg.max_steps, math.ceil(cfg.repeat_seconds / max(probe, 1e-6))))


def _timed_runs(step: Callable[[], None], steps: int, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


# --- the reference-equivalent input pipeline ----------------------------------------------------------


class ReferenceUnaligned(torch.utils.data.Dataset):
    """The reference's `UnalignedDataset`: photo i, a random label map, each opened and transformed."""

    def __init__(
        self, paths_A: list[Path], paths_B: list[Path], load_size: int, crop_size: int, seed: int = 0
    ):
        import torchvision.transforms as T

        self.paths_A, self.paths_B, self.seed = paths_A, paths_B, seed
        self.transform = T.Compose(
            [
                T.Resize([load_size, load_size], T.InterpolationMode.BICUBIC),
                T.RandomCrop(crop_size),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        )

    def __len__(self) -> int:
        return max(len(self.paths_A), len(self.paths_B))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index_B = random.Random(self.seed * 1_000_003 + index).randrange(len(self.paths_B))
        with Image.open(self.paths_A[index % len(self.paths_A)]) as image_A:
            real_A = self.transform(image_A.convert("RGB"))
        with Image.open(self.paths_B[index_B]) as image_B:
            real_B = self.transform(image_B.convert("RGB"))
        return real_A, real_B


def _domain_paths(split_dir: Path, subset: str) -> list[Path]:
    rows = read_manifest(split_dir, subset=subset)
    return [split_dir / path for path in rows["path"]]


def _endless(loader: torch.utils.data.DataLoader):
    while True:
        yield from loader


# --- modes --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    """What the modes of one benchmark run share: its config, device, split, domains and FLOPs per pair."""

    cfg: BenchConfig
    device: torch.device
    split_dir: Path
    domains: Any
    flops_per_pair: float


def run_reference(ctx: Context, mode: Mode) -> dict[str, Any]:
    """Time the reference-equivalent mode: a DataLoader over the PNGs, the plain step."""
    cfg, device = ctx.cfg, ctx.device
    trainer = build_trainer(LossSwitches(), train_config(cfg, mode, device), device)
    dataset = ReferenceUnaligned(
        _domain_paths(ctx.split_dir, PHOTO_SUBSET),
        _domain_paths(ctx.split_dir, LABEL_SUBSET),
        cfg.load_size,
        cfg.image_size,
    )
    workers = min(cfg.reference_workers, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=1,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    batches = _endless(loader)

    def losses() -> dict[str, torch.Tensor]:
        real_A, real_B = next(batches)
        return trainer.step(real_A.to(device), real_B.to(device))

    step, _ = _logged(losses, device)
    return {**_time_steps(step, cfg, device), "first_step_s": None}


def _logged(losses: Callable[[], dict[str, torch.Tensor]], device: torch.device):
    """A step function that reads the losses back every `REFERENCE_PRINT_FREQ` steps, and its log."""
    log = LossLog(REFERENCE_PRINT_FREQ, device)
    counter = {"step": 0}

    def step() -> None:
        counter["step"] += 1
        log.record(counter["step"], losses())
        if len(log.steps) == REFERENCE_PRINT_FREQ:
            log.read()

    return step, log


def _time_steps(step: Callable[[], None], cfg: BenchConfig, device: torch.device) -> dict[str, Any]:
    """Warm up, then time `cfg.repeats` runs of a step count that lasts about a second."""
    start = time.perf_counter()
    for _ in range(cfg.warmup):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - start
    steps = _steps_per_run(step, cfg, device)
    return {"steps": steps, "times_s": _timed_runs(step, steps, cfg.repeats, device), "warmup_s": warmup_s}


def _fast_steps(ctx: Context, mode: Mode):
    from pipeline.cyclegan.fast import FastSteps

    cfg, device = ctx.cfg, ctx.device
    options: dict[str, Any] = {"dynamic_batch": mode.dynamic_batch}
    if cfg.compile_backend != "inductor":
        options["backend"] = cfg.compile_backend
    trainer = build_trainer(LossSwitches(), train_config(cfg, mode, device), device, compile_options=options)
    sampler = UnpairedSampler(ctx.domains, cfg.image_size, mode.batch, seeded(0, "data"))
    return FastSteps(trainer, sampler)


def run_fast(ctx: Context, mode: Mode) -> dict[str, Any]:
    """Time a fast-path mode: its compile and capture times too, and host syncs per captured step."""
    cfg, device = ctx.cfg, ctx.device
    runner = _fast_steps(ctx, mode)
    step, log = _logged(runner.step, device)
    measured = _time_steps(step, cfg, device)
    log.read()  # the NaN/inf check covers the timed steps too
    result = {
        **measured,
        "first_step_s": runner.timings.get("first step (compile)"),
        "capture_s": runner.timings.get("capture"),
        "graph_captured": runner.graph is not None,
    }
    if runner.graph is not None:
        result["host_syncs_per_step"] = _count_syncs(step, 10)
    return result


def _count_syncs(step: Callable[[], None], steps: int) -> float | None:
    """Synchronising CUDA calls per step, as `set_sync_debug_mode("warn")` reports them."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught) / steps
    except Exception:  # a diagnostic; never the reason a benchmark fails
        return None


def phase_times(ctx: Context, mode: Mode, steps: int = 5) -> dict[str, float]:
    """Median ms per phase of an eager (uncaptured) fast step: upload, data, G step, pools, D step."""
    runner = _fast_steps(ctx, dataclasses.replace(mode, graphs=False))
    cuda = ctx.device.type == "cuda"
    samples: dict[str, list[float]] = {}
    for index in range(steps + 2):  # two untimed
        marks: list[tuple[str, Any]] = []

        def mark(phase: str, marks=marks) -> None:
            if cuda:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                marks.append((phase, event))
            else:
                marks.append((phase, time.perf_counter()))

        mark("start")
        runner.timed_step(mark)
        _sync(ctx.device)
        if index < 2:
            continue
        for (_, before), (phase, after) in itertools.pairwise(marks):
            elapsed = before.elapsed_time(after) if cuda else (after - before) * 1000
            samples.setdefault(phase, []).append(elapsed)
    return {phase: statistics.median(values) for phase, values in samples.items()}


def kernel_profile(ctx: Context, mode: Mode, top: int = 15) -> list[dict[str, Any]]:
    """The kernels that take the most device time in a few eager steps (CUDA only)."""
    from torch.profiler import ProfilerActivity, profile

    runner = _fast_steps(ctx, dataclasses.replace(mode, graphs=False))
    for _ in range(3):
        runner.step()
    _sync(ctx.device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            runner.step()
        _sync(ctx.device)
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0)
        if device_us:
            rows.append(
                {
                    "kernel": event.key[:120],
                    "ms_per_step": device_us / 1000 / 3,
                    "calls_per_step": event.count / 3,
                }
            )
    rows.sort(key=lambda row: -row["ms_per_step"])
    total = sum(row["ms_per_step"] for row in rows)
    for row in rows:
        row["share"] = row["ms_per_step"] / total if total else None
    return rows[:top]
