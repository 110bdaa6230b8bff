"""Training one ablation variant: the reference's update order, resumable checkpoints, MLflow tracking.

One step (as the reference's `optimize_parameters`): G and F take one Adam step on the generator
objective with D_X and D_Y frozen, then D_X and D_Y take one Adam step on real images and pooled
fakes (`pipeline.losses` writes the objective out). The learning rate is constant for
`epochs_constant` epochs, then decays linearly towards 0 over `epochs_decay` epochs.

Everything random draws from seeded generators whose states are in the checkpoint (data order, crops
and flips, both pools), so a run killed at any point and rerun continues bit-identically on the same
device and torch build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from pipeline import tracking
from pipeline.checkpoint import CHECKPOINT_NAME, FORMAT, load_checkpoint, save_checkpoint
from pipeline.config import to_flat_dict
from pipeline.data import LABEL_SUBSET, PHOTO_SUBSET, UnpairedSampler, load_training_domains, to_model_range
from pipeline.errors import PipelineError
from pipeline.losses import ImagePool, LossDict, LossSwitches, discriminator_losses, generator_losses
from pipeline.models import CycleGANNets, DiscriminatorConfig, GeneratorConfig, build_nets
from pipeline.split import read_manifest

# Keys that say how a run is carried out, not what it computes: changing them does not invalidate a
# checkpoint (max_steps only moves the stopping point).
OPERATIONAL_KEYS = frozenset(
    {"device", "num_threads", "checkpoint_every", "log_every", "max_steps", "experiment"}
)
SAMPLE_IMAGES = 4  # images per domain in the per-epoch sample grid


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Params section `train`. The defaults here are the paper's Cityscapes settings; params.yaml's
    default profile shrinks them to fit a CPU."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = None  # CPU threads for torch (None = torch's default)
    bf16: bool = False  # bf16 autocast on CUDA (the paper trained in fp32); ignored on CPU
    load_size: int = 143  # images are resized to this, then randomly cropped
    crop_size: int = 128
    flip: bool = True  # random horizontal flip
    max_images: int | None = None  # images per domain (None = all); the first N ids
    batch_size: int = 1
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 6
    n_layers_D: int = 3
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    epochs_constant: int = 100
    epochs_decay: int = 100
    lambda_cycle: float = 10.0
    pool_size: int = 50
    checkpoint_every: int = 500  # steps
    log_every: int = 10  # steps
    max_steps: int | None = None  # stop early (tests, smoke runs); the lr schedule is unchanged
    experiment: str = "cyclegan-ablation"

    def __post_init__(self) -> None:
        positive = (
            "load_size",
            "crop_size",
            "batch_size",
            "lr",
            "lambda_cycle",
            "checkpoint_every",
            "log_every",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.crop_size > self.load_size:
            raise ValueError(f"crop_size {self.crop_size} exceeds load_size {self.load_size}")
        if self.crop_size < 3 * 2**self.n_layers_D:
            raise ValueError(
                f"crop_size must be >= {3 * 2**self.n_layers_D} for n_layers_D {self.n_layers_D}: the "
                "PatchGAN's last instance norms need maps of at least 2x2"
            )
        if self.crop_size % 4:
            raise ValueError(f"crop_size must be a multiple of 4 (two stride-2 stages), got {self.crop_size}")
        if self.epochs_constant < 0 or self.epochs_decay < 0 or self.epochs_constant + self.epochs_decay == 0:
            raise ValueError("epochs_constant and epochs_decay must be >= 0 and not both 0")
        for name in ("max_images", "max_steps", "num_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {getattr(self, name)}")
        if self.pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {self.pool_size}")

    @property
    def epochs(self) -> int:
        return self.epochs_constant + self.epochs_decay

    def identity(self) -> dict[str, Any]:
        """The keys that decide what a run computes (everything but OPERATIONAL_KEYS)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in OPERATIONAL_KEYS}


