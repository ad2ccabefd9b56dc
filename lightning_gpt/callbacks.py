"""Training callbacks: throughput in the logs and progress bar, text samples as it learns, and a
checkpoint of the last step when training ends or a signal stops it; and the plugin that saves
checkpoints atomically."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_gpt.atomic import write_atomically
from lightning_gpt.errors import UserError
from lightning_gpt.generation import prepare_prompt

# SLURM's signal before the time limit (``#SBATCH --signal=USR1@90``), as Lightning's SLURMEnvironment
# takes it by default; Windows has none.
REQUEUE_SIGNAL = getattr(signal, "SIGUSR1", None)


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
        every = trainer.log_every_n_steps  # Lightning's logging steps (0: never), at an optimizer step's end
        step_end = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if every and trainer.global_step % every == 0 and step_end:
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
        prompt: where every sample starts (characters outside the vocabulary are dropped); empty: a
            newline, or the vocabulary's first character if it has none.
        max_new_tokens: characters per sample.
        temperature: sampling temperature (0 = greedy).
        seed: fixed, so samples differ only because the model changed.
        every_n_validations: sample at every n-th validation (0 disables logging).
        print_at_end: print a sample to stdout when fit ends.
        keep: past the context, how many recent characters a restarted window keeps (default: half).
    """

    prompt: str = ""
    max_new_tokens: int = 300
    temperature: float = 0.8
    seed: int = 1337
    every_n_validations: int = 1
    print_at_end: bool = True
    keep: int | None = None
    _validations: int = field(default=0, init=False, repr=False)

    def sample(self, pl_module) -> str:
        prompt = prepare_prompt(self.prompt, pl_module.tokenizer, drop_unknown=True)
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
            encoding = getattr(sys.stdout, "encoding", None) or "utf-8"  # a character it lacks: escaped
            print(self.sample(pl_module).encode(encoding, "backslashreplace").decode(encoding), flush=True)


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


