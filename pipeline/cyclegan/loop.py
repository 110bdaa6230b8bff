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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import to_flat_dict
from pipeline.core.device import resolve_device, seed_global_generators, seeded
from pipeline.core.images import to_model_range
from pipeline.core.progress import progress
from pipeline.core.signals import Interrupted, StopRequest, stop_requests
from pipeline.core.urls import redact_url
from pipeline.cyclegan import distributed
from pipeline.cyclegan.checkpoint import CHECKPOINT_NAME, FORMAT, save_checkpoint
from pipeline.cyclegan.config import TrainConfig, target_steps
from pipeline.cyclegan.curves import epoch_row, plot_rows, write_plots
from pipeline.cyclegan.losses import LossDict, LossSwitches
from pipeline.cyclegan.resume import ablation_key, config_record, data_fingerprint, resumable_checkpoint
from pipeline.cyclegan.steps import LossLog, make_steps
from pipeline.cyclegan.trainer import build_trainer
from pipeline.data.domains import UnpairedSampler, load_training_domains
from pipeline.orchestration import tracking

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
) -> TrainResult:
    """Train (or resume, or skip if finished) one variant; the checkpoint is `<out_dir>/checkpoint.pt`.

    `metrics_path`: the per-epoch loss CSV for `dvc plots`. `on_step(step, losses)` runs after every
    step, once that step's checkpoint (if due) is written; `losses` are the step's detached loss
    tensors (reading them synchronises with the device; on a captured step they are valid until the
    next step). `track=False` logs nothing to MLflow (a machine without a store). Launched by `torchrun`,
    trains data-parallel (`pipeline.cyclegan.distributed`): rank 0 alone tracks and writes files. Raises
    `Interrupted` on SIGINT/SIGTERM (after saving) and `PipelineError` on a NaN/inf loss.
    """
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    plots_path = Path(metrics_path) if metrics_path is not None else None
    checkpoint_path = out_dir / CHECKPOINT_NAME
    device = resolve_device(cfg.device, "train.device")
    parallel = distributed.from_environment(device, cfg.batch_size)
    try:
        if parallel is not None:
            device = parallel.device
        is_main = parallel is None or parallel.is_main
        data = data_fingerprint(split_dir)
        say = functools.partial(_say, variant_name) if is_main else lambda _message: None
        state = resumable_checkpoint(checkpoint_path, variant_name, cfg, switches, data, say)
        if state is not None and state["step"] >= target_steps(cfg, state["steps_per_epoch"]):
            say(f"already trained ({state['step']} steps, same settings): nothing to do")
            rows = plot_rows(
                state["history"],
                state["epoch_sums"],
                state["epoch_steps"],
                state["step"],
                state["steps_per_epoch"],
            )
            if is_main:
                write_plots(plots_path, rows)  # DVC removed it before rerunning the stage
            return TrainResult(checkpoint_path, state["step"], state["mlflow_run_id"], True, True, rows)

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
        self.parallel = trainer.parallel
        self.is_main = self.parallel is None or self.parallel.is_main
        self.track = track and self.is_main
        self.steps_per_epoch = sampler.steps_per_epoch
        self.target = target_steps(cfg, self.steps_per_epoch)
        # The plain path checks every step's losses at once; the fast path every log_every steps.
        self.read_every = cfg.log_every if cfg.fast else 1
        self.log = LossLog(self.read_every, trainer.device, self.parallel)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.epoch_sums: dict[str, float] = {}
        self.epoch_steps = 0
        self.window: dict[str, float] = {}
        self.run_id: str | None = None
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
        self.epoch_sums, self.epoch_steps = state["epoch_sums"], state["epoch_steps"]
        self.run_id = state["mlflow_run_id"]
        self.resumed = True

    def state_dict(self, finished: bool) -> dict[str, Any]:
        cuda = self.trainer.device.type == "cuda"
        return {
            "format": FORMAT,
            "variant": self.variant,
            "config": config_record(self.cfg, self.switches),
            "data": dict(self.data),
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
            "epoch_sums": self.epoch_sums,
            "epoch_steps": self.epoch_steps,
            "mlflow_run_id": self.run_id,
        }

    def save(self, finished: bool = False) -> None:
        if self.is_main:
            save_checkpoint(self.checkpoint_path, self.state_dict(finished))

    def open_run(self) -> None:
        """Reopen the checkpoint's MLflow run, or start a new one nested under the ablation's parent."""
        if not self.track:
            return
        if self.run_id is not None and tracking.reopen_run(self.run_id):
            return
        if self.run_id is not None:
            store = redact_url(tracking.tracking_uri())
            _say(self.variant, f"MLflow run {self.run_id} is gone from {store}: starting a new one")
        parent = tracking.parent_run_id(self.cfg.experiment, ablation_key(self.data, self.cfg))
        params = to_flat_dict(self.cfg, "train.")
        params.update(to_flat_dict(self.switches, "variant."))
        params["variant.name"] = self.variant
        tags = {
            "data_version": str(self.data["data_version"]),
            "cyclegan.variant": self.variant,
            "cyclegan.train_sha256": str(self.data["train_sha256"]),
        }
        self.run_id = tracking.start_run(self.cfg.experiment, self.variant, parent, params, tags)

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
            if self.track and self.run_id is not None:
                tracking.end_run(self.run_id, status)
        return TrainResult(self.checkpoint_path, self.step, self.run_id, self.resumed, False, self._rows())

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
        window_steps, window_start = 0, time.perf_counter()
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
                        f"train[{self.variant}]: stopped by {interrupt.name} at step {self.step}; checkpoint "
                        "saved: rerun the stage to resume",
                        interrupt.signum,
                    )
                losses = steps.step()
                self.step += 1
                self.log.record(self.step, losses)
                window_steps += 1
                self.epoch_steps += 1
                bar.update(1)
                end_of_epoch = self.step % self.steps_per_epoch == 0
                checkpoint_due = self.step % cfg.checkpoint_every == 0 and self.step < self.target
                log_due = self.step % cfg.log_every == 0 or self.step == self.target
                if log_due or end_of_epoch or checkpoint_due or self.step % self.read_every == 0:
                    self._read_back()
                if log_due:
                    elapsed = time.perf_counter() - window_start
                    img_per_s = window_steps * cfg.batch_size / max(elapsed, 1e-9)
                    self._log_window(window_steps, img_per_s, bar)
                    window_steps, window_start = 0, time.perf_counter()
                if end_of_epoch:
                    self._end_of_epoch()
                if checkpoint_due:
                    self.save()
                if on_step is not None:
                    on_step(self.step, losses)
        timings = getattr(steps, "timings", None)
        if timings:
            _say(self.variant, "fast path: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))

    def _read_back(self) -> None:
        """Fetch the unread steps' losses (NaN/inf check) into the log window and the epoch sums."""
        for _step, values in self.log.read(self.read_every):
            for name, value in values.items():
                self.window[name] = self.window.get(name, 0.0) + value
                self.epoch_sums[name] = self.epoch_sums.get(name, 0.0) + value

    def _log_window(self, steps: int, img_per_s: float, bar) -> None:
        means = {name: total / steps for name, total in self.window.items()}
        self.window = {}
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
        tracking.log_metrics(self.run_id, metrics, step=self.step)

    def _rows(self) -> list[dict[str, float]]:
        return plot_rows(self.history, self.epoch_sums, self.epoch_steps, self.step, self.steps_per_epoch)

    def _end_of_epoch(self) -> None:
        self.history.append(epoch_row(self.epoch_sums, self.epoch_steps, self.step, self.steps_per_epoch))
        self.epoch_sums, self.epoch_steps = {}, 0
        if self.is_main:
            write_plots(self.plots_path, self.history)
        for scheduler in self.trainer.schedulers.values():
            scheduler.step()
        if self.track:
            grid = self.trainer.sample_grid(*self.samples)
            self._log_image(grid, f"samples/epoch_{self.epoch:03d}.png")

    def _log_image(self, grid: torch.Tensor, artifact_file: str) -> None:
        import torchvision

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(artifact_file).name
            torchvision.utils.save_image(grid, local)
            tracking.log_artifacts(self.run_id, local, str(Path(artifact_file).parent))

    def _end_of_training(self) -> None:
        if not self.is_main:
            return
        write_plots(self.plots_path, self._rows())  # with the partial epoch if max_steps stopped mid-epoch
        if self.track:
            tracking.log_artifacts(self.run_id, self.checkpoint_path, "checkpoint")
        _say(self.variant, f"finished {self.step} steps; checkpoint {self.checkpoint_path}")
