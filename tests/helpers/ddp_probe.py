"""A callback for the DDP test: each rank records what it trained on and its final weights."""

import json
import os

import lightning as L
import torch


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
        }
        with open(os.path.join(self.folder, f"rank{trainer.global_rank}.json"), "w") as file:
            json.dump(record, file)
