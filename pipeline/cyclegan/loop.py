"""Training one ablation variant: the reference's update order, resumable checkpoints, MLflow tracking.

One step (as the reference's `optimize_parameters`): G and F take one Adam step on the generator
objective with D_X and D_Y frozen, then D_X and D_Y take one Adam step on real images and pooled
fakes (`pipeline.cyclegan.losses` writes the objective out). The learning rate is constant for
`epochs_constant` epochs, then decays linearly towards 0 over `epochs_decay` epochs.

Everything random draws from seeded generators whose states are in the checkpoint (data order, crops
and flips, both pools), so a run killed at any point and rerun continues bit-identically on the same
device and torch build.

Two ways to run the same step (same functions, same losses, same random draws):

- the plain path (default; CPU, and the reference for checking): batches built on the CPU, losses
  read back after every step;
- the fast path (`train.fast: true`, meant for GPUs, see `pipeline.cyclegan.fast`): the domains decoded once
  into uint8 tensors on the device with crop and flip done there, the pools on the device, losses
  accumulated on the device and read back every `log_every` steps, fused Adam, and optionally
  channels_last, `torch.compile` of the networks and the whole step captured as one CUDA graph.

Launched by `torchrun` with several processes, one variant trains data-parallel
(`pipeline.cyclegan.distributed`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import to_flat_dict
from pipeline.core.device import resolve_device, seed_global_generators, seeded
from pipeline.core.images import to_model_range
from pipeline.core.machine import machine_facts
from pipeline.core.progress import progress
from pipeline.core.project import data_source
from pipeline.core.signals import Interrupted, StopRequest, stop_requests
from pipeline.core.urls import redact_url
from pipeline.cyclegan import distributed
from pipeline.cyclegan.checkpoint import CHECKPOINT_NAME, FORMAT, save_checkpoint
from pipeline.cyclegan.config import TrainConfig, target_steps
from pipeline.cyclegan.curves import window_row, write_curves
from pipeline.cyclegan.identity import ablation_key, data_fingerprint
from pipeline.cyclegan.losses import LossDict, LossSwitches
from pipeline.cyclegan.resume import config_record, resumable_checkpoint
from pipeline.cyclegan.steps import LossLog, make_steps
from pipeline.cyclegan.trainer import build_trainer
from pipeline.data.domains import UnpairedSampler, load_training_domains
from pipeline.orchestration import liveness, tracking

SAMPLE_IMAGES = 4  # images per domain in the per-epoch sample grid


@dataclasses.dataclass
class TrainResult:
    checkpoint: Path
    step: int
    mlflow_run_id: str | None
    resumed: bool  # continued from a checkpoint
    skipped: bool  # the checkpoint was already finished: nothing trained
    history: list[dict[str, float]]


def _say(variant: str, message: str) -> None:
    print(f"train[{variant}]: {message}", file=sys.stderr, flush=True)


def train_variant(
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    variant_name: str,
    switches: LossSwitches,
    cfg: TrainConfig,
    metrics_path: str | os.PathLike | None = None,
    on_step: Callable[[int, LossDict], None] | None = None,
    track: bool = True,
    ablation: Mapping[str, Any] | None = None,
    resume_dir: str | os.PathLike | None = None,
) -> TrainResult:
    """Train (or resume, or skip if finished) one variant; the checkpoint is `<out_dir>/checkpoint.pt`.

    The checkpoints written on the way (every `checkpoint_every` steps, and on SIGTERM/SIGINT) go to
    `<resume_dir>/checkpoint.pt` (default: the same file), and a run resumes from there; the finished
    one goes to `out_dir` and the resume file is then removed. A resume folder outside the DVC output
    lets the output be an ordinary one, which DVC's run cache can restore (a ``persist`` output
    never is).

    `metrics_path`: the loss curves' CSV (a row every `log_every` steps). `on_step(step, losses)` runs
    after every step, once that step's checkpoint (if due) is written; `losses` are the step's detached loss
    tensors (reading them synchronises with the device; on a captured step they are valid until the
    next step). `track=False` logs nothing to MLflow (a machine without a store). `ablation` names the
    launch this run belongs to (``variants``: name -> switches, ``seeds``, ``profile``), which picks its
    MLflow parent (default: this variant and seed alone). Launched by `torchrun`,
    trains data-parallel (`pipeline.cyclegan.distributed`): rank 0 alone tracks and writes files. Raises
    `Interrupted` on SIGINT/SIGTERM (after saving) and `PipelineError` on a NaN/inf loss.
    """
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    plots_path = Path(metrics_path) if metrics_path is not None else None
    checkpoint_path = out_dir / CHECKPOINT_NAME
    resume_path = Path(resume_dir) / CHECKPOINT_NAME if resume_dir is not None else checkpoint_path
    device = resolve_device(cfg.device, "train.device")
    parallel = distributed.from_environment(device, cfg.batch_size)
    try:
        if parallel is not None:
            device = parallel.device
        is_main = parallel is None or parallel.is_main
        data = data_fingerprint(split_dir)
        say = functools.partial(_say, f"{variant_name}-{cfg.seed}") if is_main else lambda _message: None
        state = None
        for candidate in dict.fromkeys((checkpoint_path, resume_path)):  # a finished one, else the resume
            state = resumable_checkpoint(candidate, variant_name, cfg, switches, data, say)
            if state is not None:
                break
        if state is not None and state["step"] >= target_steps(cfg, state["steps_per_epoch"]):
            say(f"already trained ({state['step']} steps, same settings): nothing to do")
            if is_main and not checkpoint_path.is_file():  # finished in the resume folder
                save_checkpoint(checkpoint_path, state)
            if is_main:
                write_curves(plots_path, state["history"])  # DVC removed it before rerunning the stage
            return TrainResult(
                checkpoint_path, state["step"], state["mlflow_run_id"], True, True, state["history"]
            )

        if track and is_main:
            tracking.check_store()  # an unreachable store fails now, in seconds, not after training
        if cfg.num_threads is not None:
            # Tiny CPU convolutions gain little from threads, and on a busy machine spinning OpenMP
            # workers can make a step 10x slower: the default profile pins one thread.
            torch.set_num_threads(cfg.num_threads)
        if parallel is not None and cfg.cuda_graphs and device.type == "cuda":
            say("cuda_graphs is off under DDP (the gradient all-reduce is not captured); compile applies")
        seed_global_generators(cfg.seed)  # a resumed run then restores the checkpoint's states
        domains = load_training_domains(split_dir, cfg.load_size, cfg.max_images)
        sampler = UnpairedSampler(domains, cfg.crop_size, cfg.batch_size, seeded(cfg.seed, "data"), cfg.flip)
        trainer = build_trainer(switches, cfg, device, parallel)
        loop = TrainingLoop(
            variant_name, cfg, switches, data, trainer, sampler, checkpoint_path, plots_path, domains, track
        )
        loop.resume_path = resume_path
        loop.ablation = dict(
            ablation or {"variants": {variant_name: dataclasses.asdict(switches)}, "seeds": [cfg.seed]}
        )
        if state is not None:
            loop.restore(state)
            say(f"resuming from step {loop.step} of {loop.target}")
        del state
        loop.open_run()
        return loop.run(on_step)
    finally:
        distributed.shutdown(parallel)


class TrainingLoop:
    """The bookkeeping around the steps: epochs, read-backs, logging, checkpoints, the MLflow run."""

    def __init__(
        self, variant, cfg, switches, data, trainer, sampler, checkpoint_path, plots_path, domains, track=True
    ):
        self.variant, self.cfg, self.switches, self.data = variant, cfg, switches, data
        self.trainer, self.sampler = trainer, sampler
        self.checkpoint_path, self.plots_path = checkpoint_path, plots_path
        self.resume_path = checkpoint_path  # where unfinished checkpoints go (train_variant sets it)
        self.parallel = trainer.parallel
        self.is_main = self.parallel is None or self.parallel.is_main
        self.track = track and self.is_main
        self.steps_per_epoch = sampler.steps_per_epoch
        self.target = target_steps(cfg, self.steps_per_epoch)
        # The plain path checks every step's losses at once; the fast path every log_every steps.
        self.read_every = cfg.log_every if cfg.fast else 1
        self.log = LossLog(self.read_every, trainer.device, self.parallel)
        self.step = 0
        self.history: list[dict[str, float]] = []  # one row per log window (the loss curves)
        self.window: dict[str, float] = {}  # loss sums of the window in progress...
        self.window_steps = 0  # ...over this many steps (saved: a resumed run logs the same rows)
        self.run_id: str | None = None
        self.logger: tracking.RunLogger | None = None
        self.ablation: dict[str, Any] = {}
        self.resumed = False
        # Fixed sample images for the per-epoch grid: centre crops of the first ids of each domain.
        offset = (cfg.load_size - cfg.crop_size) // 2
        window = (
            slice(None),
            slice(None),
            slice(offset, offset + cfg.crop_size),
            slice(offset, offset + cfg.crop_size),
        )
        self.samples = tuple(
            to_model_range(images[:SAMPLE_IMAGES][window]).to(trainer.device)
            for images in (domains.photos, domains.labels)
        )

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def restore(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"]["torch_cpu"])
        if self.trainer.device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step, self.history = state["step"], state["history"]
        self.window, self.window_steps = state["window"], state["window_steps"]
        self.run_id = state["mlflow_run_id"]
        self.resumed = True

    def state_dict(self, finished: bool) -> dict[str, Any]:
        cuda = self.trainer.device.type == "cuda"
        return {
            "format": FORMAT,
            "variant": self.variant,
            "config": config_record(self.cfg, self.switches),
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
            "mlflow_run_id": self.run_id,
        }

    def _say(self, message: str) -> None:
        _say(f"{self.variant}-{self.cfg.seed}", message)

    def save(self, finished: bool = False) -> None:
        if not self.is_main:
            return
        save_checkpoint(self.checkpoint_path if finished else self.resume_path, self.state_dict(finished))
        if finished and self.resume_path != self.checkpoint_path:
            self.resume_path.unlink(missing_ok=True)

    def open_run(self) -> None:
        """Reopen the checkpoint's MLflow run, or start a new one nested under the ablation's parent."""
        if not self.track:
            return
        try:  # runs a SIGKILLed stage left RUNNING cannot end themselves: this one ends them
            liveness.end_dead_runs(tracking.client(), self.cfg.experiment)
        except Exception as exc:  # a record, not the result: never a reason not to train
            self._say(f"could not end the MLflow runs of dead processes ({type(exc).__name__})")
        if self.run_id is not None and tracking.reopen_run(self.run_id):
            self.logger = tracking.RunLogger(self.run_id, self._say)
            return
        if self.run_id is not None:
            store = redact_url(tracking.tracking_uri())
            self._say(f"MLflow run {self.run_id} is gone from {store}: starting a new one")
        key = ablation_key(self.data, self.cfg, self.ablation["variants"], self.ablation["seeds"])
        parent = tracking.parent_run_id(self.cfg.experiment, key, f"ablation-{key[:8]}")
        params = to_flat_dict(self.cfg, "train.")
        params.update(to_flat_dict(self.switches, "variant."))
        params["variant.name"] = self.variant
        tags = {
            "cyclegan.variant": self.variant,
            "cyclegan.seed": str(self.cfg.seed),
            "cyclegan.protocol": str(self.data["protocol"]),
            "cyclegan.profile": str(self.ablation.get("profile", "default")),
            tracking.ABLATION_KEY_TAG: key,
            "cyclegan.data_version": str(self.data["data_version"]),
            "cyclegan.train_sha256": str(self.data["train_sha256"]),
            **{f"machine.{name}": value for name, value in machine_facts(self.trainer.device).items()},
        }
        name = f"{self.variant}-seed{self.cfg.seed}"
        self.run_id = tracking.start_run(self.cfg.experiment, name, parent, params, tags)
        self.logger = tracking.RunLogger(self.run_id, self._say)
        source = data_source(self.checkpoint_path.parent) or "unknown"
        self.logger.call("log_dataset", "cityscapes-split", self.data["data_version"], source)

    def run(self, on_step: Callable[[int, LossDict], None] | None) -> TrainResult:
        status = "FAILED"
        try:
            with stop_requests() as interrupt:
                self._train(interrupt, on_step)
            self.save(finished=True)
            self._end_of_training()
            status = "FINISHED"
        except Interrupted:
            status = "KILLED"
            raise
        finally:
            if self.logger is not None:
                self.logger.call("end_run", status)
                self.logger.flush()
        return TrainResult(self.checkpoint_path, self.step, self.run_id, self.resumed, False, self.history)

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

    def _train(self, interrupt: StopRequest, on_step) -> None:
        cfg = self.cfg
        steps = make_steps(self.trainer, self.sampler)
        window_start = time.perf_counter()
        bar = progress(
            total=self.target,
            initial=self.step,
            desc=self.variant,
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
                        f"train[{self.variant}-{self.cfg.seed}]: stopped by {interrupt.name} at step "
                        f"{self.step}; checkpoint saved: rerun the stage to resume",
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
            self._say("fast path: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))

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
        if not self.track:
            return
        metrics = {f"train/{name}": value for name, value in means.items()}
        metrics["train/lr"] = float(self.trainer.optimizers["G"].param_groups[0]["lr"])
        metrics["train/img_per_s"] = img_per_s
        metrics["train/epoch"] = self.epoch
        self.logger.call("log_metrics", metrics, step=self.step)

    def _end_of_epoch(self) -> None:
        if self.is_main:
            write_curves(self.plots_path, self.history)
        for scheduler in self.trainer.schedulers.values():
            scheduler.step()
        if self.track:
            # One image key for the grid, stepped: the UI pages through the epochs and lines up runs.
            grid = self.trainer.sample_grid(*self.samples)
            pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            self.logger.call("log_image", pixels, key="samples/grid", step=self.step)

    def _end_of_training(self) -> None:
        if not self.is_main:
            return
        write_curves(self.plots_path, self.history)
        if self.track:
            # G and F as MLflow models (loadable with mlflow.pytorch.load_model); the training
            # checkpoint itself stays in DVC, which already stores and versions it.
            self.logger.call("log_generators", self.trainer.nets, self.cfg.crop_size)
        self._say(f"finished {self.step} steps; checkpoint {self.checkpoint_path}")
