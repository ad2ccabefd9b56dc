import itertools
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.utilities import rank_zero_only
from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only

from lightning_gpt.corpus import read_corpus
from lightning_gpt.data import CharDataModule, ConsecutiveWindows, RandomWindows, batch_seed
from lightning_gpt.errors import UserError


def setup_module_for(path, **kwargs) -> CharDataModule:
    data = CharDataModule(path=str(path), **kwargs)
    data.prepare_data()
    data.setup("fit")
    return data


def test_split_sizes_on_shakespeare(shakespeare_path):
    data = setup_module_for(shakespeare_path)
    assert len(data.train_tokens) == 1_003_854
    assert len(data.val_tokens) == 111_540
    assert data.train_tokens.dtype == torch.uint8
    assert len(data.vocab) == 65


def offsets_of(x: torch.Tensor, tokens: torch.Tensor) -> list[int]:
    """Where each row of x [B, T] starts in tokens (windows are exact slices of the corpus)."""
    T = x.shape[1]
    windows = tokens.long().unfold(0, T, 1)  # [N - T + 1, T]
    found = []
    for row in x:
        matches = (windows == row).all(dim=1).nonzero().flatten()
        assert len(matches) >= 1, "a training window is not a slice of the corpus"
        found.append(int(matches[0]))
    return found


def test_training_batches_are_shifted_windows(small_corpus):
    data = setup_module_for(small_corpus, batch_size=4, context_length=16)
    x, y = next(iter(RandomWindows(data.train_tokens, 16, 4, seed=0)))
    assert x.shape == y.shape == (4, 16)
    assert x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    for offset, row_y in zip(offsets_of(x, data.train_tokens), y, strict=True):
        assert torch.equal(row_y, data.train_tokens[offset + 1 : offset + 17].long())


def test_every_window_start_is_drawn_and_none_past_the_end():
    tokens = torch.arange(20, dtype=torch.uint8)  # T = 16: windows of 17 tokens start at 0 .. 3
    x, y = RandomWindows(tokens, 16, batch_size=64, seed=0).batch(0)
    assert set(x[:, 0].tolist()) == {0, 1, 2, 3} and y[:, -1].max() == 19  # the corpus's last token


def test_a_resumed_datamodule_draws_with_the_saved_seed(small_corpus, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")
    first = setup_module_for(small_corpus, batch_size=4, context_length=16)
    batch = next(iter(first.train_dataloader()))[0]
    monkeypatch.setenv("PL_GLOBAL_SEED", "2")  # a resume without the first run's --seed_everything
    resumed = setup_module_for(small_corpus, batch_size=4, context_length=16)
    resumed.load_state_dict(first.state_dict())  # as Lightning restores it from the checkpoint
    assert torch.equal(next(iter(resumed.train_dataloader()))[0], batch)


def test_same_seed_same_batches_other_rank_other_batches(small_corpus):
    data = setup_module_for(small_corpus, batch_size=8, context_length=16)

    def first(seed, rank):
        return next(iter(RandomWindows(data.train_tokens, 16, 8, seed=seed, rank=rank)))[0]

    assert torch.equal(first(7, 0), first(7, 0))
    assert not torch.equal(first(7, 0), first(7, 1))
    assert not torch.equal(first(7, 0), first(8, 0))


def test_dataloader_workers_draw_different_windows(small_corpus):
    data = setup_module_for(small_corpus, batch_size=8, context_length=16, num_workers=2)
    loader = data.train_dataloader()
    batches = [x for x, _ in itertools.islice(iter(loader), 4)]  # workers take turns
    starts = [tuple(offsets_of(x, data.train_tokens)) for x in batches]
    assert len(set(starts)) == 4, "two dataloader workers produced the same windows"
    again = [x for x, _ in itertools.islice(iter(data.train_dataloader()), 4)]
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))  # reproducible


