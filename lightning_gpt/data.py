"""Corpus -> token ids -> batches. The DataModule only moves data; the model lives elsewhere."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from lightning_gpt.config import GPTConfig
from lightning_gpt.corpus import MappedSlice, TokenCache, build_token_cache
from lightning_gpt.download import SHAKESPEARE_SHA256, SHAKESPEARE_URL, download
from lightning_gpt.errors import UserError
from lightning_gpt.tokenizer import CharTokenizer


def batch_seed(seed: int, rank: int, batch: int) -> int:
    """A distinct 63-bit seed for each (run seed, DDP rank, batch number)."""
    return ((seed * 1_000_003 + rank) * 1_000_000_007 + batch) % (2**63)


class _MappedTokensPickle:
    """Pickles memory-mapped ``self.tokens`` as a ``MappedSlice``, so a spawned worker maps it again."""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "tokens": getattr(self.tokens, "mapped_slice", self.tokens)}

    def __setstate__(self, state: dict) -> None:
        tokens = state["tokens"]
        self.__dict__.update(state, tokens=tokens.open() if isinstance(tokens, MappedSlice) else tokens)


@dataclass(eq=False)
class RandomWindows(_MappedTokensPickle, IterableDataset):
    """Endless batches of random windows: x = data[i : i+T], y = data[i+1 : i+T+1], each [B, T].

    Batch g's offsets come from a generator seeded by (seed, rank, g): each DDP rank draws its own,
    worker w of W makes g = start + w, start + w + W, ..., and a resume at ``start`` repeats the run.
    """

    tokens: torch.Tensor
    context_length: int
    batch_size: int
    seed: int
    rank: int = 0
    start: int = 0

    def batch(self, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``number`` of this rank's stream: x [B, T], y [B, T]."""
        generator = torch.Generator().manual_seed(batch_seed(self.seed, self.rank, number))
        num_starts = len(self.tokens) - self.context_length  # last start i has i + T + 1 == len
        starts = torch.randint(num_starts, (self.batch_size,), generator=generator)  # [B]
        index = starts[:, None] + torch.arange(self.context_length + 1)  # [B, T+1]
        # through NumPy: torch < 2.10 cannot index uint16 tensors (vocabularies over 256 characters)
        window = torch.from_numpy(self.tokens.numpy()[index.numpy()]).long()  # [B, T+1]
        return window[:, :-1], window[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker = get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker else (0, 1)
        for number in itertools.count(self.start + first, step):
            yield self.batch(number)


@dataclass(eq=False)
class ConsecutiveWindows(_MappedTokensPickle, Dataset):
    """Non-overlapping windows covering the split in order: the same windows on every run."""

    tokens: torch.Tensor
    context_length: int

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.context_length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.context_length
        window = self.tokens[start : start + self.context_length + 1].long()  # [T+1]
        return window[:-1], window[1:]  # x [T], y [T]


class CharDataModule(L.LightningDataModule):
    """Tiny Shakespeare (downloaded, sha256-checked) or any UTF-8 text, per character.

    The corpus is encoded once into a token cache under ``cache_dir`` and memory-mapped from there
    (see ``lightning_gpt.corpus``), so corpora much larger than memory train.

    Args:
        path: a UTF-8 text file, or a folder whose .txt files (recursively, in sorted path order,
            joined by a blank line) form the corpus; when unset, ``url`` is downloaded into ``cache_dir``.
        url: where to download the corpus from when ``path`` is unset.
        sha256: expected hash of the download (``None`` skips the check).
        cache_dir: folder for downloads and token caches.
        filename: name of the downloaded file inside ``cache_dir``.
        batch_size: windows per batch (per device).
        context_length: window length T; linked from ``model.context_length`` by the CLI.
        val_fraction: the last part of the corpus held out for validation.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        path: str | None = None,
        url: str = SHAKESPEARE_URL,
        sha256: str | None = SHAKESPEARE_SHA256,
        cache_dir: str = "data",
        filename: str = "tinyshakespeare.txt",
        batch_size: int = 64,
        context_length: int = GPTConfig.context_length,
        val_fraction: float = 0.1,
        num_workers: int = 0,
    ):
        super().__init__()
        if batch_size < 1:
            raise UserError(f"data.batch_size must be at least 1, got {batch_size}")
        if not 0.0 < val_fraction < 1.0:
            raise UserError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
        if num_workers < 0:
            raise UserError(f"data.num_workers must be 0 (no worker processes) or more, got {num_workers}")
        self.path = path
        self.url = url
        self.sha256 = sha256
        self.cache_dir = cache_dir
        self.filename = filename
        self.batch_size = batch_size
        self.context_length = context_length
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.tokenizer: CharTokenizer | None = None
        self.train_tokens: torch.Tensor | None = None
        self.val_tokens: torch.Tensor | None = None
        self.prompts: list[str] = []  # filled by the CLI for predict
        self._run_seed: int | None = None
        self._cache: TokenCache | None = None

    @property
    def corpus_path(self) -> Path:
        return Path(self.path) if self.path else Path(self.cache_dir) / self.filename

    def token_cache(self) -> TokenCache:
        """The corpus's token cache, built on first use and reused while the corpus is unchanged."""
        return build_token_cache(self.corpus_path, self.cache_dir)

    def prepare_data(self) -> None:
        if self.trainer is not None and self.trainer.state.fn == "predict":  # generation needs no corpus
            return
        if not self.path:
            download(self.url, self.corpus_path, self.sha256)
        self._cache = self.token_cache()  # built here once (local rank 0), so the other ranks only map it
        if self.trainer is None or self.trainer.world_size == 1:  # else in setup, on every rank at once
            self._split_at(self._cache)  # a corpus too short is refused before the loggers make a run folder

    def setup(self, stage: str) -> None:
        if stage == "fit":  # a new fit draws with the seed set now (a resume takes the saved one)
            self._run_seed = None
        if self.tokenizer is not None or stage == "predict":
            return
        cache = self._cache or self.token_cache()  # prepare_data checked it in this process: not hashed again
        self.tokenizer = CharTokenizer(cache.vocab)
        split = self._split_at(cache)
        self.train_tokens, self.val_tokens = cache.tokens(0, split), cache.tokens(split)

    def _split_at(self, cache: TokenCache) -> int:
        """Where validation starts; UserError if either part has no window of context_length + 1."""
        split = int(cache.length * (1.0 - self.val_fraction))
        for name, length in (("training", split), ("validation", cache.length - split)):
            if length < self.context_length + 1:
                raise UserError(
                    f"the {name} split of {self.corpus_path} has {length} characters, fewer than "
                    f"context_length + 1 = {self.context_length + 1}; use a longer corpus or a smaller "
                    "--model.context_length"
                )
        return split

    @property
    def vocab(self) -> str:
        """The sorted vocabulary of the corpus (available after ``setup``)."""
        if self.tokenizer is None:
            raise RuntimeError("call setup() before reading the vocabulary")
        return self.tokenizer.vocab

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        # Resuming: global_step was restored before this call; skip the batches already trained on.
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer is not None else 0
        if self._run_seed is None:  # PL_GLOBAL_SEED: set by seed_everything / the CLI's seed_everything
            self._run_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        seed = self._run_seed
        windows = RandomWindows(self.train_tokens, self.context_length, self.batch_size, seed, rank, start)
        return self._loader(windows, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        windows = ConsecutiveWindows(self.val_tokens, self.context_length)
        trainer, sampler = self.trainer, None
        if trainer is not None and trainer.world_size > 1:
            if len(windows) < trainer.world_size:  # a rank without a window fails in the sampler
                raise UserError(
                    f"the validation split of {self.corpus_path} has {len(windows)} windows of "
                    f"context_length {self.context_length}, fewer than the {trainer.world_size} processes; "
                    "use a longer corpus, a larger --data.val_fraction or fewer devices"
                )
            # Every window once over all ranks: Lightning's default DistributedSampler would repeat some
            # to give every rank as many, and val_loss would depend on the number of devices.
            sampler = UnrepeatedDistributedSampler(
                windows, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return self._loader(windows, self.batch_size, sampler)

    def _loader(self, dataset: Dataset, batch_size: int | None, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # for a CUDA run only: pinning opens a CUDA context (on GPU 0, in every rank) even for a CPU run
            pin_memory=self.trainer is not None and self.trainer.strategy.root_device.type == "cuda",
            # Its own generator: an iterator drawing from the global RNG would shift resumed dropout masks.
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=_leave_signals_to_the_trainer,
        )

    def state_dict(self) -> dict[str, int]:
        """The run's data seed, so a resumed run draws the same windows."""
        return {"seed": self._run_seed} if self._run_seed is not None else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._run_seed = state.get("seed", self._run_seed)

    def predict_dataloader(self) -> DataLoader:
        """One item per prompt: ``{"prompt": str, "index": int}``."""
        items = [{"prompt": prompt, "index": i} for i, prompt in enumerate(self.prompts)]
        return DataLoader(items, batch_size=None)


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """Workers ignore the SIGINT and SIGTERM sent to every process of a run (Ctrl-C in a terminal,
    SLURM, systemd): the trainer's process finishes its step (which may need their batches), saves and
    then ends them. A worker whose trainer is gone exits by itself (PyTorch watches the parent)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
