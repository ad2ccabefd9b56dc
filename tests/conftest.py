"""Shared fixtures: the real corpus, small texts, and a runner for ``cli.py`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_gpt.download import SHAKESPEARE_SHA256, SHAKESPEARE_URL, download, sha256_of

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "cli.py"
# Machines without internet get the corpus from ../shared (CI copies it into data/).
CORPUS_CANDIDATES = [
    ROOT / "data" / "tinyshakespeare.txt",
    ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
]

TINY_MODEL = [
    "--model.d_model=32",
    "--model.num_heads=2",
    "--model.num_blocks=2",
    "--model.context_length=32",
    "--model.dropout=0.0",
    "--model.warmup_steps=2",
    "--data.batch_size=8",
]


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """Tiny Shakespeare, verified by sha256: found locally, else downloaded into data/."""
    for candidate in CORPUS_CANDIDATES:
        if candidate.is_file() and sha256_of(candidate) == SHAKESPEARE_SHA256:
            return candidate
    return download(SHAKESPEARE_URL, CORPUS_CANDIDATES[0], SHAKESPEARE_SHA256)


@pytest.fixture(scope="session")
def shakespeare(shakespeare_path: Path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")


@pytest.fixture
def small_corpus(tmp_path: Path, shakespeare: str) -> Path:
    """The first 20,000 characters of Shakespeare (all 65 characters do not appear in it)."""
    path = tmp_path / "small.txt"
    path.write_text(shakespeare[:20_000], encoding="utf-8")
    return path


def run_cli(
    *args: str, cwd: Path, timeout: float = 240, stdin: str | None = None
) -> subprocess.CompletedProcess:
    """Run ``python cli.py ARGS`` in ``cwd`` and return the finished process (text output)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, str(CLI), *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_fit_args(corpus: Path, steps: int = 6, val_every: int = 3) -> list[str]:
    """Arguments for a fit of a tiny model that takes a few seconds."""
    return [
        "fit",
        f"--data.path={corpus}",
        *TINY_MODEL,
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={val_every}",
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
    ]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, shakespeare: str) -> Path:
    """A checkpoint of a tiny model fitted for a few steps on Shakespeare's first 20,000 characters."""
    root = tmp_path_factory.mktemp("tiny_fit")
    corpus = root / "corpus.txt"
    corpus.write_text(shakespeare[:20_000], encoding="utf-8")
    result = run_cli(*tiny_fit_args(corpus, steps=30, val_every=15), cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(autouse=True)
def _token_cache_in_tmp(tmp_path, monkeypatch):
    """Token caches of DataModules built in-process go to the test's tmp folder, not ./data."""
    from lightning_gpt.data import CharDataModule

    original = CharDataModule.__init__

    def init(self, *args, **kwargs):
        kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(CharDataModule, "__init__", init)
