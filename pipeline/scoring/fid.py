"""Fréchet Inception Distance with pytorch-fid's Inception (pool3, 2048-d) and its Fréchet distance.

The weights are pytorch-fid's port of the TensorFlow FID Inception, found in the torch hub cache
(where pytorch-fid's own download puts them) or in a local file named by ``evaluate.fid.weights``.
Without them the score is not made up: `fid_between` returns ``FidResult(None, reason)`` and warns,
or raises `PipelineError` when the config says FID is required. Random weights are never used.

Wherever they come from, the weights must match their published hash (the ``6726825d`` in the
file name: the first hex digits of its sha256, torch hub's ``check_hash`` convention) and are
unpickled with ``weights_only=True``. pytorch-fid's own loader goes through torch hub, which unpickles
with ``weights_only=False``: any file placed at the cache path could run code. So the pipeline
downloads (with the hash check) and loads the file itself, and hands pytorch-fid the state dict.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import socket
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from unittest import mock

import numpy as np
import torch
from pytorch_fid import fid_score
from pytorch_fid import inception as fid_inception
from pytorch_fid.fid_score import calculate_frechet_distance, get_activations
from pytorch_fid.inception import InceptionV3

from pipeline.core.config import check_range
from pipeline.core.device import resolve_device
from pipeline.core.errors import PipelineError
from pipeline.core.progress import progress

log = logging.getLogger(__name__)

DIMS = 2048
WEIGHTS_URL = fid_inception.FID_WEIGHTS_URL
WEIGHTS_FILE = WEIGHTS_URL.rsplit("/", 1)[-1]  # pt_inception-2015-12-05-6726825d.pth
WEIGHTS_HASH_PREFIX = re.search(r"-([a-f0-9]{8,})\.", WEIGHTS_FILE)[1]  # torch.hub.HASH_REGEX's rule
# urllib waits forever by default; a firewalled (rather than offline) machine would hang the stage.
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass
class FidConfig:
    """The ``evaluate.fid`` params section."""

    required: bool = False  # true: missing weights are an error instead of a null score
    weights: str | None = None  # local copy of WEIGHTS_FILE; null: torch hub cache / download
    batch_size: int = 50
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        check_range(self, "batch_size", ge=1)


@dataclass
class FidResult:
    """A FID value, or ``None`` with the reason it could not be computed."""

    value: float | None
    reason: str | None = None


class WeightsUnavailable(Exception):
    """The FID Inception weights could not be found or fetched (message: why, and the fix)."""


def cached_weights_path() -> Path:
    """Where pytorch-fid's download stores the weights (and where a copy can be put by hand)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def load_inception(weights: str | Path | None = None, device: str | torch.device = "cpu") -> InceptionV3:
    """pytorch-fid's ``InceptionV3`` returning pool3 features, in eval mode on `device`.

    With `weights`, the state dict comes from that file; otherwise from the torch hub cache, trying
    pytorch-fid's download URL (bounded by `DOWNLOAD_TIMEOUT_S`) when it is not cached. Either file
    must match `WEIGHTS_HASH_PREFIX`. Raises `WeightsUnavailable` when there is no file and no
    download; `PipelineError` when a named or cached file is wrong.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise PipelineError(
                f"evaluate.fid.weights={path} does not exist: point it at a copy of {WEIGHTS_FILE} "
                "or set it to null to use the torch hub cache"
            )
        origin, fix = f"evaluate.fid.weights={path}", f"use pytorch-fid's {WEIGHTS_FILE}"
    else:
        path = cached_weights_path()
        if not path.is_file():
            _download(path)
        origin, fix = str(path), "delete it so that it is downloaded again, or set evaluate.fid.weights"
    return _inception_with(_verified_state_dict(path, origin, fix), origin, fix).eval().to(device)


def _verified_state_dict(path: Path, origin: str, fix: str) -> dict[str, torch.Tensor]:
    """The file's state dict, once its sha256 starts with the published prefix; unpickled safely."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    if not digest.hexdigest().startswith(WEIGHTS_HASH_PREFIX):
        raise PipelineError(
            f"{origin} is not pytorch-fid's {WEIGHTS_FILE}: its sha256 starts {digest.hexdigest()[:8]}, "
            f"the published one {WEIGHTS_HASH_PREFIX}; refused unread: {fix}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that is more than tensors, or a truncated file
        raise PipelineError(f"{origin} cannot be loaded as plain tensors ({exc}): {fix}") from None


def _inception_with(state_dict: dict[str, torch.Tensor], origin: str, fix: str) -> InceptionV3:
    # pytorch-fid builds its patched Inception and loads the state dict in one function; swapping only
    # its loader keeps its exact architecture code and its strict key checking.
    try:
        with mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *_a, **_k: state_dict):
            return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[DIMS]])
    except Exception as exc:  # a strict load_state_dict mismatch
        raise PipelineError(f"{origin} is not the FID Inception state dict ({exc}): {fix}") from None


