"""Callbacks for the DDP tests: per-rank random streams, and what each rank trained on and ended with."""

import json
import os
import random
import signal

import lightning as L
import numpy as np
import torch


class PerRankSeeds(L.Callback):
    """Seed torch, Python and NumPy differently on every rank (Lightning seeds them all alike).

    ``setup`` runs before a checkpoint is restored, so a resume that handed every rank rank 0's
    streams would show in the dropout masks and the draws ``RankProbe`` records.
    """

    def setup(self, trainer, pl_module, stage):
        seed = 1000 + trainer.global_rank
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)


class RankProbe(L.Callback):
    def __init__(self, folder: str = "probe"):
        self.folder = folder
        self.first_batch: list[list[int]] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_batch is None:
            self.first_batch = batch[0][:, :8].tolist()

    def on_fit_end(self, trainer, pl_module):
        weights = torch.cat([p.detach().flatten().double() for p in pl_module.model.parameters()])
        os.makedirs(self.folder, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "first_batch": self.first_batch,
            "weights_sum": weights.sum().item(),
            "weights_abs_sum": weights.abs().sum().item(),
            "val_loss": trainer.callback_metrics["val_loss"].item(),
            # the next number of each generator: equal only if the streams are where they were
            "draws": [torch.rand(()).item(), random.random(), float(np.random.rand())],
        }
        with open(os.path.join(self.folder, f"rank{trainer.global_rank}.json"), "w") as file:
            json.dump(record, file)


class SignalAt(L.Callback):
    """Sends ``name`` (a signal) once training reaches ``step`` (or, given ``batch``, after that batch
    index): from rank 0 to the whole process group (as Ctrl-C, SLURM and systemd signal every
    process), or with ``rank`` to that rank alone."""

    def __init__(
        self, step: int = 4, name: str = "SIGTERM", rank: int | None = None, batch: int | None = None
    ):
        self.step, self.name, self.rank, self.batch = step, name, rank, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        due = batch_idx == self.batch if self.batch is not None else trainer.global_step == self.step
        if not due:
            return
        number = getattr(signal, self.name)
        if self.rank is None and trainer.global_rank == 0:
            os.killpg(os.getpgid(0), number)
        elif self.rank == trainer.global_rank:
            os.kill(os.getpid(), number)


class PoisonAt(L.Callback):
    """Makes ``rank``'s weights nan before training step ``step`` (counted from 1), on that rank only."""

    def __init__(self, step: int = 4, rank: int = 1):
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.step and trainer.global_rank == self.rank:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))
