"""The runs of an ablation one after another against side by side, on this machine, and what a run
costs besides its steps.

    python -m benchmarks.ablation                      # the five default runs (params.yaml), twice
    python -m benchmarks.ablation --steps 50 --json x  # the same, 50 steps a run
    python -m benchmarks.ablation --tiny               # CI smoke run: a generated split, a few steps

It prints two things:

- a run's fixed cost (everything but its steps) split into its parts, measured in this process, which
  has imported nothing yet, around the same calls the train stage makes: importing torch and the
  pipeline, reading the split, building the networks and optimisers, the MLflow store and run, the
  losses and sample grids, exporting G and F as MLflow models, ending the run;
- every variant of params.yaml (seed: the first of `seeds:`) trained by the train stage itself,
  ``python -m stages.train`` in its own process, recorded in a throw-away MLflow store: first one after
  another, then `jobs` at a time (default: what `pipeline.orchestration.concurrent` chooses here), with
  each wall time, the machine's mean CPU use during each (psutil, sampled every second), their ratio,
  and whether every run's checkpoint and loss curves are the same bytes both times.

The split is read from `--split` (default data/split: run ``dvc repro split`` first).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Phase:
    """One way of training the runs: its wall time, mean CPU use and the outputs' digests."""

    jobs: int
    wall_s: float
    cpu_percent: float
    digests: dict[str, str]
    failed: list[str]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"


class CpuSampler:
    """The machine's CPU use, sampled every second in a thread, averaged."""

    def __init__(self) -> None:
        import psutil

        self.psutil, self.samples, self.stop = psutil, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.psutil.cpu_percent(None)
        while not self.stop.wait(1.0):
            self.samples.append(self.psutil.cpu_percent(None))

    def __enter__(self) -> CpuSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else float("nan")


def train_runs(
    runs: Sequence[str], jobs: int, params: Path, split: Path, out: Path, env: dict[str, str]
) -> Phase:
    """Train `runs` (variant names) with the train stage, `jobs` processes at a time."""
    out.mkdir(parents=True)
    pending, running, failed = list(runs), {}, []
    started = time.perf_counter()
    with CpuSampler() as cpu:
        while pending or running:
            while pending and len(running) < jobs:
                variant = pending.pop(0)
                argv = [sys.executable, "-m", "stages.train", "--params", str(params), "--variant", variant]
                argv += [
                    "--split",
                    str(split),
                    "--out",
                    str(out / variant),
                    "--plots",
                    str(out / f"{variant}.csv"),
                ]
                log = (out / f"{variant}.log").open("w")
                running[variant] = (subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log), log)
            for variant, (process, log) in list(running.items()):
                if process.poll() is not None:
                    log.close()
                    del running[variant]
                    if process.returncode:
                        failed.append(variant)
            time.sleep(0.2)
    wall = time.perf_counter() - started
    digests = {}
    for variant in runs:
        digests[f"{variant}/checkpoint.pt"] = _digest(out / variant / "checkpoint.pt")
        digests[f"{variant}.csv"] = _digest(out / f"{variant}.csv")
    return Phase(jobs, wall, cpu.mean, digests, failed)


def params_with(params: Path, steps: int | None, into: Path) -> Path:
    """params.yaml, with `train.max_steps` set when `steps` is given."""
    import yaml

    loaded = yaml.safe_load(params.read_text())
    if steps is not None:
        loaded["train"]["max_steps"] = steps
    into.write_text(yaml.safe_dump(loaded, sort_keys=False))
    return into


