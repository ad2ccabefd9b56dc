"""The compiled one-row product (lightning_gpt/matvec.c): same numbers as nn.Linear, built once
into a private cache, and PyTorch whenever it cannot be built or does not apply."""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.autograd import forward_ad

from lightning_gpt import matvec

COMPILER = shutil.which((shlex.split(os.environ.get("CC") or "cc") or ["cc"])[0])
# On Linux with a C compiler the kernel must build (GCC and clang both have OpenMP there).
needs_kernel = pytest.mark.skipif(
    COMPILER is None or not sys.platform.startswith("linux"), reason="the kernel is built on Linux with cc"
)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_load(monkeypatch):
    """``matvec.load`` forgets its result before and after the test (it is cached per process)."""
    matvec.load.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    matvec.load.cache_clear()


# rows not a multiple of 4 and fewer than the threads, widths not a multiple of any SIMD width
SHAPES = [(768, 256), (256, 1024), (65, 256), (7, 13), (1, 1), (3, 100)]


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_kernel_gives_what_linear_gives(threads):
    library, line = matvec.load()
    assert library is not None, line
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows, cols in SHAPES:
            for bias in (True, False):
                layer = nn.Linear(cols, rows, bias=bias)
                x = torch.randn(1, cols)
                with torch.inference_mode():
                    y = matvec.linear_row(layer, x)
                    assert y is not None and y.shape == (1, rows) and y.dtype == torch.float32
                    torch.testing.assert_close(y, layer(x), atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(before)


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@needs_kernel
@pytest.mark.parametrize("variant", ["", '__attribute__((target("arch=haswell")))'], ids=["plain", "avx2"])
def test_every_cpu_variant_gives_what_linear_gives(variant, tmp_path):
    """The loader runs only this CPU's best variant: build the others alone and run them."""
    if variant and not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("this CPU cannot run AVX2 code")
    target = tmp_path / "variant.so"
    subprocess.run(
        [COMPILER, *matvec.FLAGS, f"-DWIDEST={variant}", str(matvec.SOURCE), "-o", str(target)], check=True
    )
    library = ctypes.CDLL(str(target))
    matvec.declare(library)
    torch.manual_seed(0)
    for rows, cols in SHAPES:
        for threads in (1, 2, 0):  # 0 is read as 1
            layer = nn.Linear(cols, rows)
            x = torch.randn(1, cols)
            with torch.no_grad():
                y = matvec.multiply(library, layer.weight, x, layer.bias, threads)
                torch.testing.assert_close(y, layer(x), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_kernel_reads_a_non_contiguous_row():
    layer = nn.Linear(8, 4)
    x = torch.randn(8, 3)[:, 1].unsqueeze(0)  # a column: stride 3
    assert not x.is_contiguous()
    with torch.inference_mode():
        y = matvec.linear_row(layer, x)
        assert y is not None
        torch.testing.assert_close(y, layer(x))


@needs_kernel
def test_pytorch_is_used_where_the_kernel_does_not_apply():
    layer = nn.Linear(16, 8)
    row = torch.randn(1, 16)
    with torch.inference_mode():
        assert matvec.linear_row(layer, row) is not None  # the kernel applies here; below it does not
    assert matvec.linear_row(layer, row) is None  # outside inference mode: autograd may need a graph
    with torch.no_grad():
        assert matvec.linear_row(layer, row) is None  # ...and forward-mode AD works under no_grad
    with torch.inference_mode():
        assert matvec.linear_row(layer, torch.randn(2, 16)) is None  # several rows
        assert matvec.linear_row(layer, torch.randn(1, 15)) is None  # wrong width: Linear raises
        assert matvec.linear_row(layer, row.double()) is None
        assert matvec.linear_row(layer, row.to_sparse()) is None
        transposed = nn.Linear(16, 16)
        transposed.weight = nn.Parameter(transposed.weight.detach().t())  # not contiguous
        assert matvec.linear_row(transposed, row) is None
        for bias in (torch.ones(1), torch.tensor(1.0), torch.ones(9), torch.ones(8, dtype=torch.float64)):
            odd = nn.Linear(16, 8)
            odd.bias = nn.Parameter(bias, requires_grad=False)  # broadcast by F.linear; no kernel
            assert matvec.linear_row(odd, row) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert matvec.linear_row(layer, row) is None
        with matvec.pytorch_only():
            assert matvec.linear_row(layer, row) is None
    with forward_ad.dual_level(), torch.inference_mode(False):
        assert matvec.linear_row(layer, forward_ad.make_dual(row, torch.ones_like(row))) is None


@needs_kernel
def test_a_changed_weight_or_bias_is_checked_again():
    """What suits the kernel is remembered per layer, and forgotten when a tensor changes."""
    torch.manual_seed(0)
    layer, row = nn.Linear(16, 8), torch.randn(1, 16)

    def kernel_used() -> bool:
        with torch.inference_mode():
            y = matvec.linear_row(layer, row)
            if y is not None:
                torch.testing.assert_close(y, layer(row))
            return y is not None

    assert kernel_used()
    layer.bias = nn.Parameter(torch.ones(1))  # a new bias that F.linear broadcasts
    assert not kernel_used()
    layer.bias = nn.Parameter(torch.zeros(8))
    assert kernel_used()
    layer.weight.data = torch.randn(16, 8).t()  # same Parameter, new storage, transposed
    assert not kernel_used()
    layer.weight.data = layer.weight.data.contiguous()
    assert kernel_used()
    layer.weight.data = layer.weight.data.double()
    assert not kernel_used()
    layer.weight.data = layer.weight.data.float()
    assert kernel_used()


@needs_kernel
@pytest.mark.filterwarnings("ignore")  # the tracer's warnings about shapes read as Python values
def test_a_trace_records_pytorch_not_the_kernel():
    layer, row = nn.Linear(16, 8).requires_grad_(False), torch.randn(1, 16)
    with torch.inference_mode():
        traced = torch.jit.trace(lambda x: layer(x) if (y := matvec.linear_row(layer, x)) is None else y, row)
        torch.testing.assert_close(traced(row + 1), layer(row + 1))  # a kernel call would be missing


@needs_kernel
def test_built_once_into_a_private_cache_then_reused(fresh_load, tmp_path):
    fresh_load.setenv("XDG_CACHE_HOME", str(tmp_path))
    library, line = matvec.load()
    assert library is not None, line
    directory = tmp_path / "lightning_gpt"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    built = list(directory.iterdir())
    assert len(built) == 1 and built[0].name.startswith("matvec-") and built[0].suffix == ".so"
    assert str(built[0]) in line
    stamp = built[0].stat().st_mtime_ns
    matvec.load.cache_clear()  # as in a new process: the library is found, not compiled again
    assert matvec.load()[0] is not None
    assert [p.stat().st_mtime_ns for p in directory.iterdir()] == [stamp]


@needs_kernel
@pytest.mark.parametrize("problem", ["a file in the way", "writable by others", "no home"])
def test_an_unusable_cache_means_a_private_build_that_leaves_nothing(problem, fresh_load, tmp_path):
    if problem == "a file in the way":
        (tmp_path / "a-file").write_text("not a directory")
        fresh_load.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    elif problem == "writable by others":  # someone else could plant a library there
        (tmp_path / "lightning_gpt").mkdir()
        (tmp_path / "lightning_gpt").chmod(0o777)
        fresh_load.setenv("XDG_CACHE_HOME", str(tmp_path))
    else:
        fresh_load.delenv("XDG_CACHE_HOME", raising=False)
        fresh_load.delenv("HOME", raising=False)
        fresh_load.setattr(Path, "home", lambda: (_ for _ in ()).throw(RuntimeError("no home directory")))
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("lightning_gpt-*"))
    library, line = matvec.load()
    assert library is not None, line
    assert line.endswith("(this process only)")
    assert set(temp.glob("lightning_gpt-*")) == before  # the private directory is removed again
    if problem == "writable by others":
        assert list((tmp_path / "lightning_gpt").iterdir()) == []


def test_no_compiler_a_failing_compiler_or_turned_off_means_pytorch(fresh_load, tmp_path):
    fresh_load.setenv("XDG_CACHE_HOME", str(tmp_path))
    layer, row = nn.Linear(16, 8), torch.randn(1, 16)

    def refused(expected: str) -> None:
        matvec.load.cache_clear()
        library, line = matvec.load()
        assert library is None and expected in line
        with torch.inference_mode():
            assert matvec.linear_row(layer, row) is None

    fresh_load.setenv("CC", "no-such-compiler")
    refused("no C compiler (no-such-compiler)")
    failing = tmp_path / "failing-cc"
    failing.write_text("#!/bin/sh\necho 'cc: error: unsupported option -fopenmp' >&2\nexit 1\n")
    failing.chmod(failing.stat().st_mode | stat.S_IXUSR)
    fresh_load.setenv("CC", f"{failing} --some-flag")  # CC may carry arguments
    refused("failing-cc failed: cc: error: unsupported option -fopenmp")
    assert list((tmp_path / "lightning_gpt").iterdir()) == []  # no half-built library left behind
    fresh_load.delenv("CC", raising=False)
    for off in ("0", "false", "off"):
        fresh_load.setenv(matvec.DISABLE, off)
        refused("turned off")


def test_the_source_ships_in_the_wheel(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    shutil.copytree(
        ROOT / "lightning_gpt", source / "lightning_gpt", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("lightning_gpt-*.whl")
    assert "lightning_gpt/matvec.c" in zipfile.ZipFile(wheel).namelist()


@needs_kernel
def test_a_weight_changed_in_place_is_checked_at_every_call():
    """Same tensor, same storage, another shape: the kernel must not read past the bias."""
    layer, row = nn.Linear(16, 8), torch.randn(1, 8)
    layer.weight.data = layer.weight.data.view(16, 8)  # now [16, 8] against an 8-float bias
    with torch.inference_mode():
        assert matvec.linear_row(layer, row) is None
    base = torch.randn(32, 16)
    layer = nn.Linear(16, 8)
    layer.weight.data = base[:8]
    with torch.inference_mode():
        assert matvec.linear_row(layer, torch.randn(1, 16)) is not None
    layer.weight.requires_grad_(False).resize_(32, 16)  # same tensor and address, 32 rows
    assert layer.weight.shape == (32, 16)
    with torch.inference_mode():
        assert matvec.linear_row(layer, torch.randn(1, 16)) is None


@needs_kernel
def test_the_result_is_fp32_on_the_cpu_whatever_the_defaults():
    layer, row = nn.Linear(16, 8), torch.randn(1, 16)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.inference_mode():
            y = matvec.linear_row(layer, row)
            assert y is not None and y.dtype == torch.float32
            torch.testing.assert_close(y, layer(row))
            with torch.device("meta"):
                y = matvec.linear_row(layer, row)
                assert y is not None and y.device.type == "cpu"
            torch.testing.assert_close(y, layer(row))
    finally:
        torch.set_default_dtype(before)