@dataclasses.dataclass
class TrainResult:
    checkpoint: Path
    step: int
    mlflow_run_id: str | None
    resumed: bool  # continued from a checkpoint
    skipped: bool  # the checkpoint was already finished: nothing trained
    history: list[dict[str, float]]


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved. `exit_code` is 128 + signal number."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint saved")


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of `cfg.lr` during 0-based `epoch`: 1 for epochs_constant epochs, then linear to 0.

    The reference's `lambda_rule` with its scheduler stepped after each epoch: the last decay epoch runs
    at 1/(epochs_decay + 1) and the rate would reach 0 just after it.
    """
    return 1.0 - max(0, epoch + 1 - cfg.epochs_constant) / (cfg.epochs_decay + 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            "train.device is cuda but no CUDA device is visible: set train.device: auto or cpu"
        )
    return torch.device(name)


def derive_seed(seed: int, purpose: str) -> int:
    """Independent 63-bit seed per purpose (init, data, pools) from the one configured seed."""
    digest = hashlib.sha256(f"{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def seeded(seed: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, purpose))


def _set_requires_grad(nets: list[torch.nn.Module], flag: bool) -> None:
    for net in nets:
        for param in net.parameters():
            param.requires_grad_(flag)


@dataclasses.dataclass
class Trainer:
    """The mutable training state: networks, optimisers, schedulers, pools."""

    nets: CycleGANNets
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    pools: dict[str, ImagePool]  # "X": fake photos for D_X, "Y": fake label maps for D_Y
    switches: LossSwitches
    cfg: TrainConfig
    device: torch.device

    def autocast(self) -> contextlib.AbstractContextManager:
        enabled = self.cfg.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> LossDict:
        """One training iteration; returns the detached losses (generator and, if on, discriminator)."""
        discriminators = self.nets.discriminators
        _set_requires_grad(discriminators, False)  # D is fixed while G and F step
        self.optimizers["G"].zero_grad(set_to_none=True)
        with self.autocast():
            losses, fakes = generator_losses(self.nets, real_A, real_B, self.switches, self.cfg.lambda_cycle)
        losses["loss_G"].backward()
        self.optimizers["G"].step()
        if self.switches.adversarial:
            _set_requires_grad(discriminators, True)
            self.optimizers["D"].zero_grad(set_to_none=True)
            pooled_fake_A = self.pools["X"].query(fakes["fake_A"])
            pooled_fake_B = self.pools["Y"].query(fakes["fake_B"])
            with self.autocast():
                d_losses = discriminator_losses(self.nets, real_A, real_B, pooled_fake_A, pooled_fake_B)
            (d_losses["loss_D_X"] + d_losses["loss_D_Y"]).backward()
            self.optimizers["D"].step()
            losses.update(d_losses)
        return {name: value.detach() for name, value in losses.items()}

    @torch.no_grad()
    def sample_grid(self, real_A: torch.Tensor, real_B: torch.Tensor) -> torch.Tensor:
        """Rows x, G(x), F(G(x)) and y, F(y), G(F(y)) per sample (those the variant computes), in [0, 1]."""
        import torchvision

        with self.autocast():
            _, fakes = generator_losses(self.nets, real_A, real_B, self.switches, self.cfg.lambda_cycle)
        row_A = [real_A] + [fakes[k] for k in ("fake_B", "rec_A") if k in fakes]
        row_B = [real_B] + [fakes[k] for k in ("fake_A", "rec_B") if k in fakes]
        columns = max(len(row_A), len(row_B))
        tiles = []
        for index in range(real_A.shape[0]):
            for row in (row_A, row_B):
                images = [image[index].float() for image in row]
                images += [torch.full_like(images[0], -1.0)] * (columns - len(images))  # black filler
                tiles += images
        grid = torchvision.utils.make_grid(torch.stack(tiles), nrow=columns, padding=2, pad_value=1.0)
        return ((grid + 1) / 2).clamp(0, 1).cpu()

    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": {name: net.state_dict() for name, net in self.nets.named().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in self.schedulers.items()},
            "pools": {name: pool.state_dict() for name, pool in self.pools.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, net in self.nets.named().items():
            net.load_state_dict(state["nets"][name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        for name, pool in self.pools.items():
            pool.load_state_dict(state["pools"][name], self.device)


def build_trainer(switches: LossSwitches, cfg: TrainConfig, device: torch.device) -> Trainer:
    """Networks (seeded init), Adam optimisers, LambdaLR schedulers and pools for one variant."""
    nets = build_nets(
        GeneratorConfig(ngf=cfg.ngf, n_blocks=cfg.n_blocks),
        DiscriminatorConfig(ndf=cfg.ndf, n_layers=cfg.n_layers_D),
        with_discriminators=switches.adversarial,
        generator=seeded(cfg.seed, "init"),
    )
    for net in nets.named().values():
        net.to(device).train()
    schedule = functools.partial(lr_factor, cfg=cfg)
    groups = {"G": itertools.chain(nets.G.parameters(), nets.F.parameters())}
    pools = {}
    if switches.adversarial:
        groups["D"] = itertools.chain(nets.D_X.parameters(), nets.D_Y.parameters())
        pools = {
            "X": ImagePool(cfg.pool_size, seeded(cfg.seed, "pool_X")),
            "Y": ImagePool(cfg.pool_size, seeded(cfg.seed, "pool_Y")),
        }
    optimizers = {
        name: torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        for name, params in groups.items()
    }
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for name, opt in optimizers.items()}
    return Trainer(nets, optimizers, schedulers, pools, switches, cfg, device)


def check_finite(losses: LossDict, step: int) -> dict[str, float]:
    """Losses as floats (one host sync); a NaN or inf stops the run naming the step and the term."""
    values = dict(zip(losses, torch.stack([v.float() for v in losses.values()]).tolist(), strict=True))
    for name, value in values.items():
        if not math.isfinite(value):
            raise PipelineError(
                f"{name} is {value} at step {step}: training diverged; lower train.lr or check the data, "
                "then delete the checkpoint and rerun"
            )
    return values


def data_fingerprint(split_dir: Path) -> dict[str, str | None]:
    """What identifies the training data: `train_sha256`, a hash of the training domains' manifest rows
    and file bytes (about a second for the full split; val and evaluator files do not count), and
    `data_version`, DVC's md5 of the whole split folder (a tag for MLflow, None outside a DVC repo)."""
    digest = hashlib.sha256()
    for subset in (PHOTO_SUBSET, LABEL_SUBSET):
        rows = read_manifest(split_dir, subset=subset).sort_values("image_id", kind="stable")
        for image_id, relative in zip(rows["image_id"], rows["path"], strict=True):
            digest.update(f"{subset}/{image_id}/{relative}\n".encode())
            try:
                digest.update((split_dir / relative).read_bytes())
            except OSError as exc:
                raise PipelineError(
                    f"cannot read {split_dir / relative} ({exc}): rerun the split stage"
                ) from None
    return {"train_sha256": digest.hexdigest(), "data_version": tracking.dvc_data_version(split_dir)}


