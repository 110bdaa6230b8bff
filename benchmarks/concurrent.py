"""N independent batch-1 training runs on one device at once: N processes, or one batched model.

    python -m benchmarks.concurrent --designs a,b --runs 1,2,5,10 --steps 20 --image-size 128 --ngf 64
    python -m benchmarks.concurrent --tiny                       # CPU smoke run (tiny nets and images)

An ablation is a matrix of independent runs (5 variants x seeds), each at batch 1 as in the paper. One
batch-1 run leaves most of a GPU idle, so the question is how to train N of them together:

- design (a): N OS processes sharing the device, each training its own run with the project's own
  step (`build_trainer` + `make_steps`: the plain path on the CPU, the eager fast path on CUDA -
  device data and pools, fused Adam, no graph, no compile), timed together after a barrier:
  aggregate pairs/s = N x steps / (last end - first start).
- design (b): the N runs as one batched model in one process (`StackedRuns`): each network's N copies
  stacked with `torch.func.stack_module_state` and called through `functional_call` under
  `torch.vmap` (vmap turns a convolution with per-run weights into one grouped convolution). Every run
  keeps its own seeded sampler (data order, crops, flips), its own two `ImagePool`s, its own Adam
  state and its own losses: it still trains at batch 1, as the paper did. The objective is
  `generator_losses` / `discriminator_losses` themselves, called once per run inside vmap. Why that
  is the same training: the sum over runs of each run's loss gives each run exactly its own gradient
  (the runs share no parameter); instance norm normalises each sample on its own; Adam is elementwise
  (moments per element, one shared step count that every run would have anyway), so one Adam over the
  stacked parameters is N independent Adams. The update order is the reference's: G and F step with
  D frozen, then D_X and D_Y on the pooled fakes.

All N runs train the full `cyclegan` variant (every loss term on), seeds 0..N-1, on synthetic uint8
domains (random pixels: the arithmetic does not depend on the content). fp32 on the CPU; on CUDA both
designs use bf16 autocast (`--no-bf16` for fp32). The figures: pairs/s per (design, N) after warm-up
steps that are not timed (one pair = one photo and one label map through a full iteration of one run).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import platform
import queue
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, stack_module_state

from pipeline.core.device import resolve_device, seeded
from pipeline.cyclegan.config import TrainConfig
from pipeline.cyclegan.losses import LossDict, LossSwitches, discriminator_losses, generator_losses
from pipeline.cyclegan.models import CycleGANNets
from pipeline.cyclegan.step import Trainer, build_trainer, make_steps
from pipeline.data.domains import BatchDraw, TrainingDomains, UnpairedSampler, materialize

DESIGNS = ("a", "b")
NET_NAMES = ("G", "F", "D_X", "D_Y")
POOL_NAMES = ("X", "Y")  # X: fake photos for D_X, Y: fake label maps for D_Y
PROCESS_TIMEOUT_S = 600.0  # one design-(a) measurement, start-up included


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- design (b): N runs as one batched model ---------------------------------------------------------


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


def _measure_stacked(runs: int, steps: int, cfg: ConcurrentConfig, device: torch.device) -> dict[str, Any]:
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
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                losses = stacked.step()
            _sync(device)
            windows.append(time.perf_counter() - start)
        _check_finite(losses)
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


def _check_finite(losses: LossDict) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value).all():
            raise FloatingPointError(f"{name} is not finite after the timed steps: {value.tolist()}")


# --- design (a): N processes, one run each ----------------------------------------------------------


def _process_run(seed: int, steps: int, cfg: ConcurrentConfig, device_name: str, barrier, results) -> None:
    """One run in its own process: build, warm up, then `repeats` times: wait for the others, time
    `steps` steps."""
    try:
        torch.set_num_threads(cfg.threads)
        device = torch.device(device_name)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes (the fast path sets it as well)
        train_cfg = cfg.train_config(seed, device)
        trainer = build_trainer(LossSwitches(), train_cfg, device)
        sampler = UnpairedSampler(
            synthetic_domains(cfg), train_cfg.crop_size, 1, seeded(seed, "data"), train_cfg.flip
        )
        runner = make_steps(trainer, sampler)  # the plain path on the CPU, the fast path on CUDA
        for _ in range(cfg.warmup):
            runner.step()
        windows = []
        for _ in range(cfg.repeats):
            _sync(device)
            barrier.wait(timeout=PROCESS_TIMEOUT_S)
            start = time.monotonic()  # system-wide clock: comparable between the processes
            for _ in range(steps):
                losses = runner.step()
            _sync(device)
            windows.append((start, time.monotonic()))
        _check_finite(losses)
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        results.put({"seed": seed, "windows": windows, "peak_memory_gib": memory})
    except BaseException as exc:
        barrier.abort()  # the others stop waiting
        results.put({"seed": seed, "error": f"{type(exc).__name__}: {exc}"[:1000]})


def _measure_processes(runs: int, steps: int, cfg: ConcurrentConfig, device: torch.device) -> dict[str, Any]:
    # spawn: CUDA cannot be used in a forked child, and a fork of a process with OpenMP threads can hang.
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(runs), context.Queue()
    children = [
        context.Process(
            target=_process_run,
            args=(seed, steps, cfg, str(device), barrier, results),
            name=f"concurrent-run-{seed}",
            daemon=True,
        )
        for seed in run_seeds(runs)
    ]
    for child in children:
        child.start()
    reports, deadline = [], time.monotonic() + PROCESS_TIMEOUT_S
    try:
        while len(reports) < runs:
            try:
                reports.append(results.get(timeout=1.0))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{runs} processes did not finish in {PROCESS_TIMEOUT_S:.0f} s"
                    ) from None
                dead = [c for c in children if c.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"{dead[0].name} exited with {dead[0].exitcode}") from None
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(errors[0])
    reports.sort(key=_seed)
    # Window i of every process started after the same barrier: its wall time is last end - first start.
    windows = [
        max(end for _, end in window) - min(start for start, _ in window)
        for window in zip(*(r["windows"] for r in reports), strict=True)
    ]
    median = statistics.median_high(windows)
    middle = windows.index(median)
    result: dict[str, Any] = {
        "wall_s": median,
        "windows_s": windows,
        "threads": cfg.threads,
        "per_process_pairs_per_s": [
            steps / (end - start) for start, end in (r["windows"][middle] for r in reports)
        ],
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = [r["peak_memory_gib"] for r in reports]
    return result


def _seed(report: dict[str, Any]) -> int:
    return report["seed"]


# --- the measurement ---------------------------------------------------------------------------------


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def measure(
    designs: Sequence[str],
    runs: Sequence[int],
    steps: int,
    cfg: ConcurrentConfig,
    device: torch.device | str,
    out_json: Path | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Pairs/s of every design at every N (N ascending, both designs per N, so a budget keeps pairs).

    Returns (and writes to `out_json` after each measurement) `{"concurrent_b1": {design: {str(N):
    aggregate pairs/s}}, "per_run": ..., "ratio_to_1": ..., "ratio_b_to_a": ..., "errors": ...,
    "device": ..., "torch": ..., "image_size": ..., ...}`. A design that fails at some N (out of
    memory, say) is recorded in `errors` and the others go on.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    unknown = set(designs) - set(DESIGNS)
    if unknown:
        raise ValueError(f"unknown design(s) {sorted(unknown)}: choose from {', '.join(DESIGNS)}")
    started = time.perf_counter()
    report: dict[str, Any] = {
        "concurrent_b1": {design: {} for design in designs},
        "device": device.type,
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "image_size": cfg.image_size,
        "load_size": cfg.load_size,
        "model": {"ngf": cfg.ngf, "ndf": cfg.ndf, "n_blocks": cfg.n_blocks, "variant": "cyclegan"},
        "steps": steps,
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "threads_per_run": cfg.threads,
        "batched_threads": cfg.batched_threads,
        "bf16": cfg.bf16 and device.type == "cuda",
        "runs": list(runs),
        "details": {design: {} for design in designs},
        "errors": {},
    }
    for n in sorted(runs):
        for design in designs:
            key = str(n)
            if cfg.budget_s is not None and time.perf_counter() - started > cfg.budget_s:
                report["errors"].setdefault(design, {})[key] = f"skipped: time budget ({cfg.budget_s:.0f} s)"
                continue
            echo(f"concurrent: design {design}, N={n} ...")
            try:
                run = _measure_processes if design == "a" else _measure_stacked
                detail = run(n, steps, cfg, device)
                report["concurrent_b1"][design][key] = n * steps / detail["wall_s"]
                report["details"][design][key] = detail
                echo(f"concurrent:   {report['concurrent_b1'][design][key]:.2f} pairs/s")
            except Exception as exc:  # one failing measurement must not lose the others
                report["errors"].setdefault(design, {})[key] = f"{type(exc).__name__}: {exc}"[:1000]
                echo(f"concurrent:   failed: {report['errors'][design][key][:300]}")
            _derive(report)
            report["elapsed_s"] = time.perf_counter() - started
            _write_json(out_json, report)
    return report


def _derive(report: dict[str, Any]) -> None:
    """Per-run pairs/s, the ratio to N=1 of the same design, and (b)/(a) at each N."""
    figures = report["concurrent_b1"]
    report["per_run"] = {d: {n: v / int(n) for n, v in by_n.items()} for d, by_n in figures.items()}
    report["ratio_to_1"] = {
        d: {n: v / by_n["1"] for n, v in by_n.items()} for d, by_n in figures.items() if "1" in by_n
    }
    a, b = figures.get("a", {}), figures.get("b", {})
    report["ratio_b_to_a"] = {n: b[n] / a[n] for n in a if n in b}


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['runs']} independent batch-1 cyclegan runs on {report['device_name']}, torch "
        f"{report['torch']}: {report['image_size']} px, ngf {report['model']['ngf']}, "
        f"{report['model']['n_blocks']} blocks, {'bf16' if report['bf16'] else 'fp32'}; median of "
        f"{report['repeats']} windows of {report['steps']} steps after {report['warmup']} untimed",
        f"{'design':<24} {'N':>3} {'pairs/s':>9} {'per run':>9} {'x N=1':>7} {'b/a':>6} {'threads':>8}",
    ]
    labels = {"a": "a (N processes)", "b": "b (one batched model)"}
    for n in sorted(report["runs"]):
        key = str(n)
        for design, by_n in report["concurrent_b1"].items():
            if key not in by_n:
                reason = report["errors"].get(design, {}).get(key, "?")
                lines.append(f"{labels[design]:<24} {n:>3}  not measured: {reason[:70]}")
                continue
            ratio = report.get("ratio_to_1", {}).get(design, {}).get(key)
            b_to_a = report["ratio_b_to_a"].get(key) if design == "b" else None
            threads = report["details"][design][key]["threads"]
            threads = f"{n}x{threads}" if design == "a" else str(threads)  # processes x threads
            lines.append(
                f"{labels[design]:<24} {n:>3} {by_n[key]:>9.2f} {report['per_run'][design][key]:>9.2f} "
                f"{_fmt(ratio):>7} {_fmt(b_to_a):>6} {threads:>8}"
            )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--designs", default="a,b", help="comma-separated: a (processes), b (batched)")
    parser.add_argument("--runs", help="comma-separated N (default 1,2,5,10; --tiny: 1,2)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 20; --tiny: 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps per run first (default 3)")
    parser.add_argument("--repeats", type=int, help="timed windows; the median counts (default 3)")
    parser.add_argument("--image-size", type=int, help="crop size (default 128)")
    parser.add_argument("--load-size", type=int, help="synthetic image size (default 143/128 x image size)")
    parser.add_argument("--ngf", type=int, help="generator filters (default 64)")
    parser.add_argument("--ndf", type=int, help="discriminator filters (default: --ngf)")
    parser.add_argument("--n-blocks", type=int, help="residual blocks (default 6)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per run (default 1)")
    parser.add_argument(
        "--batched-threads", type=int, help="design b's CPU threads (default: N x --threads, up to the cores)"
    )
    parser.add_argument("--no-bf16", action="store_true", help="fp32 on CUDA too")
    parser.add_argument("--budget-s", type=float, help="start no measurement after this many seconds")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--tiny", action="store_true", help="tiny nets and images, N=1,2 (CPU smoke run)")
    parser.add_argument("--json", type=Path, help="write the figures here (rewritten after each one)")
    args = parser.parse_args(argv)
    cfg = TINY if args.tiny else ConcurrentConfig()
    changes: dict[str, Any] = {
        field: value
        for field, value in (
            ("image_size", args.image_size),
            ("ngf", args.ngf),
            ("n_blocks", args.n_blocks),
            ("warmup", args.warmup),
            ("repeats", args.repeats),
            ("threads", args.threads),
            ("batched_threads", args.batched_threads),
            ("budget_s", args.budget_s),
        )
        if value is not None
    }
    if args.image_size is not None:
        changes["load_size"] = round(args.image_size * 143 / 128)
    if args.load_size is not None:
        changes["load_size"] = args.load_size
    if args.ngf is not None or args.ndf is not None:
        changes["ndf"] = args.ndf if args.ndf is not None else args.ngf
    if args.no_bf16:
        changes["bf16"] = False
    cfg = dataclasses.replace(cfg, **changes)
    runs = _integers(args.runs) if args.runs else list(TINY_RUNS if args.tiny else (1, 2, 5, 10))
    steps = args.steps or (TINY_STEPS if args.tiny else 20)
    designs = [d for d in args.designs.split(",") if d]
    device = resolve_device(args.device)
    report = measure(designs, runs, steps, cfg, device, args.json, echo=lambda m: print(m, file=sys.stderr))
    print(format_table(report))
    if args.json:
        print(f"concurrent: wrote {args.json}")
    return 0 if all(report["concurrent_b1"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
