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
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.concurrent_config import (
    TINY,
    TINY_RUNS,
    TINY_STEPS,
    ConcurrentConfig,
    run_seeds,
    synthetic_domains,
)
from benchmarks.concurrent_processes import PROCESS_TIMEOUT_S, measure_processes
from benchmarks.concurrent_stacked import NET_NAMES, POOL_NAMES, StackedRuns, build_stacked, measure_stacked
from pipeline.core.device import resolve_device

# The public names, wherever they are defined: callers import them from this module.
__all__ = [
    "DESIGNS",
    "NET_NAMES",
    "POOL_NAMES",
    "PROCESS_TIMEOUT_S",
    "TINY",
    "TINY_RUNS",
    "TINY_STEPS",
    "ConcurrentConfig",
    "StackedRuns",
    "build_stacked",
    "format_table",
    "main",
    "measure",
    "run_seeds",
    "synthetic_domains",
]

DESIGNS = ("a", "b")


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
                run = measure_processes if design == "a" else measure_stacked
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
