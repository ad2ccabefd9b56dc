"""The automatic precision and compile choices, per device (device queries monkeypatched)."""

import sys
import types

import pytest
import torch

from lightning_gpt import precision
from lightning_gpt.cli import make_cli


@pytest.fixture
def machine(monkeypatch):
    """Set the device queries' answers: ``machine(cuda=(major, minor) or None, mps=..., cpu_bf16=...)``."""

    def configure(cuda: tuple[int, int] | None = None, mps: bool = False, cpu_bf16: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda is not None)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cuda)
        # emulation counts as support here: the very trap the capability check avoids
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: cpu_bf16)

    return configure


def test_asking_for_cuda_without_it_reads_no_capability(machine):
    """--trainer.accelerator cuda where CUDA is missing: reading the capability was an AssertionError
    traceback (Lightning refuses the accelerator in one line afterwards: test_errors)."""
    machine(cuda=None, cpu_bf16=False)
    assert precision.auto_precision("cuda") == "32-true"


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 0), "16-mixed"), ((7, 5), "16-mixed"), ((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed")],
    ids=["V100", "T4", "A100", "H100"],
)
@pytest.mark.parametrize("accelerator", ["auto", "gpu", "cuda"])
def test_cuda_gets_bf16_only_with_native_support(machine, capability, expected, accelerator):
    machine(cuda=capability, cpu_bf16=True)
    assert precision.auto_precision(accelerator) == expected
    assert precision.auto_precision("cpu") == "bf16-mixed"  # --trainer.accelerator cpu on that machine


@pytest.mark.parametrize(
    ("capability", "compiled"), [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)]
)
def test_compile_by_default_only_from_ampere_on(machine, monkeypatch, capability, compiled):
    machine(cuda=capability)
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    assert precision.auto_compile(torch.device("cuda", 0)) is compiled
    monkeypatch.setitem(sys.modules, "triton", None)  # no Triton (e.g. Windows): eager
    assert not precision.auto_compile(torch.device("cuda", 0))


def test_compile_reads_the_capability_of_the_device_it_trains_on(machine, monkeypatch):
    """A machine with an A100 as cuda:0 and a V100 as cuda:1: a run on cuda:1 is not compiled."""
    machine(cuda=(8, 0))
    capabilities = {0: (8, 0), 1: (7, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capabilities[device.index])
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    assert precision.auto_compile(torch.device("cuda", 0))
    assert not precision.auto_compile(torch.device("cuda", 1))


def test_no_compile_by_default_on_cpu_and_mps(machine):
    machine(mps=True, cpu_bf16=True)
    assert not precision.auto_compile(torch.device("cpu"))
    assert not precision.auto_compile(torch.device("mps"))


def test_mps_trains_in_fp32(machine):
    machine(mps=True, cpu_bf16=True)
    assert precision.auto_precision("auto") == "32-true"
    assert precision.auto_precision("gpu") == "32-true"  # "gpu" is MPS on a Mac
    assert precision.auto_precision("mps") == "32-true"
    assert precision.auto_precision("cpu") == "bf16-mixed"


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_cpus_get_bf16_only_when_native(machine, native, expected):
    machine(cpu_bf16=native)
    assert precision.auto_precision("auto") == expected
    assert precision.auto_precision("cpu") == expected
    assert precision.auto_precision("gpu") == expected  # no CUDA, no MPS: Lightning picks the CPU


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    # AVX-512 alone (Skylake-X, Ice Lake) emulates bf16: slower than fp32
    flags = {"avx2": False, "avx2 avx512f avx512bw": False, "avx2 avx512_bf16": True, "amx_bf16 avx2": True}
    for line, native in flags.items():
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu {line}\n")
        monkeypatch.setattr(precision, "Path", lambda _path, cpuinfo=cpuinfo: cpuinfo)
        monkeypatch.setattr(precision.platform, "system", lambda: "Linux")
        assert precision.cpu_has_native_bf16() is native, line


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.filterwarnings("ignore:.*infer the batch indices")  # as cli.run() does
def test_predict_decodes_in_fp32_on_a_cpu_where_fit_would_take_bf16(machine, tiny_checkpoint, small_corpus):
    """Decoding one position at a time gains nothing from CPU autocast: predict stays fp32."""
    machine(cpu_bf16=True)
    fit = make_cli(
        [f"--data.path={small_corpus}", f"--trainer.default_root_dir={small_corpus.parent}"], run=False
    )
    assert fit.trainer.precision == "bf16-mixed"
    predict = make_cli(["predict", f"--ckpt_path={tiny_checkpoint}", "--generate.max_new_tokens=3"])
    assert predict.trainer.precision == "32-true"
