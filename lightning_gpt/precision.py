"""Pick a training precision that is fast on the hardware at hand and never slower than fp32."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX-BF16 (where bf16 autocast beats fp32)."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not cpuinfo.is_file():
        return False
    flags = set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def auto_precision(accelerator: str = "auto") -> str:
    """``bf16-mixed`` on CUDA GPUs with bf16 and on CPUs with native bf16, else ``32-true``.

    CPUs without native bf16 emulate it and train slower than in fp32; MPS stays in fp32.
    """
    # "gpu" means CUDA where there is CUDA, and MPS on a Mac (as Lightning resolves it)
    use_cuda = accelerator == "cuda" or (accelerator in ("gpu", "auto") and torch.cuda.is_available())
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    mps = getattr(torch.backends, "mps", None)
    mps_available = bool(mps and mps.is_available())
    if accelerator == "mps" or (accelerator in ("gpu", "auto") and mps_available):
        return "32-true"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
