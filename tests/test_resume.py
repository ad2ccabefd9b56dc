"""Exact resume after a kill, and checkpoints that survive kills during saves."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLI, TINY_MODEL

from lightning_gpt.rng import restore_rng_states, rng_states, set_rng_states

# Dropout on and two dataloader workers: both must be resumed exactly.
RUN = [
    *TINY_MODEL,
    "--model.dropout=0.1",
    "--model.decay_steps=60",
    "--data.num_workers=2",
    "--trainer.val_check_interval=20",
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=5",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--sample.print_at_end=false",
]


def fit(cli_main, corpus: Path, cwd: Path, *extra: str) -> None:
    """A fit in this process (the kill below needs a process of its own; these do not)."""
    result = cli_main("fit", f"--data.path={corpus}", *RUN, *extra, cwd=cwd)
    assert result.returncode == 0, result.stderr


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), f"{name} differs after resuming"


def step_of(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["global_step"]
    except Exception:
        return -1


def test_a_stopped_or_killed_run_resumes_bit_for_bit(tmp_path, small_corpus, cli_main):
    fit(cli_main, small_corpus, tmp_path, "--trainer.max_steps=60", "--checkpoint.dirpath=whole")
    # stopped at a checkpoint, then resumed
    fit(
        cli_main,
        small_corpus,
        tmp_path,
        "--trainer.max_steps=27",
        "--checkpoint.dirpath=split",
        "--checkpoint.every_n_train_steps=9",
    )
    assert step_of(tmp_path / "split" / "last.ckpt") == 27
    fit(
        cli_main,
        small_corpus,
        tmp_path,
        "--trainer.max_steps=60",
        "--checkpoint.dirpath=split",
        "--ckpt_path=last",
    )
    assert_same_weights(tmp_path / "whole" / "last.ckpt", tmp_path / "split" / "last.ckpt")
    # killed (SIGKILL) part-way, then resumed
    args = [
        sys.executable,
        str(CLI),
        "fit",
        f"--data.path={small_corpus}",
        *RUN,
        "--trainer.max_steps=60",
        "--checkpoint.dirpath=killed",
        "--checkpoint.every_n_train_steps=3",
    ]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.ckpt"
    deadline = time.monotonic() + 120
    while step_of(last) < 12 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = step_of(last)
    assert 12 <= killed_at < 60, "the run must be killed part-way"
    fit(
        cli_main,
        small_corpus,
        tmp_path,
        "--trainer.max_steps=60",
        "--checkpoint.dirpath=killed",
        "--ckpt_path=last",
    )
    assert step_of(last) == 60
    assert_same_weights(tmp_path / "whole" / "last.ckpt", last)


def test_kills_during_saves_never_corrupt_checkpoints(tmp_path, small_corpus):
    # A larger model saved every step, so many kills land in the middle of a save.
    args = [
        sys.executable,
        str(CLI),
        "fit",
        f"--data.path={small_corpus}",
        *RUN,
        "--model.d_model=256",
        "--model.num_heads=4",
        "--model.num_blocks=4",
        "--trainer.max_steps=1000",
        "--checkpoint.every_n_train_steps=1",
        "--checkpoint.save_top_k=-1",
        "--checkpoint.filename=step{step}",
        "--checkpoint.monitor=null",
    ]
    folder = tmp_path / "checkpoints"
    for attempt in range(3):
        extra = ["--ckpt_path=last"] if (folder / "last.ckpt").exists() else []
        process = subprocess.Popen(
            args + extra, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        saved_before = len(list(folder.glob("*.ckpt"))) if folder.exists() else 0
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if folder.exists() and len(list(folder.glob("*.ckpt"))) >= saved_before + 2 + attempt:
                break
            time.sleep(0.01)
        time.sleep(0.05 * attempt)  # vary the moment of the kill
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    checkpoints = list(folder.glob("*.ckpt"))
    assert len(checkpoints) >= 5 and (folder / "last.ckpt").exists()
    for path in checkpoints:
        assert step_of(path) >= 1, f"{path.name} does not load"


@pytest.fixture
def keep_generators():
    """Give the other tests the generator states these tests found."""
    states = rng_states()
    yield
    set_rng_states(states)


def seeded_states(seed: int) -> dict:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return rng_states()


def draws() -> list[float]:
    """The next number of the torch, Python and NumPy generators."""
    return [torch.rand(()).item(), random.random(), float(np.random.rand())]


def test_each_rank_gets_its_own_generator_states_back(tmp_path, keep_generators):
    per_rank = [seeded_states(1), seeded_states(2)]
    expected = [(seeded_states(seed), draws())[1] for seed in (1, 2)]
    torch.save({"rng_states": per_rank}, tmp_path / "states.pt")
    saved = torch.load(tmp_path / "states.pt", weights_only=True)["rng_states"]
    for rank in (0, 1):
        seeded_states(99)
        assert restore_rng_states(saved, rank, world_size=2) is None
        assert draws() == expected[rank]


def test_old_checkpoints_and_other_world_sizes(keep_generators):
    one, two = seeded_states(1), seeded_states(2)
    expected_one = (seeded_states(1), draws())[1]
    fresh = (seeded_states(99), draws())[1]
    # older checkpoints hold one state, read as rank 0's
    seeded_states(99)
    assert restore_rng_states(one, rank=0, world_size=1) is None
    assert draws() == expected_one
    # two saved, one running: rank 0 restores its own, and a line says what happened
    seeded_states(99)
    note = restore_rng_states([one, two], rank=0, world_size=1)
    assert draws() == expected_one
    assert "of 2 process(es) and this run has 1: restored for rank 0; unused: the states of rank 1" in note
    # two saved, three running: rank 2 has no entry and keeps its fresh streams
    seeded_states(99)
    note = restore_rng_states([one, two], rank=2, world_size=3)
    assert draws() == fresh
    assert "this run has 3: restored for ranks 0-1; fresh streams for rank 2" in note
