"""Settings that make training and decoding fast: precision choice, two-core decoding, the
progress bar's refresh rate and torch.compile (checkpoints must stay plain)."""

import torch
from conftest import run_cli, tiny_fit_args
from torch import nn

from lightning_gpt import precision
from lightning_gpt.cli import PROGRESS_REFRESH_STEPS, make_cli
from lightning_gpt.model import linear, split_weights
from lightning_gpt.module import GPTModule


def test_automatic_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.auto_precision("auto") == "bf16-mixed"
    assert precision.auto_precision("cpu") == "bf16-mixed"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.auto_precision("auto") == "32-true"  # emulated bf16 would be slower
    assert precision.auto_precision("gpu") == "32-true"  # no CUDA, no MPS: Lightning picks the CPU
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert precision.auto_precision("gpu") == "32-true"  # "gpu" is MPS on a Mac: fp32 there
    assert precision.auto_precision("mps") == "32-true"


def test_linear_multiplies_one_row_by_two_halves_with_the_same_result(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the route needs two cores
    split = []  # batched matmuls over the two halves
    for name in ("bmm", "baddbmm"):
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *args, f=original: split.append(f) or f(*args))
    model = nn.Sequential(nn.Linear(16, 24), nn.Linear(16, 24, bias=False), nn.Linear(16, 7))
    halves = split_weights(model)
    assert set(halves) == {model[0], model[1]}  # an odd width cannot be halved
    with torch.inference_mode():
        for layer in model:
            for row in (torch.randn(1, 16), torch.randn(1, 1, 16)):  # [1, in] and [B, T, in] = [1, 1, in]
                split.clear()
                y = linear(layer, row, halves)
                assert y.shape == (*row.shape[:-1], layer.out_features)
                assert len(split) == (layer in halves)
                torch.testing.assert_close(y, layer(row), atol=1e-6, rtol=1e-6)
        layer, row = model[0], torch.randn(1, 16)
        layer.weight.mul_(2)  # in place: the halves are views, so they show it
        torch.testing.assert_close(linear(layer, row, halves), layer(row), atol=1e-6, rtol=1e-6)
        split.clear()
        rows = torch.randn(3, 16)
        assert torch.equal(linear(layer, rows, halves), layer(rows))  # a batch of rows: the plain Linear
        assert not split
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert split_weights(model) == {}  # one thread: nothing to share


def test_progress_bar_redraws_every_few_steps(tmp_path, small_corpus, monkeypatch):
    monkeypatch.undo()  # the CLI reads CharDataModule's real signature (nothing is built here)
    cli = make_cli([f"--data.path={small_corpus}", f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.trainer.progress_bar_callback.refresh_rate == PROGRESS_REFRESH_STEPS == 10
    # (--trainer.enable_progress_bar=false still works: every tiny fit in the tests uses it)


def test_compiled_training_keeps_plain_checkpoints(tmp_path, small_corpus):
    result = run_cli(*tiny_fit_args(small_corpus, steps=4, val_every=2), "--model.compile=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert "compile" not in checkpoint["hyper_parameters"]  # how to run, not what was trained
    keys = list(checkpoint["state_dict"])
    assert "model.token_embedding.weight" in keys
    assert not [key for key in keys if "_orig_mod" in key]
    model = GPTModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert model.generate_text("ROMEO:", 10, temperature=0).startswith("ROMEO:")
