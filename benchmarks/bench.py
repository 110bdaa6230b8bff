"""Training throughput: the reference-equivalent mode against the fast path, in pairs per second.

    python -m benchmarks.bench --split data/split --out benchmarks/h200.json   # on a GPU (minutes)
    python -m benchmarks.bench --tiny                                         # CPU smoke run (seconds)

One pair = one photo and one label map through one full training iteration (G step, pools, D step) of
the `cyclegan` variant, the one with every loss term. In one process it measures:

- `reference`: what the reference repo does at its paper settings - fp32, eager, batch 1, a CPU torch
  DataLoader (4 workers) that opens and decodes the PNGs from disk every step with PIL and applies the
  reference's transforms (Resize(load_size, bicubic), RandomCrop, RandomHorizontalFlip, ToTensor,
  Normalize), the plain step, losses read back every 100 steps (its print_freq);
- the fast path (`pipeline.cyclegan.fast`: bf16, channels_last, device data and pools, fused Adam) at batch 1
  with a captured CUDA graph, without it, and eager at the largest batch (what compile buys);
- the fast path with `torch.compile` (+ graph) at every batch of `--batches` and at batch 1.

Each mode: warm-up steps first (compile, capture, cuDNN autotuning are not timed, the first step's
time is reported as its compile time), then `--repeats` timed runs of N steps between device
synchronisations (N chosen from the warm pace so that a run lasts about a second); the median run
gives pairs/s. Also reported: the FLOPs of one iteration
(`torch.utils.flop_counter.FlopCounterMode` on the model at hand), TFLOP/s and the fraction of
`--peak-tflops`, per-phase times (upload, data, G step, pools, D step; CUDA events around each phase
of an eager step), the top kernels by device time (torch.profiler, CUDA only) and how many host
syncs a captured step makes (`torch.cuda.set_sync_debug_mode`). The JSON is rewritten after every
mode, so a run stopped at its time budget keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import itertools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.core.device import resolve_device, seeded
from pipeline.cyclegan.config import TrainConfig
from pipeline.cyclegan.curves import LossLog
from pipeline.cyclegan.losses import LossSwitches
from pipeline.cyclegan.step import (
    DiscriminatorObjective,
    GeneratorObjective,
    build_trainer,
    set_requires_grad,
)
from pipeline.data.domains import LABEL_SUBSET, PHOTO_SUBSET, UnpairedSampler, load_training_domains
from pipeline.data.manifest import read_manifest

H200_BF16_DENSE_TFLOPS = 790.0  # 8192^3 bf16 matmul measured on this workplace's H200 (KINDS.md)
REFERENCE_PRINT_FREQ = 100  # the reference reads its losses back every print_freq iterations


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


def _train_config(cfg: BenchConfig, mode: Mode, device: torch.device) -> TrainConfig:
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
        switches, _train_config(cfg, Mode(1, fast=False), torch.device("cpu")), torch.device("cpu")
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
class _Context:
    cfg: BenchConfig
    device: torch.device
    split_dir: Path
    domains: Any
    flops_per_pair: float


def _run_reference(ctx: _Context, mode: Mode) -> dict[str, Any]:
    cfg, device = ctx.cfg, ctx.device
    trainer = build_trainer(LossSwitches(), _train_config(cfg, mode, device), device)
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


def _fast_steps(ctx: _Context, mode: Mode):
    from pipeline.cyclegan.fast import FastSteps

    cfg, device = ctx.cfg, ctx.device
    options: dict[str, Any] = {"dynamic_batch": mode.dynamic_batch}
    if cfg.compile_backend != "inductor":
        options["backend"] = cfg.compile_backend
    trainer = build_trainer(LossSwitches(), _train_config(cfg, mode, device), device, compile_options=options)
    sampler = UnpairedSampler(ctx.domains, cfg.image_size, mode.batch, seeded(0, "data"))
    return FastSteps(trainer, sampler)


def _run_fast(ctx: _Context, mode: Mode) -> dict[str, Any]:
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


def phase_times(ctx: _Context, mode: Mode, steps: int = 5) -> dict[str, float]:
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


def kernel_profile(ctx: _Context, mode: Mode, top: int = 15) -> list[dict[str, Any]]:
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


# --- the run ------------------------------------------------------------------------------------------


def _summarise(mode: Mode, raw: dict[str, Any], flops: float, peak_tflops: float) -> dict[str, Any]:
    per_run = statistics.median(raw["times_s"])
    pairs_per_s = raw["steps"] * mode.batch / per_run
    tflops = pairs_per_s * flops / 1e12
    return {
        "key": mode.key,
        "label": mode.label,
        **dataclasses.asdict(mode),
        "pairs_per_s": pairs_per_s,
        "step_ms": per_run / raw["steps"] * 1000,
        "tflops": tflops,
        "fraction_of_peak": tflops / peak_tflops,
        **raw,
    }


def _label(mode: Mode, cfg: BenchConfig) -> str:
    if mode.compile and cfg.compile_backend != "inductor":
        return mode.label.replace("compile", f"compile[{cfg.compile_backend}]")
    return mode.label


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _headline(report: dict[str, Any]) -> None:
    done = [m for m in report["modes"] if "pairs_per_s" in m]
    reference = next((m for m in done if m["key"] == "reference_b1"), None)
    fast = [m for m in done if m["fast"]]
    fast_b1 = max((m for m in fast if m["batch"] == 1), key=lambda m: m["pairs_per_s"], default=None)
    best = max(fast, key=lambda m: m["pairs_per_s"], default=None)
    report["reference_b1_pairs_per_s"] = reference["pairs_per_s"] if reference else None
    report["fast_b1_pairs_per_s"] = fast_b1["pairs_per_s"] if fast_b1 else None
    report["fast_b1_mode"] = fast_b1["key"] if fast_b1 else None
    report["fast_best_batch"] = best["batch"] if best else None
    report["fast_best_pairs_per_s"] = best["pairs_per_s"] if best else None
    report["fast_best_mode"] = best["key"] if best else None
    report["compile_seconds"] = {m["key"]: m["first_step_s"] for m in done if m.get("compile")}
    for mode in done:
        mode["ratio_to_reference"] = mode["pairs_per_s"] / reference["pairs_per_s"] if reference else None


def format_table(report: dict[str, Any]) -> str:
    model, size = report["model"], report["image_size"]
    lines = [
        f"CycleGAN training throughput on {report['device_name']} ({report['device']}), "
        f"torch {report['torch']}, {report['date']}",
        f"{size}x{size}, ngf {model['ngf']}, {model['n_blocks']} blocks; "
        f"{report['flops_per_pair'] / 1e9:.4g} GFLOP per pair; peak {report['peak_tflops']:.0f} TFLOP/s "
        f"-> limit {report['limit_pairs_per_s']:.0f} pairs/s",
        f"{'mode':<38} {'batch':>5} {'pairs/s':>9} {'x ref':>7} {'TFLOP/s':>8} {'% peak':>7} "
        f"{'ms/step':>8} {'1st step s':>10}",
    ]
    for mode in report["modes"]:
        if "pairs_per_s" not in mode:
            reason = mode.get("error") or mode.get("skipped") or "?"
            lines.append(f"{mode['label']:<38} {mode['batch']:>5}  not measured: {reason[:70]}")
            continue
        ratio = f"{mode['ratio_to_reference']:.2f}" if mode.get("ratio_to_reference") else "-"
        first = f"{mode['first_step_s']:.1f}" if mode.get("first_step_s") is not None else "-"
        lines.append(
            f"{mode['label']:<38} {mode['batch']:>5} {mode['pairs_per_s']:>9.1f} {ratio:>7} "
            f"{mode['tflops']:>8.2f} {100 * mode['fraction_of_peak']:>6.2f}% "
            f"{mode['step_ms']:>8.2f} {first:>10}"
        )
    if report.get("phases_ms"):
        for key, phases in report["phases_ms"].items():
            lines.append(
                f"phases of {key} (eager, ms): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
            )
    return "\n".join(lines)


def make_tiny_split(root: Path, n_images: int = 8, size: int = 36, seed: int = 0) -> Path:
    """A throwaway split with the training domains only (random pixels, PNG), for `--tiny`."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for subset, kind, first in ((PHOTO_SUBSET, "photo", 1), (LABEL_SUBSET, "label", 1001)):
        (root / subset).mkdir(parents=True, exist_ok=True)
        for image_id in range(first, first + n_images):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                root / subset / f"{image_id}.png"
            )
            rows.append((str(image_id), subset, kind, f"{subset}/{image_id}.png", size, size))
    columns = ["image_id", "subset", "kind", "path", "width", "height"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "manifest.csv", index=False)
    return root


