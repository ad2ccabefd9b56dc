"""Where generated text goes: stdout as each prompt finishes, and optionally a file."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


class SampleWriter(BasePredictionWriter):
    """Prints each prompt's samples (LightningCLI discards what ``trainer.predict`` returns)."""

    def __init__(self, output: str | None = None, headers: bool = False):
        super().__init__(write_interval="batch")
        self.output = Path(output) if output else None
        self.headers = headers
        self.texts: list[str] = []

    def write_on_batch_end(
        self,
        trainer,
        pl_module,
        prediction: list[str],
        batch_indices,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for sample, text in enumerate(prediction):
            block = (
                f"==> prompt {batch['index'] + 1}, sample {sample + 1} <==\n{text}" if self.headers else text
            )
            self.texts.append(block)
            print(block, flush=True)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.output is not None and trainer.is_global_zero:
            write_atomically(self.output, "\n".join(self.texts) + "\n")
            print(f"wrote {len(self.texts)} samples to {self.output}", file=sys.stderr)
