"""Design (a) of `python -m benchmarks.concurrent`: N OS processes sharing the device, one run each,
timed together after a barrier.
"""

from __future__ import annotations

import multiprocessing
import queue
import statistics
import time
from typing import Any

import torch

from benchmarks.concurrent_config import ConcurrentConfig, check_finite, run_seeds, sync, synthetic_domains
from pipeline.core.device import seeded
from pipeline.cyclegan.losses import LossSwitches
from pipeline.cyclegan.step import build_trainer, make_steps
from pipeline.data.domains import UnpairedSampler

PROCESS_TIMEOUT_S = 600.0  # one design-(a) measurement, start-up included


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
            sync(device)
            barrier.wait(timeout=PROCESS_TIMEOUT_S)
            start = time.monotonic()  # system-wide clock: comparable between the processes
            for _ in range(steps):
                losses = runner.step()
            sync(device)
            windows.append((start, time.monotonic()))
        check_finite(losses)
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        results.put({"seed": seed, "windows": windows, "peak_memory_gib": memory})
    except BaseException as exc:
        barrier.abort()  # the others stop waiting
        results.put({"seed": seed, "error": f"{type(exc).__name__}: {exc}"[:1000]})


def measure_processes(runs: int, steps: int, cfg: ConcurrentConfig, device: torch.device) -> dict[str, Any]:
    """Design (a) at N = `runs`: each window from the first process's start to the last one's end."""
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
