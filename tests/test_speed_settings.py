"""Settings that make training fast: precision choice, the progress bar's refresh rate,
torch.compile (checkpoints must stay plain), and logging work and host reads only at logging steps."""

import os
import traceback
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY_MODEL, tiny_fit_args
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import Logger
from torch.utils._python_dispatch import TorchDispatchMode

import lightning_gpt
from lightning_gpt.cli import PROGRESS_REFRESH_STEPS, make_cli
from lightning_gpt.module import GPTModule


def test_progress_bar_redraws_every_few_steps(tmp_path, small_corpus, monkeypatch):
    monkeypatch.undo()  # the CLI reads CharDataModule's real signature (nothing is built here)
    args = [f"--data.path={small_corpus}", f"--trainer.default_root_dir={tmp_path}"]
    bar = make_cli(args, run=False).trainer.progress_bar_callback
    # not Rich's, Lightning's default where rich is installed: it read the logged values at every step
    assert type(bar) is TQDMProgressBar and bar.refresh_rate == PROGRESS_REFRESH_STEPS
    rich = ["--trainer.callbacks+=RichProgressBar", "--trainer.callbacks.refresh_rate=3"]
    chosen = make_cli([*args, *rich], run=False).trainer.progress_bar_callback  # one the user chose is kept
    assert type(chosen) is RichProgressBar and chosen.refresh_rate == 3
    chosen = make_cli(args, [TQDMProgressBar(refresh_rate=50)], run=False).trainer.progress_bar_callback
    assert chosen.refresh_rate == 50  # given from Python
    alone = make_cli([*args, "--trainer.callbacks=LearningRateMonitor"], run=False)  # one callback, no list
    assert alone.trainer.progress_bar_callback.refresh_rate == PROGRESS_REFRESH_STEPS
    # (--trainer.enable_progress_bar=false still works: every tiny fit in the tests uses it)


