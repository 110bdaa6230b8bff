"""The `train` stage's library side: one (variant, seed) trained from its split, resumably.

A run is a `TrainingRun` (what it trains and where its files go); `train_variant` builds everything it
needs in one call and runs its steps (`pipeline.cyclegan.step`: one step in the reference's order of
updates) epoch after epoch. The learning rate is constant for `epochs_constant` epochs, then decays
linearly towards 0 over `epochs_decay` epochs.

Everything random draws from seeded generators whose states are in the checkpoint (data order, crops
and flips, both pools), so a run killed at any point and rerun continues bit-identically on the same
device and torch build (`pipeline.core.checkpoints`: the unfinished checkpoints outside the output,
the finished one in it).

Two ways to run the same step (same functions, same losses, same random draws): the plain path
(batches built on the CPU, losses read back every step) and the fast path (`train.fast: true`, meant
for GPUs, `pipeline.cyclegan.fast`). Launched by `torchrun` with several processes, one run trains
data-parallel (`pipeline.cyclegan.distributed`).

Recording (MLflow) is the `Recorder` the entry point hands in (`pipeline.core.recording`): this
module tells it what happens and never reads anything back, so the checkpoint and the loss curves are
the same bytes whoever records the run.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.core.checkpoints import CheckpointFiles
from pipeline.core.config import to_flat_dict
from pipeline.core.device import resolve_device, seed_global_generators, seeded
from pipeline.core.images import to_model_range
from pipeline.core.machine import machine_facts
from pipeline.core.progress import progress
from pipeline.core.recording import NOTHING, Recorder
from pipeline.core.signals import Interrupted, StopRequest, stop_requests
from pipeline.core.study import run_name
from pipeline.cyclegan import distributed
from pipeline.cyclegan.checkpoint import FORMAT, read_checkpoint, training_digest
from pipeline.cyclegan.config import TrainConfig, target_steps
from pipeline.cyclegan.curves import LossLog, window_row, write_curves
from pipeline.cyclegan.fingerprint import data_fingerprint
from pipeline.cyclegan.losses import LossDict, LossSwitches
from pipeline.cyclegan.step import Trainer, build_trainer, make_steps
from pipeline.data.domains import TrainingDomains, UnpairedSampler, load_training_domains

SAMPLE_IMAGES = 4  # images per domain in the per-epoch sample grid


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """One (variant, seed) to train: what it computes and where its files go."""

    variant: str
    switches: LossSwitches
    cfg: TrainConfig  # the run's seed is cfg.seed
    split_dir: Path
    out_dir: Path  # the finished checkpoint.pt goes here (the stage's DVC output)
    curves: Path | None = None  # the loss curves' CSV (a row every log_every steps)
    resume_dir: Path | None = None  # unfinished checkpoints (default: out_dir)

    @property
    def name(self) -> str:
        return run_name(self.variant, self.cfg.seed)

    @property
    def files(self) -> CheckpointFiles:
        return CheckpointFiles.of(self.out_dir, self.resume_dir)


@dataclasses.dataclass
class TrainResult:
    checkpoint: Path
    step: int
    resumed: bool  # continued from a checkpoint
    skipped: bool  # the checkpoint was already finished: nothing trained
    history: list[dict[str, float]]


def config_record(cfg: TrainConfig, switches: LossSwitches) -> dict[str, Any]:
    """The config as the checkpoint keeps it."""
    return {"train": cfg.stored(), "switches": dataclasses.asdict(switches)}


def run_fingerprint(
    variant: str, cfg: TrainConfig, switches: LossSwitches, data: dict[str, str]
) -> dict[str, Any]:
    """What decides what a run trains: its variant and switches, the train keys that are not how it is
    carried out (`TrainConfig.fingerprint`, the seed included), and the training data's hash."""
    return {
        "variant": variant,
        "train": cfg.fingerprint(),
        "switches": dataclasses.asdict(switches),
        "data": {"train_sha256": data["train_sha256"]},
    }


