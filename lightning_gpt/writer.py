"""Where generated text goes: stdout as each prompt finishes, and optionally a file."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_gpt.atomic import write_atomically
from lightning_gpt.errors import UserError


def check_stdout(vocab: str) -> None:
    """One line before generating, not a traceback midway, if stdout cannot print every character the
    model may write (``PYTHONIOENCODING=ascii``; a Windows pipe and a vocabulary with emoji)."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        vocab.encode(encoding, getattr(sys.stdout, "errors", None) or "strict")
    except UnicodeEncodeError as error:
        raise UserError(
            f"standard output ({encoding}) cannot print {ascii(vocab[error.start])}, a character of the "
            "model's vocabulary; set PYTHONIOENCODING=utf-8 (or PYTHONUTF8=1)"
        ) from None


class SampleWriter(BasePredictionWriter):
    """Prints each prompt's samples (LightningCLI discards what ``trainer.predict`` returns)."""

    def __init__(self, output: str | None = None, headers: bool = False):
        super().__init__(write_interval="batch")
        self.output = output or None  # a path or a URL (s3://, memory://): not a Path, which drops "//"
        self.headers = headers
        self.texts: list[str] = []

    def write_on_batch_end(self, trainer, pl_module, prediction: list[str], indices, batch: dict, *_) -> None:
        for sample, text in enumerate(prediction):
            header = f"==> prompt {batch['index'] + 1}, sample {sample + 1} <==\n"
            block = header + text if self.headers else text
            self.texts.append(block)
            print(block, flush=True)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.output is not None and trainer.is_global_zero:
            text = "\n".join(self.texts) + "\n"
            try:
                write_atomically(self.output, lambda file: file.write(text.encode("utf-8")))
            except OSError as error:
                raise UserError(
                    f"cannot write --generate.output {self.output}: {error.strerror}; the samples are above"
                ) from None
            count = f"{len(self.texts)} sample" + ("s" if len(self.texts) > 1 else "")
            print(f"wrote {count} to {self.output}", file=sys.stderr)
