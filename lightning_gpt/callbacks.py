"""Training callbacks: throughput in the logs and progress bar, and text samples as it learns."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


class TrainingSpeed(L.Callback):
    """Logs ``tokens_per_sec`` (all devices together), averaged over each logging interval."""

    def __init__(self):
        self._start: float | None = None
        self._tokens = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._start is None:  # the first step includes start-up costs: time from its end
            self._start = now
            return
        self._tokens += batch[1].numel() * trainer.world_size
        every = trainer.log_every_n_steps  # Lightning's logging steps (0: never)
        if every and trainer.global_step % every == 0:
            # a host tensor: a number would become a device tensor that the progress bar reads back
            rate = torch.tensor(self._tokens / (now - self._start))
            pl_module.log("tokens_per_sec", rate, prog_bar=True)
            self._start, self._tokens = now, 0

    def on_validation_end(self, trainer, pl_module) -> None:
        self._start, self._tokens = None, 0  # validation time is not training time


@dataclass(eq=False)
class TextSampler(L.Callback):
    """After each validation, logs a sample from a fixed prompt and seed to TensorBoard (Text tab);
    prints the last one when training ends.

    Args:
        prompt: where every sample starts.
        max_new_tokens: characters per sample.
        temperature: sampling temperature (0 = greedy).
        seed: fixed, so samples differ only because the model changed.
        every_n_validations: sample at every n-th validation (0 disables logging).
        print_at_end: print a sample to stdout when fit ends.
        keep: past the context, how many recent characters a restarted window keeps (default: half).
    """

    prompt: str = "\n"
    max_new_tokens: int = 300
    temperature: float = 0.8
    seed: int = 1337
    every_n_validations: int = 1
    print_at_end: bool = True
    keep: int | None = None
    _validations: int = field(default=0, init=False, repr=False)

    def sample(self, pl_module) -> str:
        prompt = self.prompt if set(self.prompt) <= set(pl_module.tokenizer.vocab) else "\n"
        return pl_module.generate_text(
            prompt, self.max_new_tokens, temperature=self.temperature, seed=self.seed, keep=self.keep
        )

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        self._validations += 1
        if not self.every_n_validations or self._validations % self.every_n_validations:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                text = self.sample(pl_module)
                indented = "\n".join("    " + line for line in text.splitlines())  # Markdown code block
                logger.experiment.add_text("sample", indented, global_step=trainer.global_step)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.print_at_end and trainer.is_global_zero and pl_module.model is not None:
            print(f"\n--- sample after {trainer.global_step} steps ---", file=sys.stderr)
            print(self.sample(pl_module), flush=True)


class ModelSize(L.Callback):
    """One line when fit starts, in place of Lightning's model summary: shape and parameter count."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            config = pl_module.model.config
            print(
                f"GPT: {pl_module.model.num_parameters():,} parameters ({config.num_blocks} blocks, "
                f"d_model {config.d_model}, {config.num_heads} heads, context {config.context_length}, "
                f"vocabulary {config.vocab_size}), precision {trainer.precision}",
                file=sys.stderr,
            )
