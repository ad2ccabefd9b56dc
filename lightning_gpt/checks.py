"""The command line's checks of settings that Lightning and jsonargparse do not make (or make only
once a run has started), all reported at once, before any state (earlier checkpoints) is looked at."""

from __future__ import annotations

from pathlib import Path

from jsonargparse import Namespace

from lightning_gpt.config import GPTConfig
from lightning_gpt.corpus import corpus_files
from lightning_gpt.errors import UserError

# What fit logs, which --checkpoint.monitor may name
LOGGED = ("train_loss", "lr", "grad_norm", "tokens_per_sec", "val_loss", "val_bpc", "val_ppl")


def as_list(callbacks: object) -> list:
    """Callbacks as a list: one (``--trainer.callbacks EarlyStopping``) is given alone."""
    return callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []


def check_settings(subcommand: str | None, section: Namespace) -> None:
    """One ``UserError`` listing every mistake in the parsed settings ``section`` of ``subcommand``."""
    problems = []
    try:
        GPTConfig.from_hparams(section.model, vocab_size=1)
    except ValueError as error:
        problems.append(f"invalid model settings: {error}")
    if section.data.path and subcommand != "predict":
        try:
            corpus_files(section.data.path)
        except UserError as error:
            problems.append(str(error))
    t = section.trainer
    interval, accumulate = t.val_check_interval, t.accumulate_grad_batches
    if isinstance(accumulate, int) and accumulate < 1:
        problems.append(f"--trainer.accumulate_grad_batches must be at least 1, got {accumulate}")
    elif isinstance(interval, int) and interval < 1:
        problems.append(f"--trainer.val_check_interval counts batches: it must be >= 1, got {interval}")
    elif isinstance(interval, int) and isinstance(accumulate, int) and interval % accumulate:
        problems.append(
            f"--trainer.val_check_interval counts batches: {interval} is not a multiple of "
            f"--trainer.accumulate_grad_batches {accumulate}, so validations and their checkpoints "
            "would fall inside an optimizer step; pass a multiple, e.g. "
            f"{interval * accumulate} (every {interval} steps)"
        )
    epochs_end = isinstance(t.limit_train_batches, int) or t.overfit_batches or t.fast_dev_run
    endless = t.max_steps in (None, -1) and not epochs_end
    if subcommand == "fit" and endless and t.max_epochs not in (None, -1):
        problems.append(
            f"--trainer.max_epochs {t.max_epochs} cannot end this run: training draws random windows "
            "without end, so its epoch never ends; set --trainer.max_steps instead"
        )
    if subcommand == "fit" and t.enable_checkpointing is False:  # Lightning: "but found ModelCheckpoint"
        problems.append(
            "--trainer.enable_checkpointing false: fit always has its ModelCheckpoint (--checkpoint.*); "
            "to save no checkpoints pass --checkpoint.save_top_k 0 --checkpoint.save_last false instead"
        )
    known = (*LOGGED, "step", "epoch")  # and the two ModelCheckpoint always knows
    monitors = {"--checkpoint.monitor": section.checkpoint.monitor} if subcommand == "fit" else {}
    for callback in as_list(t.callbacks) if monitors else []:  # EarlyStopping, ...
        name = f"--trainer.callbacks {callback.class_path.rsplit('.', 1)[-1]}'s monitor"
        monitors[name] = callback.init_args.get("monitor") if "init_args" in callback else None
    for name, monitor in monitors.items():
        if isinstance(monitor, str) and monitor not in known:
            problems.append(f"{name} {monitor} is not a logged value; use one of {', '.join(known)}")
    ckpt = section.get("ckpt_path")
    if ckpt and ckpt != "last" and "://" not in ckpt and not Path(ckpt).exists():
        problems.append(f"checkpoint {ckpt} does not exist; pass the path of a .ckpt file")
    if problems:
        raise UserError("\n".join(problems))