def test_compiled_training_keeps_plain_checkpoints(tmp_path, small_corpus, cli_main, monkeypatch):
    # torch.compile's wrapper (what could leak "_orig_mod." into checkpoints) with Dynamo's eager backend:
    # inductor's C++ build would be the slowest test of a CPU suite (the GPU checks compile for real)
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda model: compiled.append(model) or real_compile(model, backend="eager")
    )
    args = tiny_fit_args(small_corpus, steps=4, val_every=2)
    result = cli_main(*args, "--model.compile=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(compiled) == 1  # the training forward, once
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert "compile" not in checkpoint["hyper_parameters"]  # how to run, not what was trained
    keys = list(checkpoint["state_dict"])
    assert "model.token_embedding.weight" in keys
    assert not [key for key in keys if "_orig_mod" in key]
    model = GPTModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert model.generate_text("ROMEO:", 10, temperature=0).startswith("ROMEO:")


PACKAGE = str(Path(lightning_gpt.__file__).parent) + os.sep


class StepWindows(L.Callback):
    """Knows which optimizer step runs: from its on_train_batch_start to the next one (so Lightning's
    end-of-step work, progress bar and logger included), and records each step's loss and gradient norm."""

    def __init__(self):
        self.step: int | None = None
        self.losses: dict[int, float] = {}
        self.grad_norms: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.step = trainer.global_step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.grad_norms[self.step] = torch.nn.utils.get_total_norm(grads).item()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.losses[self.step] = outputs["loss"].item()

    def on_train_end(self, trainer, pl_module) -> None:
        self.step = None


class HostReads(TorchDispatchMode):
    """Counts reads of tensor values by the host (``.item()``, ``float()``, ``bool()``) made by this
    project's code, by optimizer step."""

    def __init__(self, windows: StepWindows):
        super().__init__()
        self.windows = windows
        self.steps: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and self.windows.step is not None:
            frames = traceback.extract_stack()
            if any(frame.filename.startswith(PACKAGE) for frame in frames):
                self.steps.append(self.windows.step)
        return func(*args, **(kwargs or {}))


class MemoryLogger(Logger):
    """Keeps what Lightning sends to loggers: {step: {name: value}}."""

    def __init__(self):
        super().__init__()
        self.metrics: dict[int, dict[str, float]] = {}

    name = "memory"
    version = 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.setdefault(step, {}).update(metrics)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def fit_args(tmp_path: Path, corpus: Path, steps: int, every: int, *extra: str) -> list[str]:
    """A tiny fit through the CLI's defaults (progress bar, TensorBoard, callbacks), logging every
    ``every`` steps, no validation after the sanity check."""
    return [
        f"--data.path={corpus}",
        f"--data.cache_dir={tmp_path}/cache",
        *TINY_MODEL,
        "--model.dropout=0.1",
        "--trainer.precision=32-true",
        f"--trainer.max_steps={steps}",
        f"--trainer.log_every_n_steps={every}",
        f"--trainer.val_check_interval={steps + 1}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path}/checkpoints",
        "--sample.print_at_end=false",
        *extra,
    ]


@pytest.mark.parametrize("accumulate", [1, 2])  # 2: tokens_per_sec was logged again after a logging step
def test_logging_work_and_host_reads_happen_at_logging_steps_only(
    tmp_path, small_corpus, monkeypatch, accumulate
):
    monkeypatch.undo()  # the CLI reads CharDataModule's real signature
    every, steps = 4, 12
    windows = StepWindows()
    accumulated = [
        f"--trainer.accumulate_grad_batches={accumulate}",
        f"--trainer.val_check_interval={steps * 4}",
    ]
    args = fit_args(tmp_path, small_corpus, steps, every, *accumulated)  # no validation: a multiple of both
    cli = make_cli(args, callbacks=[windows], run=False)
    memory = MemoryLogger()
    cli.trainer.loggers = [*cli.trainer.loggers, memory]  # beside TensorBoard
    logged_at: list[int] = []
    log = GPTModule.log

    def recording_log(module, name, *args, **kwargs):
        if windows.step is not None:
            logged_at.append(windows.step)
        return log(module, name, *args, **kwargs)

    monkeypatch.setattr(GPTModule, "log", recording_log)
    reads = HostReads(windows)
    with reads:
        cli.trainer.fit(cli.model, cli.datamodule)

    logging_steps = [step for step in range(steps) if (step + 1) % every == 0]  # 3, 7, 11
    assert sorted(set(logged_at)) == logging_steps  # no logging work between them
    assert sorted(set(reads.steps)) == logging_steps  # the finite-loss check, read at logging steps only
    sent = memory.metrics
    assert sorted(sent) == logging_steps, sent
    for step in logging_steps:
        assert set(sent[step]) - {"epoch"} == {"train_loss", "lr", "grad_norm", "tokens_per_sec"}
        # this step's values (Lightning hands callbacks the loss divided by the accumulated batches)
        assert sent[step]["train_loss"] == pytest.approx(windows.losses[step] * accumulate)
        assert sent[step]["grad_norm"] == pytest.approx(windows.grad_norms[step])
    assert len(set(windows.grad_norms.values())) == steps  # the norms tell the steps apart
    assert set(cli.trainer.progress_bar_metrics) >= {"train_loss", "lr", "tokens_per_sec"}


class StrictSyncs(L.Callback):
    """Makes every CUDA synchronisation an error from the start of a step that is not a logging step
    to the start of the next step (after two warm-up steps)."""

    def __init__(self):
        self.strict_steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        step = trainer.global_step
        strict = step >= 2 and (step + 1) % trainer.log_every_n_steps != 0
        torch.cuda.set_sync_debug_mode("error" if strict else "default")
        if strict:
            self.strict_steps.append(step)

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_no_cuda_syncs_between_logging_steps(tmp_path, small_corpus, monkeypatch):
    monkeypatch.undo()  # the CLI reads CharDataModule's real signature
    strict = StrictSyncs()
    args = fit_args(tmp_path, small_corpus, 12, 4, "--trainer.accelerator=cuda", "--model.compile=false")
    cli = make_cli(args, callbacks=[strict], run=False)
    try:
        cli.trainer.fit(cli.model, cli.datamodule)  # raises at the first synchronisation
        assert strict.strict_steps == [2, 4, 5, 6, 8, 9, 10]
        torch.cuda.set_sync_debug_mode("error")
        with pytest.raises(RuntimeError):  # the mode catches a host read here
            torch.ones(1, device="cuda").item()
    finally:
        torch.cuda.set_sync_debug_mode("default")
