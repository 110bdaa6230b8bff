"""Devices and seeds: one resolver for every `device:` key, one derivation of seeds per purpose."""

from __future__ import annotations

import hashlib
import re

import torch

from pipeline.core.errors import PipelineError


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is a clear error.

    Only ``auto``, ``cpu``, ``cuda`` and ``cuda:N`` (N a visible device) are devices here: torch also
    accepts ``meta`` (tensors without data), ``mps`` or ``xpu``, which fail later or give nonsense.
    `key` names the params key or option in the message (e.g. ``train.device``).
    """
    match = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", name)
    if match is None:
        raise PipelineError(f"{key} {name!r} is not a device: use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"{key} is {name!r} but no CUDA device is visible: set {key}: auto or cpu")
    if match[1] is not None and int(match[1]) >= torch.cuda.device_count():
        raise PipelineError(
            f"{key} is {name!r} but only {torch.cuda.device_count()} CUDA device(s) are visible "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device(name)


def derive_seed(seed: int, purpose: str) -> int:
    """Independent 63-bit seed per purpose (init, data, pools) from the one configured seed."""
    digest = hashlib.sha256(f"{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def seed_global_generators(seed: int) -> None:
    """Seed torch's global generators (CPU and every CUDA device) for `seed`, like any other purpose.

    The pipeline's own draws go through `seeded` generators, but torch draws from the global one
    itself (each layer's default init when a network is built, before `init_weights` replaces it), and
    checkpoints save the global states. This torch build seeds its default generator from the OS at
    start-up, so those saved states, and with them the checkpoint's bytes, differed between two
    identical runs.
    """
    torch.manual_seed(derive_seed(seed, "global"))


def seeded(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded for `purpose`: one seed gives the same draws on every device."""
    return torch.Generator().manual_seed(derive_seed(seed, purpose))
