"""The compiled one-row product (lightning_gpt/matvec.c): same numbers as nn.Linear, built once
into the cache, and PyTorch whenever it cannot be built or does not apply."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_gpt import matvec

COMPILER = shutil.which(os.environ.get("CC") or "cc")
needs_compiler = pytest.mark.skipif(COMPILER is None, reason="no C compiler")


@pytest.fixture
def fresh_load(monkeypatch):
    """``matvec.load`` forgets its result before and after the test (it is cached per process)."""
    matvec.load.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    matvec.load.cache_clear()


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_gives_what_linear_gives(threads):
    library, line = matvec.load()
    assert library is not None, line
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # rows not a multiple of 4 (and fewer than the threads), widths not a multiple of the SIMD width
        for rows, cols in [(768, 256), (256, 1024), (65, 256), (7, 13), (1, 1), (3, 100)]:
            for bias in (True, False):
                layer = nn.Linear(cols, rows, bias=bias)
                x = torch.randn(1, cols)
                with torch.no_grad():
                    y = matvec.linear_row(layer, x)
                    assert y is not None and y.shape == (1, rows) and y.dtype == torch.float32
                    torch.testing.assert_close(y, layer(x), atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(before)


@needs_compiler
def test_kernel_reads_a_non_contiguous_row():
    layer = nn.Linear(8, 4)
    x = torch.randn(8, 3)[:, 1].unsqueeze(0)  # a column: stride 3
    assert not x.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(matvec.linear_row(layer, x), layer(x))


def test_pytorch_is_used_where_the_kernel_does_not_apply():
    layer = nn.Linear(16, 8)
    row = torch.randn(1, 16)
    with torch.no_grad():
        assert matvec.linear_row(layer, torch.randn(2, 16)) is None  # several rows
        assert matvec.linear_row(layer, torch.randn(1, 15)) is None  # wrong width: Linear raises
        assert matvec.linear_row(layer, row.double()) is None
        assert matvec.linear_row(nn.Linear(16, 8).double(), row.double()) is None
        transposed = nn.Linear(16, 16)
        transposed.weight = nn.Parameter(transposed.weight.detach().t())  # not contiguous
        assert matvec.linear_row(transposed, row) is None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert matvec.linear_row(layer, row) is None
    assert matvec.linear_row(layer, row) is None  # autograd wants a graph through the weight


@needs_compiler
def test_built_once_into_the_cache_then_reused(fresh_load, tmp_path):
    fresh_load.setenv("XDG_CACHE_HOME", str(tmp_path))
    library, line = matvec.load()
    assert library is not None, line
    built = list((tmp_path / "lightning_gpt").iterdir())
    assert len(built) == 1 and built[0].name.startswith("matvec-") and built[0].suffix == ".so"
    assert str(built[0]) in line
    stamp = built[0].stat().st_mtime_ns
    matvec.load.cache_clear()  # as in a new process: the library is found, not compiled again
    assert matvec.load()[0] is not None
    assert [p.stat().st_mtime_ns for p in (tmp_path / "lightning_gpt").iterdir()] == [stamp]


@needs_compiler
def test_an_unwritable_cache_falls_back_to_a_private_directory(fresh_load, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    fresh_load.setenv("XDG_CACHE_HOME", str(blocker))
    library, line = matvec.load()
    assert library is not None, line
    assert str(blocker) not in line and "lightning_gpt-" in line


def test_no_compiler_a_failing_compiler_or_turned_off_means_pytorch(fresh_load, tmp_path):
    fresh_load.setenv("XDG_CACHE_HOME", str(tmp_path))
    layer, row = nn.Linear(16, 8), torch.randn(1, 16)

    def refused(expected: str) -> None:
        matvec.load.cache_clear()
        library, line = matvec.load()
        assert library is None and expected in line
        with torch.no_grad():
            assert matvec.linear_row(layer, row) is None

    fresh_load.setenv("CC", "no-such-compiler")
    refused("no C compiler (no-such-compiler)")
    failing = tmp_path / "failing-cc"
    failing.write_text("#!/bin/sh\necho 'cc: error: unsupported option -fopenmp' >&2\nexit 1\n")
    failing.chmod(failing.stat().st_mode | stat.S_IXUSR)
    fresh_load.setenv("CC", str(failing))
    refused("unsupported option -fopenmp")
    assert list((tmp_path / "lightning_gpt").iterdir()) == []  # no half-built library left behind
    fresh_load.delenv("CC", raising=False)
    fresh_load.setenv(matvec.DISABLE, "0")
    refused("turned off")


def test_the_source_ships_with_the_package():
    assert matvec.SOURCE.is_file()
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert 'lightning_gpt = ["matvec.c"]' in pyproject
