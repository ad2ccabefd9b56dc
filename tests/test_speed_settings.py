"""Settings that make training and decoding fast: precision choice, two-core decoding, the
progress bar's refresh rate and torch.compile (checkpoints must stay plain)."""

import torch
from conftest import run_cli, tiny_fit_args
from torch import nn

from lightning_gpt import matvec
from lightning_gpt.cli import PROGRESS_REFRESH_STEPS, make_cli
from lightning_gpt.config import preset
from lightning_gpt.model import KVCache, project
from lightning_gpt.module import GPTModule


@matvec.pytorch_only()  # the route taken where no compiled kernel is available
def test_project_splits_one_row_over_two_halves_with_the_same_result():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cache = KVCache(preset("tiny"))
        for layer in (nn.Linear(16, 24), nn.Linear(16, 24, bias=False), nn.Linear(16, 7)):
            x = torch.randn(1, 16)
            with torch.inference_mode():
                assert torch.allclose(project(layer, x, cache), layer(x), atol=1e-6)
                assert project(layer, x, cache).shape == (1, layer.out_features)
                rows = torch.randn(3, 16)  # a batch of rows: the plain Linear
                assert torch.equal(project(layer, rows, cache), layer(rows))
            assert (cache.halves(layer) is None) == (layer.out_features % 2 == 1)
        torch.set_num_threads(1)
        one_thread = nn.Linear(16, 24)
        assert KVCache(preset("tiny")).halves(one_thread) is None  # nothing to spread over
    finally:
        torch.set_num_threads(threads)


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
    model = GPTModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert model.generate_text("ROMEO:", 10, temperature=0).startswith("ROMEO:")
