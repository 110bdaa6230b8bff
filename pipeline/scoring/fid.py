"""FID and KID from pytorch-fid's Inception (pool3, 2048-d): one feature pass per image set, two scores.

- FID, the Fréchet Inception Distance (Heusel et al. 2017), by pytorch-fid's own Fréchet distance;
- KID, the Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD² estimate with the
  cubic polynomial kernel, mean and std over random subsets, as torch-fidelity and the CUT and UNSB
  papers report it (`kernel_inception_distance`).

Images go through exactly pytorch-fid's own preprocessing (its ``get_activations``: RGB scaled to
[0, 1], resized to 299×299 by bilinear interpolation inside the network, then mapped to [-1, 1]);
FID and KID depend on that resizing (Parmar et al. 2022, "On Aliased Resizing and Surprising
Subtleties in GAN Evaluation", the clean-fid paper), so these numbers compare with other pytorch-fid
numbers, not with clean-fid's or TensorFlow's.

The features of a file list are computed once per process and reused (`image_features`): the real
images behind several comparisons pass through the network once.

The weights are pytorch-fid's port of the TensorFlow FID Inception, found in the torch hub cache
(where pytorch-fid's own download puts them) or in a local file named by ``evaluate.fid.weights``.
Without them the scores are not made up: `fid_between` and `fid_kid_between` return ``None`` values
with the reason and warn, or raise `PipelineError` when the config says FID is required. Random
weights are never used.

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
from collections import OrderedDict
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
    # KID as torch-fidelity reports it: 100 subsets of 1000 (fewer when a set is smaller), seeded.
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    kid_seed: int = 0

    def __post_init__(self) -> None:
        check_range(self, ("batch_size", "kid_subsets"), ge=1)
        check_range(self, "kid_subset_size", ge=2)
        check_range(self, "kid_seed", ge=0)


@dataclass
class FidResult:
    """A FID value, or ``None`` with the reason it could not be computed."""

    value: float | None
    reason: str | None = None


@dataclass(frozen=True)
class FidKidResult:
    """FID and KID (mean and std over subsets) between two image sets, from one feature pass per set;
    all three ``None``, with the reason, when the Inception weights are missing."""

    fid: float | None
    kid_mean: float | None
    kid_std: float | None
    kid_subset_size: int | None = None  # the subset size used: the config's, or the smaller set's size
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


# KID: above this many kernel entries (8 bytes each), the full sets' kernel is not precomputed (128 MiB).
FULL_KERNEL_ENTRIES = 1 << 24


def kernel_inception_distance(
    feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID between two feature sets (rows are samples): the mean and std (ddof 0) over `subsets`
    unbiased MMD² estimates with the kernel k(x, y) = (x·y / d + 1)³.

    Each subset draws m = min(`subset_size`, len(a), len(b)) rows of each set without replacement,
    from ``numpy.random.default_rng(seed)``: first a's indices, then b's
    (``rng.choice(len(a), m, replace=False)``). Per subset, with K the kernel matrices,

        MMD² = Σ_{i≠j} K_aa[i, j] / (m(m−1)) + Σ_{i≠j} K_bb[i, j] / (m(m−1)) − 2 Σ_{i,j} K_ab[i, j] / m²

    as in Bińkowski et al. 2018 and torch-fidelity (whose subsets come from a ``RandomState``: the same
    estimator, other draws, so the last digits differ). The kernel matrices come from one matrix product
    per subset, or, when that is cheaper and fits in `FULL_KERNEL_ENTRIES`, are cut from the kernel
    of the full sets (the same numbers).
    """
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs two feature matrices of one width, got {a.shape} and {b.shape}")
    m = min(subset_size, len(a), len(b))
    if m < 2 or subsets < 1:
        raise ValueError("KID needs at least one subset of at least two images per set")
    kernel = _PolynomialKernel(a, b, subsets, m)
    rng = np.random.default_rng(seed)
    estimates = np.empty(subsets)
    for index in range(subsets):
        rows_a = rng.choice(len(a), m, replace=False)
        rows_b = rng.choice(len(b), m, replace=False)
        estimates[index] = _unbiased_mmd2(*kernel.blocks(rows_a, rows_b))
    return float(estimates.mean()), float(estimates.std())


class _PolynomialKernel:
    """k(x, y) = (x·y / d + 1)³ between rows of `a` and `b`, as the blocks one subset needs."""

    def __init__(self, a: np.ndarray, b: np.ndarray, subsets: int, m: int):
        self.a, self.b = a, b
        full = len(a) ** 2 + len(b) ** 2 + len(a) * len(b)
        self.full = None
        if full <= FULL_KERNEL_ENTRIES and full <= 3 * subsets * m * m:
            self.full = (self._k(a, a), self._k(b, b), self._k(a, b))

    def _k(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x @ y.T / x.shape[1] + 1.0) ** 3

    def blocks(self, rows_a: np.ndarray, rows_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """K_aa, K_bb and K_ab of the subset."""
        if self.full is not None:
            k_aa, k_bb, k_ab = self.full
            return k_aa[np.ix_(rows_a, rows_a)], k_bb[np.ix_(rows_b, rows_b)], k_ab[np.ix_(rows_a, rows_b)]
        a, b = self.a[rows_a], self.b[rows_b]
        return self._k(a, a), self._k(b, b), self._k(a, b)


def _unbiased_mmd2(k_aa: np.ndarray, k_bb: np.ndarray, k_ab: np.ndarray) -> float:
    m = len(k_aa)
    within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within - 2.0 * k_ab.sum() / (m * m))


