"""Where generated text goes: stdout as each prompt finishes, and optionally a file."""

from __future__ import annotations

import signal
import sys
import threading

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


def _exit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)  # through Lightning's teardown and atexit (a URL checkpoint's copy)


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

    def on_predict_start(self, trainer, pl_module) -> None:
        # SIGTERM and Ctrl-C end the command with 143 and 130, as fit and other tools do (Lightning's SIGTERM
        # handler only noted it, and a long generation went on until SIGKILL; Ctrl-C exited 1). Lightning
        # puts every signal's handler back when predict ends.
        if threading.current_thread() is threading.main_thread():
            for name in (signal.SIGTERM, signal.SIGINT):
                signal.signal(name, _exit)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.output is not None and trainer.is_global_zero:
            text = "\n".join(self.texts) + "\n"
            try:
                write_atomically(self.output, lambda file: file.write(text.encode("utf-8")))
            except OSError as error:
                raise UserError(
                    f"cannot write --generate.output {self.output}: {error.strerror}; the samples are above"
                ) from None
            print(f"wrote {len(self.texts)} samples to {self.output}", file=sys.stderr)