def run_bench(
    split_dir: str | os.PathLike,
    cfg: BenchConfig,
    device: torch.device,
    out_json: Path | None = None,
    modes: list[Mode] | None = None,
    echo: Callable[[str], None] = print,
    late_modes: list[Mode] | None = None,
) -> dict[str, Any]:
    """Measure every mode (in order, within the budget), the diagnostics, then `late_modes`; return
    (and write) the report. Default modes: `default_modes`."""
    started = time.perf_counter()
    split_dir = Path(split_dir)
    if modes is None:
        modes, default_late = default_modes(cfg)
        late_modes = default_late if late_modes is None else late_modes
    late_modes = late_modes or []
    # More compiled variants than torch's default limit: several batches, frozen and trainable D.
    with contextlib.suppress(AttributeError):
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if device.type == "cuda":
        # The reference sets this (models/base_model.py) and so does the fast path: shapes are fixed.
        torch.backends.cudnn.benchmark = True
    flops = count_flops_per_pair(cfg)
    report: dict[str, Any] = {
        "device": device.type,
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "image_size": cfg.image_size,
        "load_size": cfg.load_size,
        "model": {"ngf": cfg.ngf, "ndf": cfg.ndf, "n_blocks": cfg.n_blocks, "variant": "cyclegan"},
        "flops_per_pair": flops,
        "peak_tflops": cfg.peak_tflops,
        "limit_pairs_per_s": cfg.peak_tflops * 1e12 / flops,
        "config": dataclasses.asdict(cfg),
        "modes": [],
    }
    domains = load_training_domains(split_dir, cfg.load_size)
    report["images"] = {"photos": len(domains.photos), "labels": len(domains.labels)}
    ctx = _Context(cfg, device, split_dir, domains, flops)
    if device.type != "cuda":  # what actually runs there: no bf16 autocast, no graphs
        modes, late_modes = (
            [dataclasses.replace(m, bf16=False, graphs=False) for m in group] for group in (modes, late_modes)
        )
    seen: set[str] = set()
    for group in (modes, late_modes):
        for mode in group:
            if mode.key not in seen:
                seen.add(mode.key)
                _measure(ctx, mode, report, out_json, started, echo)
        if group is modes:
            _diagnostics(ctx, report, out_json, started, echo)
    return report


