"""The report of `python -m benchmarks.bench`: one mode's figures (pairs/s, TFLOP/s, share of the
peak), the headline numbers over all modes, the JSON file and the printed table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_config import BenchConfig, Mode


def summarise(mode: Mode, raw: dict[str, Any], flops: float, peak_tflops: float) -> dict[str, Any]:
    """One measured mode's entry: pairs/s of the median run, ms per step, TFLOP/s, share of the peak."""
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


def label(mode: Mode, cfg: BenchConfig) -> str:
    """The mode's label, naming the compile backend when it is not inductor."""
    if mode.compile and cfg.compile_backend != "inductor":
        return mode.label.replace("compile", f"compile[{cfg.compile_backend}]")
    return mode.label


def device_name(device: torch.device) -> str:
    """The device as the report names it: the GPU, or the CPU and its threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    """`data` into `path` through a temporary file (nothing when `path` is None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def headline(report: dict[str, Any]) -> None:
    """The headline figures of the modes measured so far, and each one's ratio to the reference."""
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