class SaveLastStep(L.Callback):
    """Keeps ``last.ckpt`` at the last step trained: writes it when training ends (whatever the
    checkpoint cadence), and when SIGTERM or Ctrl-C (SIGINT) stops fit: then the current step finishes,
    ``last.ckpt`` is saved for it and the process exits with status 128 + the signal's number (143,
    130), so ``--ckpt_path last`` continues exactly.

    The signal handlers only note the signal; at the end of each step the ranks share what any of them
    noted (a max over ranks) and all stop at that step. Lightning's own SIGTERM handler runs a
    collective inside the handler, at another moment on each rank, which hung multi-process runs that
    were signalled as a group (Ctrl-C, SLURM, systemd). SLURM's requeue signal (SIGUSR1, when
    Lightning's auto-requeue handles it) is deferred the same way: Lightning's handler (a checkpoint,
    then ``scontrol requeue``) runs at the end of a step on every rank, never inside the signal
    handler, where it could wait for a lock held by the code it interrupted. Any other error that stops
    a process ends the ranks it started.
    """

    def __init__(self) -> None:
        self._signal = 0  # the signal noted, 0 for none
        self._requeue_noted = 0  # 1 once the requeue signal came
        self._requeue = None  # the handler that was on the requeue signal
        self._requeued = False  # once per fit, however many ranks note the signal, and when
        self._first_step: int | None = None

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._take_signals()

    def on_train_start(self, trainer, pl_module) -> None:
        self._first_step = trainer.global_step
        self._take_signals()

    def _take_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._note)  # Lightning restores the old handlers at the end
        signal.signal(signal.SIGINT, self._note)
        requeue = signal.getsignal(REQUEUE_SIGNAL) if REQUEUE_SIGNAL and SLURMEnvironment.detect() else None
        if callable(requeue) and requeue != self._note_requeue:  # Lightning's auto-requeue is on
            self._requeue = requeue
            signal.signal(REQUEUE_SIGNAL, self._note_requeue)

    def _note(self, signum: int, frame) -> None:
        self._signal = self._signal or signum

    def _note_requeue(self, signum: int, frame) -> None:
        self._requeue_noted = 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches or trainer.global_step == trainer.max_steps:
            return  # between the batches of an optimizer step, or after the last step: the run ends anyway
        received, requeue = self._signal, self._requeue_noted
        if trainer.world_size > 1:  # at the same point on every rank
            noted = torch.tensor([received, requeue], device=trainer.strategy.root_device)
            received, requeue = trainer.strategy.reduce(noted, reduce_op="max").tolist()
        if requeue and not self._requeued:
            self._requeued = True
            self._requeue(REQUEUE_SIGNAL, None)
            # and last.ckpt for this step: SLURM's SIGTERM follows (then SIGKILL after its KillWait),
            # maybe only after another step or a validation, and --ckpt_path last must lose nothing
            _save_last(trainer)
        if received:
            self._signal = received
            raise SIGTERMException  # Lightning calls on_exception, then exits with the code set there

    def on_train_end(self, trainer, pl_module) -> None:
        _save_last(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            # Any other error ends this process alone: the ranks it started would wait for it in their
            # next collective (NCCL: for its timeout). End them, as Lightning does after Ctrl-C.
            if trainer.strategy.launcher is not None:
                trainer.strategy.launcher.kill(signal.SIGKILL)
            return
        name = signal.Signals(self._signal or signal.SIGTERM).name
        exception.code = 128 + (self._signal or signal.SIGTERM)  # a SystemExit: its code is the status
        step, path = trainer.global_step, _last_path(trainer)
        if self._first_step in (None, step):
            message = f"{name}: stopped before a training step of this run; nothing new to save"
        elif path is None:
            message = (
                f"{name}: stopped at step {step}; not saved (no last.ckpt: --checkpoint.save_last false, "
                "or fast_dev_run)"
            )
        else:
            trainer.save_checkpoint(path, weights_only=False)
            message = f"{name}: saved step {step} to {path}; continue: the same command with --ckpt_path last"
        if trainer.is_global_zero:
            print(message, file=sys.stderr, flush=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves with ``write_atomically`` (a kill leaves the old or the new file); loads with weights_only.
    A failed save (disk full, no permission) is one ``UserError`` and leaves the old file as it was."""

    def save_checkpoint(self, checkpoint: dict, path: str | os.PathLike, storage_options=None) -> None:
        try:
            write_atomically(path, lambda file: torch.save(checkpoint, file))
        except (OSError, RuntimeError) as error:  # torch's writer raises a RuntimeError over the OSError
            cause = error if isinstance(error, OSError) else error.__context__
            reason = (
                getattr(cause, "strerror", None) or f"the write failed ({str(error).strip().splitlines()[0]})"
            )
            raise UserError(
                f"cannot save checkpoint {path}: {reason}; the checkpoints saved before "
                "are unchanged. Free some space (or fix the folder) and resume with --ckpt_path last"
            ) from None

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = True) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


def _save_last(trainer: L.Trainer) -> None:
    """Write ``last.ckpt`` (if a checkpoint callback keeps one) with the whole state, for a resume."""
    if (path := _last_path(trainer)) is not None:
        trainer.save_checkpoint(path, weights_only=False)


def _last_path(trainer: L.Trainer) -> str | None:
    """Where ``last.ckpt`` goes: the folder of the checkpoint callback that keeps it (None without one,
    as with ``--checkpoint.save_last false``, and in a ``fast_dev_run``, which saves nothing)."""
    if trainer.fast_dev_run:
        return None
    for checkpoint in trainer.checkpoint_callbacks:  # Lightning's OnExceptionCheckpoint is one too
        if isinstance(checkpoint, ModelCheckpoint):
            name = checkpoint.CHECKPOINT_NAME_LAST
            if checkpoint.save_last or checkpoint.filename == name:
                return checkpoint.format_checkpoint_name({}, name)
    return None
