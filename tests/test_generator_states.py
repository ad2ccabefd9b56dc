"""Random generator states: a resumed fit gives each rank its own back; nothing else restores them."""

import random

import numpy as np
import pytest
import torch
from conftest import tiny_fit_args

from lightning_gpt.rng import restore_rng_states, rng_states, set_rng_states


@pytest.fixture
def keep_generators():
    """Give the other tests the generator states these tests found."""
    states = rng_states()
    yield
    set_rng_states(states)


def seeded_states(seed: int) -> dict:
    torch.manual_seed(seed)
    random.seed(seed)
    random.gauss(0, 1)  # makes a pair and keeps the second for the next call: part of the state
    np.random.seed(seed)
    np.random.normal()  # the same for NumPy's legacy generator
    return rng_states()


def draws() -> list[float]:
    """The next number of the torch, Python and NumPy generators (and the Gaussians they keep)."""
    python = [random.random(), random.gauss(0, 1)]
    return [torch.rand(()).item(), *python, float(np.random.normal()), float(np.random.rand())]


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
    assert "of 2 process(es) and this run has 1: a resume with another number" in note
    # two saved, three running: rank 2 has no entry and keeps its fresh streams
    seeded_states(99)
    note = restore_rng_states([one, two], rank=2, world_size=3)
    assert draws() == fresh
    assert "of 2 process(es) and this run has 3" in note


@pytest.mark.parametrize("subcommand", ["validate", "predict"])
def test_validate_and_predict_do_not_restore_the_saved_generator_states(
    tiny_checkpoint, tmp_path, cli_main, keep_generators, subcommand
):
    """Only a resumed fit takes the saved generator states back: a notebook's validate or predict of a
    checkpoint must not reset the caller's torch, Python and NumPy streams to the training run's."""
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["rng_states"] = [seeded_states(99)]  # states of their own, easy to tell
    torch.save(checkpoint, tmp_path / "model.ckpt")
    saved_draws = (set_rng_states(checkpoint["rng_states"][0]), draws())[1]
    corpus = f"--data.path={tiny_checkpoint.parent.parent / 'corpus.txt'}"
    args = [corpus, "--trainer.limit_val_batches=2"] if subcommand == "validate" else []
    args += ["--generate.max_new_tokens=5"] if subcommand == "predict" else []
    result = cli_main(subcommand, "--ckpt_path=model.ckpt", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(after != saved for after, saved in zip(draws(), saved_draws, strict=True))  # every stream


def test_a_resume_with_another_number_of_processes_says_so(bare_dir, small_corpus, cli_main, keep_generators):
    checkpoint = torch.load(bare_dir / "model.ckpt", weights_only=True)
    checkpoint["rng_states"] = checkpoint["rng_states"] * 2  # as two processes save them
    torch.save(checkpoint, bare_dir / "two.ckpt")
    fit = tiny_fit_args(small_corpus, steps=31, val_every=31)
    result = cli_main(*fit, "--ckpt_path=two.ckpt", "--checkpoint.dirpath=resumed", cwd=bare_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "of 2 process(es) and this run has 1: a resume with another number" in result.stderr


def test_the_cuda_state_goes_back_to_the_ranks_own_gpu(monkeypatch, keep_generators):
    """Checked without a GPU: each rank's saved CUDA state reaches ``torch.cuda.set_rng_state`` for its
    own device (a resumed GPU run with dropout repeats the uninterrupted one only then)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((state, device)))
    saved = [{**rng_states(), "cuda": torch.full((16,), rank, dtype=torch.uint8)} for rank in (0, 1)]
    restore_rng_states(saved, rank=1, world_size=2, device=torch.device("cuda", 1))
    ((state, device),) = calls
    assert device == torch.device("cuda", 1) and torch.equal(state, saved[1]["cuda"])
    restore_rng_states(saved, rank=0, world_size=2, device=torch.device("cpu"))
    assert len(calls) == 1  # a CPU process has no CUDA generator to set
