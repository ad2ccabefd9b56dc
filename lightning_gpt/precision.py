"""The automatic choices of precision and ``torch.compile`` for the hardware at hand.

- CUDA, compute capability >= 8.0 (A100, H100, RTX 30xx and newer): ``bf16-mixed``, compiled.
- CUDA below 8.0 (V100, T4): ``16-mixed`` (bf16 is only emulated there, and slow), eager.
- Apple MPS: ``32-true``, eager.
- CPUs: ``bf16-mixed`` where the CPU has native bf16 (AVX512-BF16 / AMX), else ``32-true``; eager.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

NATIVE_BF16_CAPABILITY = (8, 0)  # NVIDIA Ampere: the first GPUs with bf16 tensor cores


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX-BF16 (where bf16 autocast beats fp32)."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not cpuinfo.is_file():
        return False
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_accelerator(accelerator: str = "auto") -> str:
    """``cuda``, ``mps`` or ``cpu``: what Lightning picks for ``--trainer.accelerator``."""
    if accelerator in ("gpu", "auto"):
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return accelerator if accelerator in ("cuda", "mps") else "cpu"


def auto_precision(accelerator: str = "auto") -> str:
    """The fastest precision that trains as well as fp32 on ``accelerator`` (see the module doc)."""
    device = resolve_accelerator(accelerator)
    if device == "cuda" and torch.cuda.is_available():  # else Lightning refuses the accelerator
        return "bf16-mixed" if torch.cuda.get_device_capability() >= NATIVE_BF16_CAPABILITY else "16-mixed"
    return "bf16-mixed" if device != "mps" and cpu_has_native_bf16() else "32-true"


def auto_compile(device: torch.device) -> bool:
    """Whether to compile the training forward by default: on CUDA capability >= 8.0 with Triton only."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < NATIVE_BF16_CAPABILITY:
        return False
    try:  # inductor needs Triton on GPUs (missing e.g. on Windows)
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