def _download(path: Path) -> None:
    """pytorch-fid's weights into the torch hub cache, checked against their hash before they land."""
    log.info("%s not in the torch hub cache; downloading %s", WEIGHTS_FILE, WEIGHTS_URL)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # Into a temp file beside `path`, hash-checked, then moved: a bad download never lands there.
        torch.hub.download_url_to_file(
            WEIGHTS_URL, str(path), hash_prefix=WEIGHTS_HASH_PREFIX, progress=False
        )
    except RuntimeError as exc:  # torch hub's "invalid hash value"
        raise PipelineError(
            f"the download of {WEIGHTS_URL} does not match its published hash ({exc})"
        ) from None
    except Exception as exc:  # URLError, timeouts, HTTP errors
        raise WeightsUnavailable(
            f"the FID Inception weights are not in the torch hub cache ({path}) and could not be "
            f"downloaded ({type(exc).__name__}: {exc}); put {WEIGHTS_FILE} at that path or set "
            "evaluate.fid.weights to a local copy"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def activations(
    paths: Sequence[str | Path], model: InceptionV3, batch_size: int = 50, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Pool3 features ``(N, 2048)`` of the images at `paths`, batched, with a progress bar.

    pytorch-fid's own ``get_activations``: images scaled to [0, 1] and resized to 299 by the
    model's ``resize_input``. Images within a batch must share one size.
    """
    if not paths:
        raise PipelineError("no images to compute FID features for: check the image folders")
    files = [str(p) for p in paths]
    bar = functools.partial(progress, desc="FID features", unit="batch")  # pytorch-fid's own bar, tamed
    try:
        with mock.patch.object(fid_score, "tqdm", bar):
            return get_activations(
                files, model, batch_size=min(batch_size, len(files)), dims=DIMS, device=device, num_workers=0
            )
    except RuntimeError as exc:
        if "stack expects each tensor to be equal size" in str(exc):
            raise PipelineError(
                f"images given to FID differ in size ({exc}): translate/resize them to one size first"
            ) from None
        raise


def frechet_distance(acts_a: np.ndarray, acts_b: np.ndarray) -> float:
    """FID between two feature sets (rows are samples), via pytorch-fid's Fréchet distance."""
    if len(acts_a) < 2 or len(acts_b) < 2:
        raise ValueError("FID needs at least two images per set (a covariance of one sample is undefined)")
    mu_a, sigma_a = np.mean(acts_a, axis=0), np.cov(acts_a, rowvar=False)
    mu_b, sigma_b = np.mean(acts_b, axis=0), np.cov(acts_b, rowvar=False)
    with warnings.catch_warnings():
        # pytorch-fid 0.3.0 passes scipy's deprecated `disp=` to sqrtm; not ours to fix.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*disp.*")
        return float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


# One Inception per (weights source, device) per process: evaluate scores two directions.
_MODELS: dict[tuple[str, str], InceptionV3] = {}


def _model_for(cfg: FidConfig, device: torch.device) -> InceptionV3:
    source = str(Path(cfg.weights).expanduser().resolve()) if cfg.weights else str(cached_weights_path())
    key = (source, str(device))
    if key not in _MODELS:
        _MODELS[key] = load_inception(cfg.weights, device)
    return _MODELS[key]


def fid_between(images_a: Sequence[str | Path], images_b: Sequence[str | Path], cfg: FidConfig) -> FidResult:
    """FID between two lists of image files; ``FidResult(None, reason)`` when the weights are missing.

    With ``cfg.required`` a missing-weights situation raises `PipelineError` naming the fix.
    """
    device = resolve_device(cfg.device, "evaluate.fid.device")
    try:
        model = _model_for(cfg, device)
    except WeightsUnavailable as exc:
        reason = str(exc)
        if cfg.required:
            raise PipelineError(f"FID is required (evaluate.fid.required: true) but {reason}") from None
        warnings.warn(f"FID not computed: {reason}", stacklevel=2)
        log.warning("FID not computed: %s", reason)
        return FidResult(None, reason)
    acts_a = activations(images_a, model, cfg.batch_size, device)
    acts_b = activations(images_b, model, cfg.batch_size, device)
    return FidResult(frechet_distance(acts_a, acts_b))