def _measure(ctx: _Context, mode: Mode, report: dict, out_json: Path | None, started: float, echo) -> None:
    """One mode into `report["modes"]` (measured, failed with its error, or skipped by the budget)."""
    cfg = ctx.cfg
    entry: dict[str, Any] = {"key": mode.key, "label": _label(mode, cfg), **dataclasses.asdict(mode)}
    if cfg.budget_s is not None and time.perf_counter() - started > cfg.budget_s:
        entry["skipped"] = f"time budget ({cfg.budget_s:.0f} s) spent"
    else:
        echo(f"bench: {entry['label']}, batch {mode.batch} ...")
        try:
            raw = _run_reference(ctx, mode) if not mode.fast else _run_fast(ctx, mode)
            entry = {**_summarise(mode, raw, ctx.flops_per_pair, cfg.peak_tflops), "label": _label(mode, cfg)}
            echo(f"bench:   {entry['pairs_per_s']:.1f} pairs/s ({entry['step_ms']:.2f} ms/step)")
        except Exception as exc:  # one failing mode must not lose the others
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            echo(f"bench:   failed: {entry['error'][:300]}")
        finally:
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
    report["modes"].append(entry)
    _headline(report)
    report["elapsed_s"] = time.perf_counter() - started
    _write_json(out_json, report)