def compare(
    params: Path, split: Path, jobs: int | None, steps: int | None, work: Path, sequential: bool = True
) -> dict[str, Any]:
    """The runs one after another (unless not `sequential`), then `jobs` at a time."""
    import yaml

    from pipeline.core.study import read_study
    from pipeline.orchestration.concurrent import default_jobs, project_threads

    loaded = yaml.safe_load(params.read_text())
    runs = list(read_study(loaded).variants)
    jobs = jobs or default_jobs(len(runs), project_threads(loaded), gpus=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    env.pop("CYCLEGAN_PARENT_RUN_ID", None)
    bench_params = params_with(params, steps, work / "params.yaml")
    print(f"{len(runs)} runs ({', '.join(runs)}), {steps or 'all'} steps each", flush=True)
    figures: dict[str, Any] = {"runs": runs, "steps": steps, "jobs": jobs}
    if sequential:
        one = train_runs(runs, 1, bench_params, split, work / "sequential", env)
        print(f"one after another: {one.wall_s:.1f} s, CPU {one.cpu_percent:.0f} %", flush=True)
        figures["sequential"] = dataclasses.asdict(one)
    many = train_runs(runs, jobs, bench_params, split, work / "concurrent", env)
    print(f"{jobs} at a time:      {many.wall_s:.1f} s, CPU {many.cpu_percent:.0f} %", flush=True)
    figures["concurrent"] = dataclasses.asdict(many)
    if sequential:
        same = one.digests == many.digests and not one.failed and not many.failed
        ratio = many.wall_s / one.wall_s
        print(f"concurrent / sequential: {ratio:.2f}; outputs byte-identical: {same}", flush=True)
        figures.update(ratio=round(ratio, 3), byte_identical=same)
    return figures


def fixed_costs(split: Path, steps: int, work: Path) -> dict[str, float]:
    """Part 2: the parts of one run besides its steps, timed around the calls the train stage makes."""
    timings: dict[str, float] = {}

    def timed(name: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = call()
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - started, 2)
        return result

    timed("import torch and the pipeline", lambda: __import__("pipeline.cyclegan.loop"))
    from pipeline.core.config import read_params, section_of
    from pipeline.cyclegan import loop
    from pipeline.cyclegan.config import TrainConfig
    from pipeline.cyclegan.losses import LossSwitches
    from pipeline.tracking.train import TrainRecorder

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'fixed.db'}"
    params = read_params(ROOT / "params.yaml")
    cfg = dataclasses.replace(section_of(params, "train", TrainConfig), max_steps=steps)

    class Timed(TrainRecorder):
        def check(self) -> None:
            timed("MLflow: import, store, tables", super().check)

        def start(self, facts, resume=None) -> None:
            timed("MLflow: the run, its params and tags", lambda: super(Timed, self).start(facts, resume))

        def metrics(self, values, step) -> None:
            timed("MLflow: losses and sample grids", lambda: super(Timed, self).metrics(values, step))

        def image(self, key, pixels, step) -> None:
            timed("MLflow: losses and sample grids", lambda: super(Timed, self).image(key, pixels, step))

        def models(self, nets, image_size) -> None:
            timed("MLflow: G and F as models", lambda: super(Timed, self).models(nets, image_size))

        def end(self, status) -> None:
            timed("MLflow: end of the run", lambda: super(Timed, self).end(status))

    real_domains, real_trainer = loop.load_training_domains, loop.build_trainer
    loop.load_training_domains = lambda *a, **k: timed(
        "reading the training domains", lambda: real_domains(*a, **k)
    )
    loop.build_trainer = lambda *a, **k: timed("networks and optimisers", lambda: real_trainer(*a, **k))
    try:
        run = loop.TrainingRun(
            "cyclegan", LossSwitches(), cfg, split, work / "fixed" / "m", work / "fixed" / "c.csv"
        )
        started = time.perf_counter()
        loop.train_variant(run, Timed(params, say=lambda message: None))
        total = time.perf_counter() - started
    finally:
        loop.load_training_domains, loop.build_trainer = real_domains, real_trainer
    timings["the run in all (import aside)"] = round(total, 2)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--split", type=Path, default=ROOT / "data" / "split")
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default: the pipeline's)")
    parser.add_argument("--steps", type=int, default=None, help="steps a run (default: the params' own)")
    parser.add_argument("--fixed-steps", type=int, default=20, help="steps of the fixed-cost run")
    parser.add_argument("--tiny", action="store_true", help="a generated split and tiny runs (CI)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--concurrent-only", action="store_true", help="skip the fixed costs and the one-after-another runs"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ablation-bench-") as tmp:
        work = Path(tmp)
        params, split, steps = args.params, args.split, args.steps
        if args.tiny:
            from pipeline.cyclegan.losses import LossSwitches
            from tests.factories import TINY_TRAIN, make_split, write_params

            split = make_split(work / "split")
            variants = {
                "cyclegan": LossSwitches(),
                "gan_only": LossSwitches(cycle_forward=False, cycle_backward=False),
            }
            params = write_params(work / "tiny.yaml", TINY_TRAIN, variants)
            steps = steps or 6
        if not (split / "manifest.csv").is_file():
            print(
                f"error: {split} holds no split: run `dvc repro split` first, or pass --split",
                file=sys.stderr,
            )
            return 1
        figures: dict[str, Any] = {}
        if not args.tiny and not args.concurrent_only:  # first: its imports are timed in a fresh process
            figures["fixed_costs_s"] = fixed_costs(split, args.fixed_steps, work)
            print(f"a run's parts besides its steps ({args.fixed_steps} steps of cyclegan):")
            for name, seconds in figures["fixed_costs_s"].items():
                print(f"  {name:40s} {seconds:7.2f} s", flush=True)
        figures["compare"] = compare(params, split, args.jobs, steps, work, not args.concurrent_only)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
