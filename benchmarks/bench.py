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
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.bench_config import (
    H200_BF16_DENSE_TFLOPS,
    TINY,
    BenchConfig,
    Mode,
    count_flops_per_pair,
    default_modes,
)
from benchmarks.bench_modes import (
    REFERENCE_PRINT_FREQ,
    Context,
    ReferenceUnaligned,
    kernel_profile,
    phase_times,
    run_fast,
    run_reference,
)
from benchmarks.bench_report import device_name, format_table, headline, label, summarise, write_json
from pipeline.core.device import resolve_device
from pipeline.data.domains import LABEL_SUBSET, PHOTO_SUBSET, load_training_domains

# The public names, wherever they are defined: callers import them from this module.
__all__ = [
    "H200_BF16_DENSE_TFLOPS",
    "REFERENCE_PRINT_FREQ",
    "TINY",
    "BenchConfig",
    "Mode",
    "ReferenceUnaligned",
    "count_flops_per_pair",
    "default_modes",
    "format_table",
    "kernel_profile",
    "main",
    "make_tiny_split",
    "phase_times",
    "run_bench",
]


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
        "device_name": device_name(device),
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
    ctx = Context(cfg, device, split_dir, domains, flops)
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


def _measure(ctx: Context, mode: Mode, report: dict, out_json: Path | None, started: float, echo) -> None:
    """One mode into `report["modes"]` (measured, failed with its error, or skipped by the budget)."""
    cfg = ctx.cfg
    entry: dict[str, Any] = {"key": mode.key, "label": label(mode, cfg), **dataclasses.asdict(mode)}
    if cfg.budget_s is not None and time.perf_counter() - started > cfg.budget_s:
        entry["skipped"] = f"time budget ({cfg.budget_s:.0f} s) spent"
    else:
        echo(f"bench: {entry['label']}, batch {mode.batch} ...")
        try:
            raw = run_reference(ctx, mode) if not mode.fast else run_fast(ctx, mode)
            entry = {**summarise(mode, raw, ctx.flops_per_pair, cfg.peak_tflops), "label": label(mode, cfg)}
            echo(f"bench:   {entry['pairs_per_s']:.1f} pairs/s ({entry['step_ms']:.2f} ms/step)")
        except Exception as exc:  # one failing mode must not lose the others
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            echo(f"bench:   failed: {entry['error'][:300]}")
        finally:
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
    report["modes"].append(entry)
    headline(report)
    report["elapsed_s"] = time.perf_counter() - started
    write_json(out_json, report)


def _mode_of(entry: dict[str, Any]) -> Mode:
    """The uncaptured twin of a measured mode (phase timings and the profile need eager steps)."""
    fields = {f.name: entry[f.name] for f in dataclasses.fields(Mode)}
    return Mode(**{**fields, "graphs": False})


def _diagnostics(ctx: Context, report: dict[str, Any], out_json: Path | None, started: float, echo) -> None:
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
    write_json(out_json, report)


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
