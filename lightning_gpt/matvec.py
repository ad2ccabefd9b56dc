"""A compiled one-row matrix product for decoding on a CPU: optional, PyTorch is the fallback.

A decoding step multiplies one row by every weight matrix of the model, so its time is the time to
read the weights. PyTorch's one-row products read them at about half the speed a plain loop over
the rows reaches on a CPU (see benchmarks/README.md). ``matvec.c`` is that loop: it is compiled on
first use with the system's C compiler (``$CC`` or ``cc``), cached under
``$XDG_CACHE_HOME/lightning_gpt`` (``~/.cache/lightning_gpt``), and loaded with ctypes.

Without a compiler, if it fails, or with ``LIGHTNING_GPT_CPU_KERNEL=0``, ``linear_row`` returns None
and the model uses PyTorch: the same numbers up to float rounding, only slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

SOURCE = Path(__file__).with_name("matvec.c")
FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
DISABLE = "LIGHTNING_GPT_CPU_KERNEL"


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$XDG_CACHE_HOME/lightning_gpt`` or ``~/.cache/lightning_gpt``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightning_gpt"


def _compile(compiler: str, target: Path) -> str | None:
    """Compile matvec.c into ``target`` (written whole or not at all); the error, if any."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", temp], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            return f"{compiler} failed: {lines[0] if lines else f'exit {done.returncode}'}"
        os.replace(temp, target)  # concurrent builds each rename a whole file
        return None
    except (OSError, subprocess.SubprocessError) as error:
        return f"{compiler} failed: {error}"
    finally:
        Path(temp).unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def load() -> tuple[ctypes.CDLL | None, str]:
    """The compiled kernel (built on the first call in a machine's life) and a line saying what
    was loaded, or (None, why not)."""
    if os.environ.get(DISABLE, "1") == "0":
        return None, f"turned off by {DISABLE}=0"
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        return None, f"no C compiler ({os.environ.get('CC') or 'cc'}) on PATH"
    recipe = [SOURCE.read_bytes(), *map(str.encode, (*FLAGS, compiler, platform.machine()))]
    key = hashlib.sha256(b"\0".join(recipe)).hexdigest()[:16]
    # The user's cache, else a new private directory (a shared one could hold a planted library)
    for directory in (cache_dir(), None):
        directory = directory or Path(tempfile.mkdtemp(prefix="lightning_gpt-"))
        target = directory / f"matvec-{key}.so"
        try:
            error = None if target.is_file() else _compile(compiler, target)
        except OSError as problem:  # the directory cannot be written: try the next one
            error = str(problem)
            continue
        if error is not None:
            return None, error
        try:
            library = ctypes.CDLL(str(target))
        except OSError as problem:
            return None, f"cannot load {target}: {problem}"
        kernel = library.lightning_gpt_matvec
        kernel.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long, ctypes.c_long, ctypes.c_int]
        kernel.restype = None
        return library, f"compiled kernel {target}"
    return None, f"no writable cache directory ({error})"


def linear_row(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
    """``layer(x)`` for one row x [1, in] -> [1, out] with the compiled kernel, or None where it
    does not apply: several rows, not fp32 on the CPU, autocast, autograd, or no kernel."""
    weight, bias = layer.weight, layer.bias
    if (
        x.dim() != 2
        or x.shape[0] != 1
        or x.shape[1] != weight.shape[1]
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or weight.device.type != "cpu"
        or x.device.type != "cpu"
        or not weight.is_contiguous()
        or (bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()))
        or torch.is_autocast_enabled("cpu")
        or (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
        or torch.compiler.is_compiling()
    ):
        return None
    library = load()[0]
    if library is None:
        return None
    x = x.contiguous()
    y = x.new_empty(1, weight.shape[0])
    library.lightning_gpt_matvec(
        weight.data_ptr(),
        x.data_ptr(),
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        weight.shape[0],
        weight.shape[1],
        torch.get_num_threads(),
    )
    return y
