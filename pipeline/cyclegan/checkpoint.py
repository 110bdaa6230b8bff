"""One checkpoint dict per (variant, seed), written atomically, loaded with `torch.load(weights_only=True)`.

Layout of the dict (`pipeline.cyclegan.loop` writes it; everything is a tensor or a plain container, which is
what `weights_only=True` accepts):

    format          2
    variant         variant name, e.g. "cyclegan"
    config          {"train": TrainConfig as a dict without its OUTPUT_NEUTRAL_KEYS, "switches": LossSwitches}
    fingerprint     what decides the training (`pipeline.cyclegan.loop.run_fingerprint`): a checkpoint
                    is continued only under it
    data            {"train_sha256": hash of the training files, "protocol": the split's protocol}
    nets            {"G": state_dict, "F": ..., "D_X": ..., "D_Y": ...}  (no D_* without adversarial term)
    optimizers      {"G": Adam state (G and F), "D": Adam state (D_X and D_Y)}
    schedulers      {"G": LambdaLR state, "D": ...}
    pools           {"X": ImagePool state, "Y": ...}
    sampler         UnpairedSampler state (generator, permutations, position)
    rng             {"torch_cpu": ..., "cuda": [...]}  global states, seeded from the config at the start
                    (`seed_global_generators`): only torch's default layer init draws from them
    step, epoch     completed steps and the epoch the next step belongs to
    finished        True once the schedule (or max_steps) is done
    history         the loss-curve rows (one every log_every steps)
    window, window_steps      running sums of the log window in progress
    machine         the facts of the machine the weights were computed on (`pipeline.core.machine`)
    recorder        unfinished checkpoints only: what the run's recorder needs to continue its record
                    (the MLflow run id); never in the finished one, which is the stage's output and
                    so must not depend on how the run was recorded
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.core.checkpoints import CHECKPOINT_NAME
from pipeline.core.errors import PipelineError
from pipeline.cyclegan.models import GeneratorConfig, ResnetGenerator
from pipeline.data.dataset import CITYSCAPES, directions_of

__all__ = ["CHECKPOINT_NAME", "FORMAT", "load_checkpoint", "load_generators", "read_checkpoint"]
FORMAT = 2


def training_digest(state: dict[str, Any]) -> str:
    """A short hash of everything a checkpoint says about how its weights were trained (variant,
    config, data, steps): the same for the same training, whoever recorded it. The recording layer
    tags the run's MLflow run with it, and finds that run again from a metrics file that carries it."""
    record = {
        "variant": state["variant"],
        "config": state["config"],
        "data": state["data"]["train_sha256"],
        "step": state["step"],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, None when there is none (`CheckpointFiles.load_resumable`'s reader)."""
    return load_checkpoint(path) if path.is_file() else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict (tensors and plain containers only: `weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"checkpoint {path} not found: run the train stage first (`dvc repro train`)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated or foreign file: torch raises a zoo of types
        raise PipelineError(f"cannot load checkpoint {path} ({exc}): delete it and rerun training") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PipelineError(f"{path} is not a format-{FORMAT} training checkpoint: delete it and retrain")
    return state


@dataclasses.dataclass
class LoadedGenerators:
    """The two trained generators of one variant, in eval mode on the requested device."""

    G: ResnetGenerator  # photo -> label map
    F: ResnetGenerator  # label map -> photo
    config: dict[str, Any]  # {"train": {...}, "switches": {...}}
    variant: str
    step: int
    domains: dict[str, str]  # {"A": ..., "B": ...}: what the run was trained on

    @property
    def directions(self) -> tuple[str, str]:
        """The directions of F and G, named by the domains the run was trained on (`directions_of`)."""
        return directions_of(self.domains)

    def generator(self, direction: str) -> ResnetGenerator:
        """The network that translates `direction`: a direction's name (``label2photo`` -> F,
        ``photo2label`` -> G for Cityscapes; ``zebra2horse`` -> F for horse2zebra), or ``F`` or ``G``."""
        names = {self.directions[0]: "F", self.directions[1]: "G", "F": "F", "G": "G"}
        if direction not in names:
            raise PipelineError(
                f"direction {direction!r} is not one of this checkpoint's: {', '.join(names)}"
            )
        return getattr(self, names[direction])


def load_generators(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedGenerators:
    """Rebuild G and F from a checkpoint alone (their sizes come from the stored config)."""
    state = load_checkpoint(path)
    train_cfg = state["config"]["train"]
    gen_cfg = GeneratorConfig(ngf=train_cfg["ngf"], n_blocks=train_cfg["n_blocks"])
    nets = {}
    for name in ("G", "F"):
        net = ResnetGenerator(gen_cfg)
        net.load_state_dict(state["nets"][name])
        nets[name] = net.to(device).eval()
    return LoadedGenerators(
        G=nets["G"],
        F=nets["F"],
        config=state["config"],
        variant=state["variant"],
        step=state["step"],
        domains=dict(state.get("data", {}).get("domains") or CITYSCAPES["domains"]),
    )