def ablation_key(data: dict[str, str | None], cfg: TrainConfig) -> str:
    """Same data + same train section (variant aside) = same ablation = one MLflow parent run."""
    payload = json.dumps({"data": data["train_sha256"], "train": cfg.identity()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _config_record(cfg: TrainConfig, switches: LossSwitches) -> dict[str, Any]:
    return {"train": dataclasses.asdict(cfg), "switches": dataclasses.asdict(switches)}


def config_differences(
    state: dict[str, Any], variant: str, cfg: TrainConfig, switches: LossSwitches, data: dict[str, str | None]
) -> list[str]:
    """Why a checkpoint cannot be resumed under the current params ([] if it can)."""
    stored = {f"train.{k}": v for k, v in state["config"]["train"].items() if k not in OPERATIONAL_KEYS}
    stored.update({f"variant.{k}": v for k, v in state["config"]["switches"].items()})
    stored["variant"] = state["variant"]
    stored["data.train_sha256"] = state["data"]["train_sha256"]
    current = {f"train.{k}": v for k, v in cfg.identity().items()}
    current.update({f"variant.{k}": v for k, v in dataclasses.asdict(switches).items()})
    current["variant"] = variant
    current["data.train_sha256"] = data["train_sha256"]
    return [
        f"{key}: checkpoint {stored.get(key, '<absent>')!r}, now {current.get(key, '<absent>')!r}"
        for key in sorted(set(stored) | set(current))
        if stored.get(key, "<absent>") != current.get(key, "<absent>")
    ]


def _target_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    total = cfg.epochs * steps_per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps is not None else total


def write_plots(path: Path | None, history: list[dict[str, float]]) -> None:
    """Per-epoch mean losses as CSV (columns epoch, step, losses), atomically, for `dvc plots`."""
    if path is None:
        return
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)
    columns = ["epoch", "step", *sorted({k for row in history for k in row} - {"epoch", "step"})]
    pd.DataFrame(history, columns=columns).to_csv(tmp, index=False)
    os.replace(tmp, path)


def epoch_row(sums: dict[str, float], steps: int, step: int, steps_per_epoch: int) -> dict[str, float]:
    """One plots row: the mean of each loss over the `steps` steps of the epoch that ends at `step`."""
    row = {"epoch": (step - 1) // steps_per_epoch, "step": step}
    row.update({name: total / steps for name, total in sums.items()})
    return row


def plot_rows(
    history: list[dict[str, float]], sums: dict[str, float], steps: int, step: int, steps_per_epoch: int
) -> list[dict[str, float]]:
    """The finished epochs' rows plus the epoch in progress, if any (a run stopped by max_steps)."""
    return history + ([epoch_row(sums, steps, step, steps_per_epoch)] if steps else [])


@contextlib.contextmanager
def _signals_saved_as_flag() -> Iterator[dict[str, int | None]]:
    """SIGINT/SIGTERM set a flag the loop checks between steps (a half-done step is never saved).

    A second signal gets the default behaviour. Only the main thread can install handlers; elsewhere
    (e.g. a Prefect worker thread) signals keep their defaults.
    """
    flag: dict[str, int | None] = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        flag["signum"] = signum
        signal.signal(signum, previous[signum])

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _say(variant: str, message: str) -> None:
    print(f"train[{variant}]: {message}", file=sys.stderr, flush=True)


def _resumable_checkpoint(
    path: Path, variant: str, cfg: TrainConfig, switches: LossSwitches, data: dict[str, str | None]
) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path)
    except PipelineError as exc:
        _say(variant, f"starting over: {exc}")
        return None
    differences = config_differences(state, variant, cfg, switches, data)
    if differences:
        _say(
            variant,
            "starting over: the checkpoint was trained with other settings:\n  " + "\n  ".join(differences),
        )
        return None
    return state


def train_variant(
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    variant_name: str,
    switches: LossSwitches,
    cfg: TrainConfig,
    metrics_path: str | os.PathLike | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train (or resume, or skip if finished) one variant; the checkpoint is `<out_dir>/checkpoint.pt`.

    `metrics_path`: the per-epoch loss CSV for `dvc plots`. `on_step(step, losses)` runs after every
    step, once that step's checkpoint (if due) is written. Raises `TrainingInterrupted` on SIGINT/SIGTERM
    (after saving) and `PipelineError` on a NaN/inf loss.
    """
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    plots_path = Path(metrics_path) if metrics_path is not None else None
    checkpoint_path = out_dir / CHECKPOINT_NAME
    data = data_fingerprint(split_dir)
    state = _resumable_checkpoint(checkpoint_path, variant_name, cfg, switches, data)
    if state is not None and state["step"] >= _target_steps(cfg, state["steps_per_epoch"]):
        _say(variant_name, f"already trained ({state['step']} steps, same settings): nothing to do")
        rows = plot_rows(
            state["history"],
            state["epoch_sums"],
            state["epoch_steps"],
            state["step"],
            state["steps_per_epoch"],
        )
        write_plots(plots_path, rows)  # DVC removed it before rerunning the stage
        return TrainResult(checkpoint_path, state["step"], state["mlflow_run_id"], True, True, rows)

    device = resolve_device(cfg.device)
    if cfg.num_threads is not None:
        # Tiny CPU convolutions gain little from threads, and on a busy machine spinning OpenMP
        # workers can make a step 10x slower: the default profile pins one thread.
        torch.set_num_threads(cfg.num_threads)
    domains = load_training_domains(split_dir, cfg.load_size, cfg.max_images)
    sampler = UnpairedSampler(domains, cfg.crop_size, cfg.batch_size, seeded(cfg.seed, "data"), cfg.flip)
    trainer = build_trainer(switches, cfg, device)
    loop = _Loop(variant_name, cfg, switches, data, trainer, sampler, checkpoint_path, plots_path, domains)
    if state is not None:
        loop.restore(state)
        _say(variant_name, f"resuming from step {loop.step} of {loop.target}")
    loop.open_run()
    return loop.run(on_step)


class _Loop:
    """The bookkeeping around `Trainer.step`: epochs, logging, checkpoints, the MLflow run."""

    def __init__(self, variant, cfg, switches, data, trainer, sampler, checkpoint_path, plots_path, domains):
        self.variant, self.cfg, self.switches, self.data = variant, cfg, switches, data
        self.trainer, self.sampler = trainer, sampler
        self.checkpoint_path, self.plots_path = checkpoint_path, plots_path
        self.steps_per_epoch = sampler.steps_per_epoch
        self.target = _target_steps(cfg, self.steps_per_epoch)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.epoch_sums: dict[str, float] = {}
        self.epoch_steps = 0
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
            "config": _config_record(self.cfg, self.switches),
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
        save_checkpoint(self.checkpoint_path, self.state_dict(finished))

    def open_run(self) -> None:
        """Reopen the checkpoint's MLflow run, or start a new one nested under the ablation's parent."""
        if self.run_id is not None and tracking.reopen_run(self.run_id):
            return
        if self.run_id is not None:
            _say(
                self.variant,
                f"MLflow run {self.run_id} is gone from {tracking.tracking_uri()}: starting a new one",
            )
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

    def run(self, on_step: Callable[[int, dict[str, float]], None] | None) -> TrainResult:
        status = "FAILED"
        try:
            with _signals_saved_as_flag() as interrupt:
                self._train(interrupt, on_step)
            self.save(finished=True)
            self._end_of_training()
            status = "FINISHED"
        except TrainingInterrupted:
            status = "KILLED"
            raise
        finally:
            tracking.end_run(self.run_id, status)
        return TrainResult(self.checkpoint_path, self.step, self.run_id, self.resumed, False, self._rows())

    def _train(self, interrupt: dict[str, int | None], on_step) -> None:
        cfg, trainer = self.cfg, self.trainer
        window: dict[str, float] = {}
        window_steps, window_start = 0, time.perf_counter()
        bar = tqdm(
            total=self.target,
            initial=self.step,
            desc=self.variant,
            unit="step",
            mininterval=1.0,
            dynamic_ncols=True,
        )
        with bar:
            while self.step < self.target:
                if interrupt["signum"] is not None:
                    self.save()
                    raise TrainingInterrupted(interrupt["signum"], self.step)
                real_A, real_B = (
                    batch.to(trainer.device, non_blocking=True) for batch in self.sampler.next_batch()
                )
                losses = check_finite(trainer.step(real_A, real_B), self.step + 1)
                self.step += 1
                for name, value in losses.items():
                    window[name] = window.get(name, 0.0) + value
                    self.epoch_sums[name] = self.epoch_sums.get(name, 0.0) + value
                window_steps += 1
                self.epoch_steps += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.target:
                    elapsed = time.perf_counter() - window_start
                    img_per_s = window_steps * cfg.batch_size / max(elapsed, 1e-9)
                    self._log_window(window, window_steps, img_per_s, bar)
                    window, window_steps, window_start = {}, 0, time.perf_counter()
                if self.step % self.steps_per_epoch == 0:
                    self._end_of_epoch()
                if self.step % cfg.checkpoint_every == 0 and self.step < self.target:
                    self.save()
                if on_step is not None:
                    on_step(self.step, losses)

    def _log_window(self, window: dict[str, float], steps: int, img_per_s: float, bar: tqdm) -> None:
        means = {name: total / steps for name, total in window.items()}
        metrics = {f"train/{name}": value for name, value in means.items()}
        metrics["train/lr"] = self.trainer.optimizers["G"].param_groups[0]["lr"]
        metrics["train/img_per_s"] = img_per_s
        metrics["train/epoch"] = self.epoch
        tracking.log_metrics(self.run_id, metrics, step=self.step)
        shown = {k: means[k] for k in ("loss_G", "loss_D_X", "loss_D_Y") if k in means}
        bar.set_postfix(
            epoch=self.epoch, img_s=f"{img_per_s:.1f}", **{k: f"{v:.3f}" for k, v in shown.items()}
        )

    def _rows(self) -> list[dict[str, float]]:
        return plot_rows(self.history, self.epoch_sums, self.epoch_steps, self.step, self.steps_per_epoch)

    def _end_of_epoch(self) -> None:
        self.history.append(epoch_row(self.epoch_sums, self.epoch_steps, self.step, self.steps_per_epoch))
        self.epoch_sums, self.epoch_steps = {}, 0
        write_plots(self.plots_path, self.history)
        for scheduler in self.trainer.schedulers.values():
            scheduler.step()
        grid = self.trainer.sample_grid(*self.samples)
        self._log_image(grid, f"samples/epoch_{self.epoch:03d}.png")

    def _log_image(self, grid: torch.Tensor, artifact_file: str) -> None:
        import torchvision

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(artifact_file).name
            torchvision.utils.save_image(grid, local)
            tracking.log_artifacts(self.run_id, local, str(Path(artifact_file).parent))

    def _end_of_training(self) -> None:
        write_plots(self.plots_path, self._rows())  # with the partial epoch if max_steps stopped mid-epoch
        tracking.log_artifacts(self.run_id, self.checkpoint_path, "checkpoint")
        _say(self.variant, f"finished {self.step} steps; checkpoint {self.checkpoint_path}")
