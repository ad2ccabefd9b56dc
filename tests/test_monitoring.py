"""Monitoring: the loss-curve plot of real runs, TextSampler and train/eval modes, the console script."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import ROOT, TINY, Events
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_gpt import callbacks
from lightning_gpt.callbacks import TextSampler, TrainingSpeed
from lightning_gpt.data import CharDataModule
from lightning_gpt.module import GPTModule

PLOT = ROOT / "benchmarks" / "plot_loss_curve.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOCAB = "\n !,.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def run_plot(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``benchmarks/plot_loss_curve.py ARGS`` in a subprocess (text output)."""
    return subprocess.run(
        [sys.executable, str(PLOT), *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def table_rows(stdout: str) -> list[tuple[int, float, str]]:
    """The (step, wall seconds, val_loss as printed) rows of the script's table."""
    rows = []
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0].isdigit():
            rows.append((int(fields[0]), float(fields[1]), fields[2]))
    return rows


def test_tokens_per_sec_counts_the_tokens_of_every_process(monkeypatch):
    clock, logged = iter([10.0, 11.0, 50.0, 51.0, 52.0, 53.0]), {}
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    trainer = SimpleNamespace(world_size=4, log_every_n_steps=2, accumulate_grad_batches=1)
    module = SimpleNamespace(log=lambda name, value, **kwargs: logged.update({name: float(value)}))
    speed, batch = TrainingSpeed(), (None, torch.zeros(8, 16))  # targets: 128 tokens on each process
    for trainer.global_step in (1, 2):  # the end of the first step starts the clock
        speed.on_train_batch_end(trainer, module, None, batch, trainer.global_step - 1)
    assert logged == {"tokens_per_sec": 4 * 128 / 1.0}
    speed.on_validation_end(trainer, module)  # 39 s of validation: not training time
    logged.clear()
    for trainer.global_step in (3, 4):  # the first step after it starts the clock again
        speed.on_train_batch_end(trainer, module, None, batch, trainer.global_step - 1)
    assert logged == {"tokens_per_sec": 4 * 128 / 1.0}
    logged.clear()
    for trainer.global_step in (5, 6):  # the next interval counts its own tokens only, over 2 s
        speed.on_train_batch_end(trainer, module, None, batch, trainer.global_step - 1)
    assert logged == {"tokens_per_sec": 2 * 4 * 128 / 2.0}


def test_plot_loss_curve_reads_a_real_run(tmp_path, tiny_checkpoint):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tiny_checkpoint.parent.parent / "lightning_logs" / "version_0"  # the shared tiny fit
    events = EventAccumulator(str(run_dir))
    events.Reload()
    logged = [(event.step, f"{event.value:.4f}") for event in events.Scalars("val_loss")]
    assert len(logged) == 2  # validations after steps 15 and 30
    for loss, bpc, ppl in zip(
        *(events.Scalars(name) for name in ("val_loss", "val_bpc", "val_ppl")), strict=True
    ):
        assert (bpc.value, ppl.value) == pytest.approx(
            (loss.value / math.log(2), math.exp(loss.value)), rel=1e-5
        )

    for x in ("step", "wall"):
        out = tmp_path / "plots" / f"loss_{x}.png"
        args = ["--run", f"tiny run={run_dir}", "--not-measured", "GPU seed recipe", "--x", x]
        result = run_plot(*args, "--out", str(out), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        image = out.read_bytes()
        assert image.startswith(PNG_SIGNATURE)
        assert len(image) > 10_000
        rows = table_rows(result.stdout)
        assert [(step, value) for step, _, value in rows] == logged
        walls = [wall for _, wall, _ in rows]
        assert 0 <= walls[0] <= walls[1]
        assert f"tiny run ({run_dir})" in result.stdout
        assert "GPU seed recipe: not measured" in result.stdout


def _event_file_without_val_loss(folder: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    writer.add_scalar("train_loss", 4.0, 0)
    writer.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: folder.mkdir(), "no TensorBoard event file"),
        (lambda folder: None, "does not exist"),
        (_event_file_without_val_loss, "no val_loss scalar"),
    ],
    ids=["empty folder", "missing folder", "no val_loss"],
)
def test_plot_loss_curve_fails_in_one_line(tmp_path, make: Callable[[Path], None], message: str):
    run_dir = tmp_path / "run"
    make(run_dir)
    out = tmp_path / "loss.png"
    result = run_plot("--run", f"broken={run_dir}", "--out", str(out), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not out.exists()


def modes(module: GPTModule) -> dict[str, bool]:
    """The ``training`` flag of the module and of every submodule, by name."""
    return {name: submodule.training for name, submodule in module.named_modules()}


def _block_eval(module: GPTModule) -> None:
    module.train()
    module.model.blocks[0].eval()  # a frozen block, as when fine-tuning


def _block_train(module: GPTModule) -> None:
    module.eval()
    module.model.blocks[-1].train()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_text_sampler_keeps_a_uniform_mode(training: bool):
    module = GPTModule(**TINY, vocab=VOCAB).train(training)
    before = modes(module)
    text = TextSampler(prompt="ROMEO:", max_new_tokens=12, seed=0).sample(module)
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 12
    assert modes(module) == before


def test_text_sampler_logs_at_every_nth_validation(tmp_path, monkeypatch):
    steps = []  # of the samples sent to TensorBoard

    class Recording(TensorBoardLogger):
        @property
        def experiment(self):
            return SimpleNamespace(add_text=lambda tag, text, global_step: steps.append(global_step))

    state = SimpleNamespace(fn="fit")
    trainer = SimpleNamespace(
        sanity_checking=False, is_global_zero=True, state=state, loggers=[Recording(tmp_path)]
    )
    sampler = TextSampler(every_n_validations=3)
    monkeypatch.setattr(sampler, "sample", lambda module: "text")
    for trainer.global_step in range(1, 8):  # validations 1 .. 7
        sampler.on_validation_end(trainer, None)
    assert steps == [3, 6]


def test_text_sampler_passes_keep_to_generation():
    torch.manual_seed(0)
    module = GPTModule(**TINY, vocab=VOCAB)
    with torch.no_grad():
        for parameter in module.parameters():  # sharper distributions: the window matters
            parameter.normal_(0.0, 0.5)
    sampler = TextSampler(prompt="ROMEO:", max_new_tokens=80, temperature=1.0, seed=0, keep=32)
    text = sampler.sample(module)  # 86 characters: well past the 32-character context
    assert text == module.generate_text("ROMEO:", 80, temperature=1.0, seed=0, keep=32)
    assert text != module.generate_text("ROMEO:", 80, temperature=1.0, seed=0)  # keep 16


@pytest.mark.parametrize(
    "mix", [_block_eval, _block_train], ids=["train, block 0 eval", "eval, last block train"]
)
def test_text_sampler_keeps_mixed_modes(mix: Callable[[GPTModule], None]):
    module = GPTModule(**TINY, vocab=VOCAB)
    mix(module)
    before = modes(module)
    assert len(set(before.values())) == 2  # really mixed
    TextSampler(prompt="ROMEO:", max_new_tokens=12, seed=0).sample(module)
    changed = sorted(name for name, training in modes(module).items() if training != before[name])
    assert changed == []


class ModeRecorder(L.Callback):
    """Records every submodule's mode in on_validation_end and on_fit_end; with ``freeze`` it also
    puts block 0 in eval mode when training starts, so the modes are mixed."""

    def __init__(self, freeze: bool = False):
        self.freeze = freeze
        self.records: dict[str, list[dict[str, bool]]] = {"validation_end": [], "fit_end": []}

    def on_train_start(self, trainer, pl_module) -> None:
        if self.freeze:
            pl_module.model.blocks[0].eval()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.records["validation_end"].append(modes(pl_module))

    def on_fit_end(self, trainer, pl_module) -> None:
        self.records["fit_end"].append(modes(pl_module))


class CountingSampler(TextSampler):
    """TextSampler that keeps its samples, to show it really sampled."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.samples: list[str] = []

    def sample(self, pl_module) -> str:
        text = super().sample(pl_module)
        self.samples.append(text)
        return text


@pytest.fixture(scope="module")
def recorded_fit(tmp_path_factory, shakespeare: str) -> tuple[ModeRecorder, CountingSampler, ModeRecorder]:
    """A real 4-step fit, validating every 2 steps, with the sampler between two mode recorders."""
    root = tmp_path_factory.mktemp("sampler_fit")
    corpus = root / "corpus.txt"
    corpus.write_text(shakespeare[:20_000], encoding="utf-8")
    before, after = ModeRecorder(freeze=True), ModeRecorder()
    sampler = CountingSampler(prompt="ROMEO:", max_new_tokens=12, print_at_end=True)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=4,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        log_every_n_steps=1,
        logger=TensorBoardLogger(str(root), name="logs"),
        callbacks=[before, sampler, after],  # hooks run in this order
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )
    data = CharDataModule(path=str(corpus), batch_size=8, context_length=32, cache_dir=str(root / "cache"))
    trainer.fit(GPTModule(**TINY, warmup_steps=2), datamodule=data)
    return before, sampler, after


def test_text_sampler_in_a_real_fit_keeps_modes_at_validation_end(recorded_fit):
    before, sampler, after = recorded_fit
    assert len(sampler.samples) == 3  # two validations, then the end of fit
    assert len(before.records["validation_end"]) == 2
    assert after.records["validation_end"] == before.records["validation_end"]
    at_fit_end = before.records["fit_end"][0]
    assert at_fit_end["model"] and not at_fit_end["model.blocks.0"]  # mixed modes reach on_fit_end


def test_text_sampler_in_a_real_fit_keeps_modes_at_fit_end(recorded_fit):
    before, _, after = recorded_fit
    assert after.records["fit_end"] == before.records["fit_end"]


def test_the_sampler_samples_during_fit_only(tmp_path, monkeypatch):
    """A user's TensorBoardLogger on validate (or Trainer.validate from Python) gets no samples, and the
    validation does not count towards every_n_validations."""
    texts = []

    class Recording(TensorBoardLogger):
        @property
        def experiment(self):
            return SimpleNamespace(add_text=lambda tag, text, global_step: texts.append(global_step))

    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        state=SimpleNamespace(fn="validate"),
        loggers=[Recording(tmp_path)],
        global_step=5,
    )
    sampler = TextSampler()
    monkeypatch.setattr(sampler, "sample", lambda module: "text")
    sampler.on_validation_end(trainer, None)
    assert texts == [] and sampler._validations == 0
    trainer.state.fn = "fit"
    sampler.on_validation_end(trainer, None)
    assert texts == [5]


def test_the_sample_printed_at_the_end_of_fit_is_flushed(monkeypatch):
    """Piped (``| tee``), the sample must not wait in the buffer for the end of the process."""
    events = []
    monkeypatch.setattr(sys, "stdout", Events(events))
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    sampler = TextSampler()
    monkeypatch.setattr(sampler, "sample", lambda module: "text")
    sampler.on_fit_end(SimpleNamespace(is_global_zero=True, global_step=3), SimpleNamespace(model=object()))
    assert ("write", "text") in events and events[-1] == ("flush",)