def _say(name: str, message: str) -> None:
    print(f"train[{name}]: {message}", file=sys.stderr, flush=True)


def train_variant(
    run: TrainingRun,
    recorder: Recorder = NOTHING,
    on_step: Callable[[int, LossDict], None] | None = None,
) -> TrainResult:
    """Train (or resume, or skip if finished) `run`; the checkpoint is ``<out_dir>/checkpoint.pt``.

    `on_step(step, losses)` runs after every step, once that step's checkpoint (if due) is written;
    `losses` are the step's detached loss tensors (reading them synchronises with the device; on a
    captured step they are valid until the next step). Under `torchrun` rank 0 alone records and
    writes files. Raises `Interrupted` on SIGINT/SIGTERM (after saving) and `PipelineError` on a
    NaN/inf loss.
    """
    device = resolve_device(run.cfg.device, "train.device")
    parallel = distributed.from_environment(device, run.cfg.batch_size)
    try:
        is_main = parallel is None or parallel.is_main

        def say(message: str) -> None:
            if is_main:
                _say(run.name, message)

        data = data_fingerprint(run.split_dir)
        fingerprint = run_fingerprint(run.variant, run.cfg, run.switches, data)
        state = run.files.load_resumable(read_checkpoint, fingerprint, say)
        if state is not None and state["step"] >= target_steps(run.cfg, state["steps_per_epoch"]):
            say(f"already trained ({state['step']} steps, same settings): nothing to do")
            if is_main:
                if not run.files.final.is_file():  # finished in the resume folder
                    run.files.save_final(_finished(state))
                write_curves(run.curves, state["history"])  # DVC removed it before rerunning the stage
            return TrainResult(run.files.final, state["step"], True, True, state["history"])

        if is_main:
            recorder.check()  # an unreachable store fails now, in seconds, not after training
        else:
            recorder = NOTHING
        loop = build_loop(run, data, device, parallel, recorder, say)
        if state is not None:
            loop.restore(state)
            say(f"resuming from step {loop.step} of {loop.target}")
        recorder.start(loop.facts(fingerprint), resume=state.get("recorder") if state else None)
        del state
        return loop.train(on_step)
    finally:
        distributed.shutdown(parallel)