def scores_from_features(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> FidKidResult:
    """FID and KID of two feature sets (e.g. from `image_features`), with the KID settings given."""
    kid_mean, kid_std = kernel_inception_distance(feats_a, feats_b, kid_subsets, kid_subset_size, seed)
    used = min(kid_subset_size, len(feats_a), len(feats_b))
    return FidKidResult(frechet_distance(feats_a, feats_b), kid_mean, kid_std, used)


# One Inception per (weights source, device, feature width) per process: evaluate scores two directions.
_MODELS: dict[tuple[str, str, int], InceptionV3] = {}
# Features of the last few file lists, keyed on the model and each file's (resolved path, size, mtime).
FEATURE_CACHE_ENTRIES = 8  # 500 images × 2048 float64 features are 8 MB
_FEATURES: OrderedDict[tuple, np.ndarray] = OrderedDict()


def _model_key(cfg: FidConfig, device: torch.device) -> tuple[str, str, int]:
    source = str(Path(cfg.weights).expanduser().resolve()) if cfg.weights else str(cached_weights_path())
    return source, str(device), DIMS


def _model_for(cfg: FidConfig, device: torch.device) -> InceptionV3:
    key = _model_key(cfg, device)
    if key not in _MODELS:
        _MODELS[key] = load_inception(cfg.weights, device)
    return _MODELS[key]


def _file_identity(path: str | Path) -> tuple[str, int, int]:
    resolved = Path(path).expanduser().resolve()
    try:
        status = resolved.stat()
    except OSError as exc:
        raise PipelineError(f"cannot read {path} for FID features ({exc}): check the image folders") from None
    return str(resolved), status.st_size, status.st_mtime_ns


def image_features(
    paths: Sequence[str | Path], cfg: FidConfig, device: torch.device | None = None
) -> np.ndarray:
    """Pool3 features ``(N, 2048)`` of the images at `paths`, in order, computed once per process.

    The features are kept for the last `FEATURE_CACHE_ENTRIES` file lists, keyed on the weights
    source, the device and, for each file in order, its resolved path, size and modification time
    (ns): the same real images scored against several translations pass through the network once,
    and an image rewritten in between is read again. Raises `WeightsUnavailable` when the weights are
    missing (see `load_inception`).
    """
    device = resolve_device(cfg.device, "evaluate.fid.device") if device is None else device
    model = _model_for(cfg, device)  # first: missing weights are reported before anything else
    key = (_model_key(cfg, device), tuple(_file_identity(path) for path in paths))
    if key in _FEATURES:
        _FEATURES.move_to_end(key)
        return _FEATURES[key]
    features = activations(paths, model, cfg.batch_size, device)
    features.setflags(write=False)  # shared by every caller that asks for the same files
    _FEATURES[key] = features
    while len(_FEATURES) > FEATURE_CACHE_ENTRIES:
        _FEATURES.popitem(last=False)
    return features


def clear_feature_cache() -> None:
    """Forget every cached feature set (the Inception models stay loaded)."""
    _FEATURES.clear()


def _feature_pair(
    images_a: Sequence[str | Path], images_b: Sequence[str | Path], cfg: FidConfig
) -> tuple[np.ndarray, np.ndarray] | str:
    """The features of both sets, or the reason the weights are missing (warned, or raised when
    ``cfg.required``)."""
    device = resolve_device(cfg.device, "evaluate.fid.device")
    try:
        return image_features(images_a, cfg, device), image_features(images_b, cfg, device)
    except WeightsUnavailable as exc:
        reason = str(exc)
        if cfg.required:
            raise PipelineError(f"FID is required (evaluate.fid.required: true) but {reason}") from None
        warnings.warn(f"FID not computed: {reason}", stacklevel=3)
        log.warning("FID not computed: %s", reason)
        return reason


def fid_kid_between(
    images_a: Sequence[str | Path], images_b: Sequence[str | Path], cfg: FidConfig
) -> FidKidResult:
    """FID and KID between two lists of image files, from one (cached) feature pass per list.

    ``FidKidResult(None, None, None, reason=...)`` when the weights are missing; with
    ``cfg.required`` that raises `PipelineError` naming the fix.
    """
    pair = _feature_pair(images_a, images_b, cfg)
    if isinstance(pair, str):
        return FidKidResult(None, None, None, None, pair)
    return scores_from_features(*pair, cfg.kid_subsets, cfg.kid_subset_size, cfg.kid_seed)


def fid_between(images_a: Sequence[str | Path], images_b: Sequence[str | Path], cfg: FidConfig) -> FidResult:
    """FID between two lists of image files; ``FidResult(None, reason)`` when the weights are missing.

    With ``cfg.required`` a missing-weights situation raises `PipelineError` naming the fix.
    """
    pair = _feature_pair(images_a, images_b, cfg)
    if isinstance(pair, str):
        return FidResult(None, pair)
    return FidResult(frechet_distance(*pair))
