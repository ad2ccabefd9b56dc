"""A checkpoint that carries a pickle payload is refused before the payload can run."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from lightning_gpt.checkpoint_io import check_checkpoint
from lightning_gpt.cli import make_cli
from lightning_gpt.errors import UserError


class Payload:
    """Unpickling this object runs code: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def evil_checkpoint(path: Path, marker: Path, where: str = "top") -> Path:
    """Save at ``path`` what looks like a lightning-gpt checkpoint, with a payload inside it."""
    hparams = {"vocab": "\n !abcdefghijklmnopqrstuvwxyz", "d_model": 32, "num_heads": 2, "num_blocks": 2}
    checkpoint = {
        "state_dict": {"model.embedding.weight": torch.zeros(29, 32)},
        "hyper_parameters": hparams,
        "global_step": 30,
    }
    if where == "top":
        checkpoint["callbacks"] = Payload(marker)
    else:
        hparams["context_length"] = Payload(marker)
    torch.save(checkpoint, path)
    return path


def test_the_payload_is_live(tmp_path):
    """Control: an unsafe load of the same file does run the payload."""
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("where", ["top", "hyper_parameters"])
def test_check_checkpoint_refuses_a_pickle_payload(tmp_path, where):
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path / "evil.ckpt", marker, where)
    with pytest.raises(UserError, match=r"refused to load checkpoint .*evil\.ckpt.*nothing from it was run"):
        check_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("subcommand", ["validate", "predict"])
def test_cli_refuses_a_pickle_payload(tmp_path, subcommand, cli_main):
    marker = tmp_path / "marker"
    evil_checkpoint(tmp_path / "evil.ckpt", marker)
    result = cli_main(subcommand, "--ckpt_path", "evil.ckpt", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr
    assert "evil.ckpt" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_the_trainers_checkpoint_loading_refuses_a_pickle_payload(tmp_path, small_corpus):
    """What a resume and interactive predict load with, whatever was checked before."""
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    args = [f"--data.path={small_corpus}", f"--trainer.default_root_dir={tmp_path}"]
    trainer = make_cli(args, run=False).trainer
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trainer.strategy.checkpoint_io.load_checkpoint(path, weights_only=False)  # even when asked
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trainer.strategy.load_checkpoint(path)
    assert not marker.exists()
