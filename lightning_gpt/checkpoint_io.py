"""Checkpoints that are never half-written and never run code when loaded."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_gpt.atomic import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves with ``write_atomically`` (a kill leaves the old or the new file); loads with weights_only."""

    def save_checkpoint(self, checkpoint: dict, path: str | os.PathLike, storage_options=None) -> None:
        write_atomically(path, lambda file: torch.save(checkpoint, file))

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = True) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