def _finished(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint as the stage's output holds it: finished, without its recorder's state."""
    return {**{k: v for k, v in state.items() if k != "recorder"}, "finished": True}


def build_loop(
    run: TrainingRun,
    data: dict[str, str],
    device: torch.device,
    parallel: distributed.Parallel | None,
    recorder: Recorder,
    say: Callable[[str], None],
) -> TrainingLoop:
    """Threads, seeds, the training domains, the sampler and the trainer of `run`, as one loop."""
    cfg = run.cfg
    if parallel is not None:
        device = parallel.device
    if cfg.num_threads is not None:
        # Tiny CPU convolutions gain little from threads, and on a busy machine spinning OpenMP
        # workers can make a step 10x slower: the default profile pins one thread.
        torch.set_num_threads(cfg.num_threads)
    if parallel is not None and cfg.cuda_graphs and device.type == "cuda":
        say("cuda_graphs is off under DDP (the gradient all-reduce is not captured); compile applies")
    seed_global_generators(cfg.seed)  # a resumed run then restores the checkpoint's states
    domains = load_training_domains(run.split_dir, cfg.load_size, cfg.max_images)
    sampler = UnpairedSampler(domains, cfg.crop_size, cfg.batch_size, seeded(cfg.seed, "data"), cfg.flip)
    trainer = build_trainer(run.switches, cfg, device, parallel)
    return TrainingLoop(run, data, trainer, sampler, sample_images(domains, cfg, device), recorder, say)


def sample_images(
    domains: TrainingDomains, cfg: TrainConfig, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Fixed images for the per-epoch sample grid: centre crops of the first ids of each domain."""
    offset = (cfg.load_size - cfg.crop_size) // 2
    window = (
        slice(None),
        slice(None),
        slice(offset, offset + cfg.crop_size),
        slice(offset, offset + cfg.crop_size),
    )
    return tuple(
        to_model_range(images[:SAMPLE_IMAGES][window]).to(device)
        for images in (domains.photos, domains.labels)
    )


@dataclasses.dataclass
class TrainingLoop:
    """The bookkeeping around the steps: epochs, read-backs, the log window, checkpoints, the record."""

    run: TrainingRun
    data: dict[str, str]
    trainer: Trainer
    sampler: UnpairedSampler
    samples: tuple[torch.Tensor, ...]
    recorder: Recorder
    say: Callable[[str], None]
    step: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)  # the loss-curve rows
    window: dict[str, float] = dataclasses.field(default_factory=dict)  # loss sums of the window...
    window_steps: int = 0  # ...over this many steps (saved: a resumed run logs the same rows)
    resumed: bool = False

    def __post_init__(self) -> None:
        self.cfg = self.run.cfg
        self.parallel = self.trainer.parallel
        self.is_main = self.parallel is None or self.parallel.is_main
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.target = target_steps(self.cfg, self.steps_per_epoch)
        # The plain path checks every step's losses at once; the fast path every log_every steps.
        self.read_every = self.cfg.log_every if self.cfg.fast else 1
        self.log = LossLog(self.read_every, self.trainer.device, self.parallel)

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def facts(self, fingerprint: dict[str, Any]) -> dict[str, Any]:
        """What the recorder is told about this run when it starts."""
        params = to_flat_dict(self.cfg, "train.")
        params.update(to_flat_dict(self.run.switches, "variant."))
        params["variant.name"] = self.run.variant
        # What the finished checkpoint will say (`training_digest` reads only these).
        finished = {
            "variant": self.run.variant,
            "config": config_record(self.cfg, self.run.switches),
            "data": self.data,
            "step": self.target,
        }
        return {
            "variant": self.run.variant,
            "seed": self.cfg.seed,
            "name": self.run.name,
            "params": params,
            "data": dict(self.data),
            "split": str(self.run.split_dir),
            "fingerprint": fingerprint,
            "digest": training_digest(finished),  # what the finished checkpoint will say
            "machine": machine_facts(self.trainer.device),
            "steps": self.target,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"]["torch_cpu"])
        if self.trainer.device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step, self.history = state["step"], state["history"]
        self.window, self.window_steps = state["window"], state["window_steps"]
        self.resumed = True

    def state_dict(self, finished: bool) -> dict[str, Any]:
        cuda = self.trainer.device.type == "cuda"
        state = {
            "format": FORMAT,
            "variant": self.run.variant,
            "config": config_record(self.cfg, self.run.switches),
            "fingerprint": run_fingerprint(self.run.variant, self.cfg, self.run.switches, self.data),
            "data": dict(self.data),
            "machine": machine_facts(self.trainer.device),  # where these weights were computed
            **self.trainer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": {
                "torch_cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if cuda else [],
            },
            "step": self.step,
            "epoch": self.epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "finished": finished,
            "history": self.history,
            "window": self.window,
            "window_steps": self.window_steps,
        }
        if not finished:
            state["recorder"] = self.recorder.state()
        return state

    def save(self, finished: bool = False) -> None:
        if not self.is_main:
            return
        if finished:
            self.run.files.save_final(self.state_dict(finished=True))
        else:
            self.run.files.save_progress(self.state_dict(finished=False))

    def train(self, on_step: Callable[[int, LossDict], None] | None = None) -> TrainResult:
        """The remaining steps, then the finished checkpoint; the record ends as the run did."""
        status = "FAILED"
        try:
            with stop_requests() as interrupt:
                self._steps(interrupt, on_step)
            self.save(finished=True)
            self._end_of_training()
            status = "FINISHED"
        except Interrupted:
            status = "KILLED"
            raise
        finally:
            self.recorder.end(status)
        return TrainResult(self.run.files.final, self.step, self.resumed, False, self.history)

    def _stop_requested(self, interrupt: StopRequest) -> bool:
        if self.parallel is None:
            return bool(interrupt)
        # Every rank must stop at the same step: agree at read-back boundaries (one tiny all-reduce).
        if self.step % self.read_every:
            return False
        stop = self.parallel.any(bool(interrupt))
        if stop and not interrupt:
            interrupt.signum = signal.SIGTERM  # another rank was signalled
        return stop

    def _steps(self, interrupt: StopRequest, on_step) -> None:
        cfg = self.cfg
        steps = make_steps(self.trainer, self.sampler)
        window_start = time.perf_counter()
        bar = progress(
            total=self.target,
            initial=self.step,
            desc=self.run.name,
            unit="step",
            mininterval=1.0,
            dynamic_ncols=True,
            disable=not self.is_main,
        )
        with bar:
            while self.step < self.target:
                if self._stop_requested(interrupt):
                    self._read_back()
                    self.save()
                    raise Interrupted(
                        f"train[{self.run.name}]: stopped by {interrupt.name} at step {self.step}; "
                        "checkpoint saved: rerun the stage to resume",
                        interrupt.signum,
                    )
                losses = steps.step()
                self.step += 1
                self.log.record(self.step, losses)
                self.window_steps += 1
                bar.update(1)
                end_of_epoch = self.step % self.steps_per_epoch == 0
                checkpoint_due = self.step % cfg.checkpoint_every == 0 and self.step < self.target
                log_due = self.step % cfg.log_every == 0 or self.step == self.target
                if log_due or end_of_epoch or checkpoint_due or self.step % self.read_every == 0:
                    self._read_back()
                if log_due:
                    elapsed = time.perf_counter() - window_start
                    self._log_window(self.window_steps * cfg.batch_size / max(elapsed, 1e-9), bar)
                    window_start = time.perf_counter()
                if end_of_epoch:
                    self._end_of_epoch()
                if checkpoint_due:
                    self.save()
                if on_step is not None:
                    on_step(self.step, losses)
        timings = getattr(steps, "timings", None)
        if timings:
            self.say("fast path: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))

    def _read_back(self) -> None:
        """Fetch the unread steps' losses (NaN/inf check) into the log window."""
        for _step, values in self.log.read(self.read_every):
            for name, value in values.items():
                self.window[name] = self.window.get(name, 0.0) + value

    def _log_window(self, img_per_s: float, bar) -> None:
        row = window_row(self.window, self.window_steps, self.step, self.steps_per_epoch)
        self.history.append(row)
        self.window, self.window_steps = {}, 0
        means = {name: value for name, value in row.items() if name.startswith("loss")}
        shown = {k: means[k] for k in ("loss_G", "loss_D_X", "loss_D_Y") if k in means}
        bar.set_postfix(
            epoch=self.epoch, img_s=f"{img_per_s:.1f}", **{k: f"{v:.3f}" for k, v in shown.items()}
        )
        metrics = {f"train/{name}": value for name, value in means.items()}
        metrics["train/lr"] = float(self.trainer.optimizers["G"].param_groups[0]["lr"])
        metrics["train/img_per_s"] = img_per_s
        metrics["train/epoch"] = self.epoch
        self.recorder.metrics(metrics, step=self.step)

    def _end_of_epoch(self) -> None:
        if self.is_main:
            write_curves(self.run.curves, self.history)
        for scheduler in self.trainer.schedulers.values():
            scheduler.step()

        def grid() -> Any:
            pixels = self.trainer.sample_grid(*self.samples)
            return (pixels.permute(1, 2, 0).numpy() * 255).round().astype("uint8")

        # One image key for the grid, stepped: the UI pages through the epochs and lines up runs. The
        # grid is drawn only by a recorder that keeps images (it runs G and F, without drawing randomness).
        self.recorder.image("samples/grid", grid, step=self.step)

    def _end_of_training(self) -> None:
        if not self.is_main:
            return
        write_curves(self.run.curves, self.history)
        self.recorder.models(self.trainer.nets.named(), self.cfg.crop_size)
        self.say(f"finished {self.step} steps; checkpoint {self.run.files.final}")