def test_validation_windows_are_fixed_and_cover_the_split(small_corpus):
    data = setup_module_for(small_corpus, batch_size=4, context_length=16)
    windows = ConsecutiveWindows(data.val_tokens, 16)
    assert len(windows) == (len(data.val_tokens) - 1) // 16
    x0, y0 = windows[0]
    x1, _ = windows[1]
    assert torch.equal(x0, data.val_tokens[:16].long()) and torch.equal(y0, data.val_tokens[1:17].long())
    assert torch.equal(x1, data.val_tokens[16:32].long())
    first = [torch.cat(b) for b in data.val_dataloader()]
    second = [torch.cat(b) for b in data.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_bad_corpora_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_corpus(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="is empty"):
        read_corpus(empty)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(b"caf" + b"\xe9 au lait")
    with pytest.raises(UserError, match="byte 0xe9 at offset 3"):
        read_corpus(latin)
    short = tmp_path / "short.txt"
    short.write_text("a short text " * 10)
    with pytest.raises(UserError, match="fewer than context_length"):
        setup_module_for(short, context_length=64)


def test_a_split_needs_one_window_of_context_length_plus_one_characters(tmp_path):
    """A 16-character validation split of a 160-character corpus has no window of 16 + 1: refused at
    setup (it gave an empty validation); 17 characters make one window."""
    short, enough = tmp_path / "corpus160.txt", tmp_path / "corpus170.txt"
    short.write_text("abcdefghij" * 16)
    enough.write_text("abcdefghij" * 17)
    with pytest.raises(UserError, match=r"validation split .* has 16 characters, fewer than"):
        setup_module_for(short, context_length=16, cache_dir=str(tmp_path / "cache"))
    data = setup_module_for(enough, context_length=16, cache_dir=str(tmp_path / "cache"))
    assert len(data.val_tokens) == 17 and len(ConsecutiveWindows(data.val_tokens, 16)) == 1


def test_memory_is_pinned_for_cuda_runs_only(small_corpus, monkeypatch):
    """Before, a CPU run on a machine with a GPU pinned its batches: a CUDA context in every rank."""
    data = setup_module_for(small_corpus, context_length=16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    data.trainer = Trainer(accelerator="cpu", logger=False)
    assert not data.train_dataloader().pin_memory and not data.val_dataloader().pin_memory


def test_fewer_validation_windows_than_processes_is_one_line(small_corpus, monkeypatch):
    """Before, the ranks without a window failed in Lightning's sampler (an assertion, ~110 lines)."""
    data = setup_module_for(small_corpus, context_length=16)
    windows = len(ConsecutiveWindows(data.val_tokens, 16))
    monkeypatch.setenv("LOCAL_RANK", str(windows))  # this process: the last of windows + 1 ranks
    for rank_zero in (rank_zero_only, utils_rank_zero_only):  # set by the strategy: put back afterwards
        monkeypatch.setattr(rank_zero, "rank", rank_zero.rank)  # (else rank_zero_warn is silent later on)
    data.trainer = Trainer(accelerator="cpu", devices=windows + 1, strategy="ddp", logger=False)
    message = f"has {windows} windows of context_length 16, fewer than the {windows + 1} processes"
    with pytest.raises(UserError, match=message):
        data.val_dataloader()


def test_as_many_validation_windows_as_processes_is_enough(small_corpus, monkeypatch):
    data = setup_module_for(small_corpus, context_length=16)
    windows = len(ConsecutiveWindows(data.val_tokens, 16))
    monkeypatch.setenv("LOCAL_RANK", str(windows - 1))  # this process: the last of as many ranks
    for rank_zero in (rank_zero_only, utils_rank_zero_only):
        monkeypatch.setattr(rank_zero, "rank", rank_zero.rank)
    data.trainer = Trainer(accelerator="cpu", devices=windows, strategy="ddp", logger=False)
    assert len(list(data.val_dataloader())) == 1  # its one window


def test_no_two_seed_rank_batch_triples_share_a_batch_seed():
    """Else in a sweep of seeds on several devices, a rank of one run would draw another run's windows."""
    triples = itertools.product(range(20), range(8), range(50))
    assert len({batch_seed(seed, rank, batch) for seed, rank, batch in triples}) == 20 * 8 * 50


def test_each_node_draws_and_validates_by_its_global_rank(small_corpus, monkeypatch):
    """Two nodes of two devices: the second node's second process is rank 3, not its local rank 1 (the
    nodes would draw the same windows and validate the same quarter twice)."""
    data = setup_module_for(small_corpus, context_length=16)
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    for rank_zero in (rank_zero_only, utils_rank_zero_only):  # set by the strategy: put back afterwards
        monkeypatch.setattr(rank_zero, "rank", rank_zero.rank)
    data.trainer = Trainer(accelerator="cpu", devices=2, num_nodes=2, strategy="ddp", logger=False)
    assert data.trainer.global_rank == 3
    assert data.train_dataloader().dataset.rank == 3
    assert data.val_dataloader().sampler.rank == 3


def test_a_reused_datamodule_draws_with_each_new_seed(small_corpus, tmp_path):
    """A sweep in a notebook reuses the DataModule: its second fit drew the first fit's windows."""
    import lightning as L

    from lightning_gpt.module import GPTModule

    data = CharDataModule(path=str(small_corpus), cache_dir=str(tmp_path), batch_size=4, context_length=16)
    firsts = []

    class FirstBatch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            firsts.append(batch[0].clone())

    quiet = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    for seed in (1, 2, 1):
        L.seed_everything(seed, verbose=False)
        model = GPTModule(d_model=16, num_heads=2, num_blocks=1, context_length=16, warmup_steps=1)
        trainer = L.Trainer(max_steps=1, limit_val_batches=0, callbacks=[FirstBatch()], **quiet)
        trainer.fit(model, data)
    assert not torch.equal(firsts[0], firsts[1]) and torch.equal(firsts[0], firsts[2])


def test_dataloader_workers_leave_ctrl_c_and_sigterm_to_the_trainer(small_corpus):
    """Ctrl-C, SLURM and systemd signal every process of a run: a worker that died of it would take the
    batches of the step the trainer finishes before saving (the trainer's side: tests/test_resume.py)."""
    data = setup_module_for(small_corpus, batch_size=2, context_length=8, num_workers=1)
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    before = set(children.read_text().split())
    batches = iter(data.train_dataloader())
    next(batches)
    (worker,) = (int(pid) for pid in set(children.read_text().split()) - before)
    for signum in (signal.SIGINT, signal.SIGTERM):
        os.kill(worker, signum)
    time.sleep(0.5)  # time for a signal's default action
    assert Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # not exited
    for _ in range(8):  # more than the batches it had prepared before the signals
        x, y = next(batches)
        assert x.shape == y.shape == (2, 8)
    del batches  # stops the worker
