"""The facts about the machine that a training result depends on, recorded beside every result.

On one machine training is bit-exact, but the same commit on another CPU can give other numbers:
PyTorch picks its CPU kernels (ATen's vectorised code and oneDNN's convolutions) by the instruction
set the CPU offers, and floating-point sums taken in another order round differently; GAN training
then amplifies the difference. So a result carries the CPU model, the kernel dispatch level, the
torch build and the thread count it was computed with.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# Environment variables that pin the kernels PyTorch dispatches to (README: "Where a number came from").
PINNING_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else what `platform` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(device: torch.device | str | None = None) -> dict[str, str]:
    """What decides a result's last bits: device, CPU, kernel dispatch level, torch build, threads."""
    device = torch.device(device) if device is not None else None
    facts = {
        "device": str(device) if device is not None else "",
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": str(torch.__version__),  # a TorchVersion, which weights_only loading refuses
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
    }
    if device is not None and device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["cuda"] = str(torch.version.cuda)
        facts["cudnn"] = str(torch.backends.cudnn.version())
    facts.update({f"env.{name}": os.environ[name] for name in PINNING_ENV if name in os.environ})
    return facts
