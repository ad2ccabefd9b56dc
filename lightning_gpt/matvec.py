"""A compiled one-row matrix product for decoding on a CPU: optional, PyTorch is the fallback.

A decoding step multiplies one row by every weight matrix of the model, so its time is the time to
read the weights. PyTorch's one-row products read them at about half the speed a plain loop over
the rows reaches on a CPU (see benchmarks/README.md). ``matvec.c`` is that loop. It is compiled on
first use with the system's C compiler (``$CC`` or ``cc``) into ``$XDG_CACHE_HOME/lightning_gpt``
(``~/.cache/lightning_gpt``), once per user, compiler and source, and loaded with ctypes. Where
that directory cannot be used, it is compiled into a new private directory, once per process.

Without a compiler with OpenMP, if anything fails, or with ``LIGHTNING_GPT_CPU_KERNEL=0``,
``linear_row`` returns None and the model uses PyTorch: the same numbers up to float rounding,
only slower. ``load()[1]`` says which, and why.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.autograd import forward_ad

SOURCE = Path(__file__).with_name("matvec.c")
FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
DISABLE = "LIGHTNING_GPT_CPU_KERNEL"
_off = False  # set inside ``pytorch_only()``


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$XDG_CACHE_HOME/lightning_gpt`` or ``~/.cache/lightning_gpt``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightning_gpt"


def _owned_privately(path: Path) -> bool:
    """True if only this user can change ``path`` (a library there runs as this user's code)."""
    if not hasattr(os, "getuid"):
        return True
    status = path.stat()
    return status.st_uid == os.getuid() and not status.st_mode & 0o022


def _compile(compiler: list[str], target: Path) -> str | None:
    """Compile matvec.c into ``target`` (written whole or not at all); the error, if any."""
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [*compiler, *FLAGS, str(SOURCE), "-o", temp], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            return f"{Path(compiler[0]).name} failed: {lines[0] if lines else f'exit {done.returncode}'}"
        os.replace(temp, target)  # concurrent builds each rename a whole file
        return None
    except (OSError, subprocess.SubprocessError) as error:
        return f"{Path(compiler[0]).name} failed: {error}"
    finally:
        Path(temp).unlink(missing_ok=True)


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtimes mapped into this process (Linux; empty where that cannot be read)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    return set(re.findall(r"\S*/lib(?:gomp|iomp5|omp)[^/\s]*\.so[^/\s]*$", maps, re.MULTILINE))


def declare(library: ctypes.CDLL) -> None:
    """Give ctypes the C signature of ``lightning_gpt_matvec`` in ``library``."""
    library.lightning_gpt_matvec.argtypes = [ctypes.c_void_p] * 4 + [
        ctypes.c_long,
        ctypes.c_long,
        ctypes.c_int,
    ]
    library.lightning_gpt_matvec.restype = None


def multiply(
    library: ctypes.CDLL, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, threads: int
) -> torch.Tensor:
    """y = weight x + bias [1, rows] by ``library``'s kernel; the caller has checked the tensors:
    contiguous fp32 CPU weight [rows, cols] and bias [rows], x [1, cols]."""
    x = x.contiguous()
    y = x.new_empty(1, weight.shape[0])  # fp32 on the CPU, whatever the default dtype and device
    library.lightning_gpt_matvec(
        weight.data_ptr(),
        x.data_ptr(),
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        weight.shape[0],
        weight.shape[1],
        threads,
    )
    return y


def _build_and_load(compiler: list[str]) -> tuple[ctypes.CDLL | None, str]:
    version = subprocess.run(
        [*compiler, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True, timeout=60
    ).stdout
    recipe = [SOURCE.read_bytes()] + [
        part.encode()
        for part in (*FLAGS, *compiler, version, sys.platform, platform.machine(), *platform.libc_ver())
    ]
    name = "matvec-" + hashlib.sha256(b"\0".join(recipe)).hexdigest()[:16] + ".so"
    error = "no directory to build in"
    for shared in (True, False):
        private = None
        try:
            if shared:
                directory = cache_dir()
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                if not _owned_privately(directory):
                    error = f"{directory} can be changed by other users"
                    continue
            else:  # a new private directory, removed once the library is loaded
                directory = private = Path(tempfile.mkdtemp(prefix="lightning_gpt-"))
            target = directory / name
            if target.is_file() and not _owned_privately(target):
                error = f"{target} can be changed by other users"
                continue
            if not target.is_file() and (error := _compile(compiler, target)) is not None:
                return None, error
            before = _openmp_runtimes()
            try:
                library = ctypes.CDLL(str(target))
            except OSError:  # e.g. built on another machine sharing the home directory: build again
                if (error := _compile(compiler, target)) is not None:
                    return None, error
                library = ctypes.CDLL(str(target))
            if len(runtimes := _openmp_runtimes() | before) > 1:
                return None, f"not used: two OpenMP runtimes would compete ({', '.join(sorted(runtimes))})"
            declare(library)
            return library, f"compiled kernel {target}" + (" (this process only)" if private else "")
        except (OSError, RuntimeError) as problem:  # a directory that cannot be written: try the next
            error = str(problem)
        finally:
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)  # a loaded library stays mapped
    return None, f"no usable directory to build in ({error})"


@functools.lru_cache(maxsize=1)
def load() -> tuple[ctypes.CDLL | None, str]:
    """The compiled kernel (built on the first call if not cached) and a line saying which file
    was loaded, or (None, why not). Never raises."""
    if os.environ.get(DISABLE, "1").strip().lower() in ("0", "false", "off", "no"):
        return None, f"turned off by {DISABLE}={os.environ[DISABLE]}"
    asked = shlex.split(os.environ.get("CC") or "cc") or ["cc"]  # CC may be "ccache gcc"
    found = shutil.which(asked[0])
    if found is None:
        return None, f"no C compiler ({' '.join(asked)}) on PATH"
    try:
        return _build_and_load([found, *asked[1:]])
    except Exception as problem:  # whatever goes wrong, PyTorch computes the same numbers
        return None, f"not available: {type(problem).__name__}: {problem}"


@contextlib.contextmanager
def pytorch_only() -> Iterator[None]:
    """Inside this block (in every thread) ``linear_row`` returns None: for comparisons and tests."""
    global _off
    before, _off = _off, True
    try:
        yield
    finally:
        _off = before


def _plain_cpu_fp32(t: torch.Tensor) -> bool:
    """A plain (not a subclass, not a view with a negation bit) dense fp32 tensor on the CPU."""
    return (
        type(t) in (torch.Tensor, nn.Parameter)
        and t.dtype is torch.float32
        and t.is_cpu
        and t.layout is torch.strided
        and not t.is_neg()
    )


def linear_row(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
    """``layer(x)`` for one row x [1, in] -> [1, out] with the compiled kernel, or None where it
    does not apply: outside ``torch.inference_mode`` (so never under autograd), several rows, not a
    plain fp32 CPU tensor, a non-contiguous weight, autocast, tracing or compiling, inside
    ``pytorch_only()``, or no kernel (see ``load``)."""
    if _off or not torch.is_inference_mode_enabled() or torch.jit.is_tracing():
        return None
    parameters = layer._parameters  # what layer.weight reads, without Module.__getattr__'s cost
    weight, bias = parameters.get("weight"), parameters.get("bias")
    # Checked at every call (about 3 us in all): a weight can change shape or dtype in place.
    if (
        weight is None  # e.g. a parametrized weight
        or not _plain_cpu_fp32(weight)
        or weight.dim() != 2
        or not weight.is_contiguous()
        or (
            bias is not None
            and not (_plain_cpu_fp32(bias) and bias.shape == weight.shape[:1] and bias.is_contiguous())
        )
        or not _plain_cpu_fp32(x)
        or x.shape != (1, weight.shape[1])
        or torch.is_autocast_enabled("cpu")
        or torch.compiler.is_compiling()
        or forward_ad._current_level >= 0  # inside forward-mode AD
    ):
        return None
    library = load()[0]
    return None if library is None else multiply(library, weight, x, bias, torch.get_num_threads())