def _mode_of(entry: dict[str, Any]) -> Mode:
    """The uncaptured twin of a measured mode (phase timings and the profile need eager steps)."""
    fields = {f.name: entry[f.name] for f in dataclasses.fields(Mode)}
    return Mode(**{**fields, "graphs": False})


def _diagnostics(ctx: _Context, report: dict[str, Any], out_json: Path | None, started: float, echo) -> None:
    """Per-phase times at batch 1 and at the best batch; the kernel profile at the best batch."""
    cfg = ctx.cfg
    done = {m["key"]: m for m in report["modes"] if "pairs_per_s" in m}
    best_key = report.get("fast_best_mode")
    targets = [key for key in (report.get("fast_b1_mode"), best_key) if key]
    report["phases_ms"] = {}
    for key in dict.fromkeys(targets):
        if cfg.budget_s is not None and time.perf_counter() - started > cfg.budget_s:
            break
        entry = done[key]
        mode = _mode_of(entry)
        try:
            report["phases_ms"][key] = phase_times(ctx, mode)
        except Exception as exc:
            report["phases_ms"][key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    in_budget = cfg.budget_s is None or time.perf_counter() - started < cfg.budget_s
    if cfg.profile and ctx.device.type == "cuda" and best_key and in_budget:
        try:
            report["kernel_profile"] = {
                "mode": best_key,
                "top": kernel_profile(ctx, _mode_of(done[best_key])),
            }
        except Exception as exc:
            report["kernel_profile"] = {"mode": best_key, "error": f"{type(exc).__name__}: {exc}"[:500]}
    report["elapsed_s"] = time.perf_counter() - started
    _write_json(out_json, report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", help="split folder with the training domains (required unless --tiny)")
    parser.add_argument("--out", type=Path, help="JSON report to write (rewritten after every mode)")
    parser.add_argument(
        "--tiny", action="store_true", help="small images and nets, few steps (CPU smoke run)"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batches", help="comma-separated batch sizes for the compiled fast path")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help=f"the device's peak (default {H200_BF16_DENSE_TFLOPS:.0f}, H200 bf16 dense)",
    )
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--budget-s", type=float, help="start no mode after this many seconds")
    parser.add_argument("--image-size", type=int, help="crop size (and load size + 15)")
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(TINY) if args.tiny else BenchConfig()
    if args.batches:
        cfg.batches = tuple(int(b) for b in args.batches.split(","))
    if args.peak_tflops:
        cfg.peak_tflops = args.peak_tflops
    if args.repeats:
        cfg.repeats = args.repeats
    if args.budget_s:
        cfg.budget_s = args.budget_s
    if args.image_size:
        cfg.image_size, cfg.load_size = args.image_size, args.image_size + 15
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.split:
            split_dir = Path(args.split)
        elif args.tiny:
            split_dir = make_tiny_split(Path(tmp) / "split", size=cfg.load_size)
        else:
            parser.error("--split is required (or --tiny)")
        report = run_bench(
            split_dir, cfg, device, args.out, echo=lambda m: print(m, file=sys.stderr, flush=True)
        )
    print(format_table(report))
    if args.out:
        print(f"bench: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
