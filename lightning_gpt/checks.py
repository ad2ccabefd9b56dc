"""The command line's checks of settings that Lightning and jsonargparse do not make (or make only
once a run has started), all reported at once, before any state (earlier checkpoints) is looked at;
and the one-line messages for what jsonargparse and Lightning refuse."""

from __future__ import annotations

import difflib
import itertools
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import yaml
from jsonargparse import Namespace

from lightning_gpt.config import GPTConfig
from lightning_gpt.corpus import corpus_files
from lightning_gpt.errors import UserError

# what each subcommand does not read: --generate.* are predict's, --sample.* fit's; predict reads no corpus
IGNORED_GROUPS = {"fit": ("generate",), "validate": ("generate", "sample"), "predict": ("sample", "data")}
# the model settings that validate and predict read: the shape
SHAPE = ("d_model", "num_heads", "num_blocks", "context_length", "positional", "bias", "vocab")
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


def settings_error(group: str, error: Exception, hint: str = "") -> UserError:
    """Lightning's refusal of a ``--trainer`` or ``--checkpoint`` setting, in one line."""
    return UserError(f"invalid --{group} settings: {' '.join(str(error).split())}{hint}")


def missing_package(error: ModuleNotFoundError) -> UserError:
    """A package that a callback, logger or accelerator needs, in one line."""
    hint = f" (pip install {error.name})" if error.name else ""  # Lightning's own messages say how
    return UserError(" ".join(str(error).split()) + hint)


def no_cuda_hint(error: Exception) -> str:
    """What to do when a CUDA GPU was asked for and PyTorch sees none."""
    if "gpu backend" not in str(error) and "CUDAAccelerator" not in str(error):
        return ""
    cause = "is a CPU-only build: install the one for your GPU from pytorch.org"
    if torch.version.cuda is not None:
        cause = f"finds no GPU through CUDA {torch.version.cuda} (nvidia-smi lists what the driver sees)"
    elif torch.version.hip is not None:
        cause = f"finds no GPU through ROCm {torch.version.hip} (rocm-smi lists what the driver sees)"
    elif sys.platform == "darwin":
        cause = "finds no Apple GPU (MPS needs macOS 12.3 or later on Apple silicon)"
    return f" PyTorch {torch.__version__} {cause}, or leave --trainer.accelerator unset to use the CPU."


def values_of(option: str, argv: Sequence[str]) -> list[str]:
    """What ``option`` was given, in order: ``--config FILE`` (or ``-c FILE``) and ``--config=FILE``."""
    names = (option, "-c") if option == "--config" else (option,)
    return [
        arg.removeprefix(f"{option}=")
        for before, arg in itertools.pairwise(["", *argv])
        if before in names or arg.startswith(f"{option}=")
    ]


def yaml_of(value: str) -> object:
    """A ``--config`` file's settings (or those of a value given as YAML text); None if unreadable."""
    try:
        return yaml.safe_load(Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value)
    except (OSError, ValueError, yaml.YAMLError):
        return None


def model_settings_named(argv: Sequence[str], subcommand: str) -> list[str]:
    """The model settings given: ``--model.X`` flags, a ``--model`` mapping and the model sections of
    ``--config`` files (not the defaults, nor the seed recipe's)."""
    named = [arg.removeprefix("--model.").split("=")[0] for arg in argv if arg.startswith("--model.")]
    sections = list(map(yaml_of, values_of("--model", argv)))
    for config in map(yaml_of, values_of("--config", argv)):
        config = config.get(subcommand, config) if isinstance(config, dict) else None  # given before it
        sections.append(config.get("model") if isinstance(config, dict) else None)
    return named + [name for section in sections if isinstance(section, dict) for name in section]


def first_bad_config(paths: list[str]) -> str:
    """The first of these config files that is not a YAML mapping, as jsonargparse reads them in turn."""
    return next((path for path in paths if not isinstance(yaml_of(path), dict)), paths[-1] if paths else "")


def ignored_flags(subcommand: str | None, argv: Sequence[str]) -> list[str]:
    """The flags given of groups that ``subcommand`` does not read (said in a note, not ignored silently)."""
    groups = tuple(f"--{group}." for group in IGNORED_GROUPS.get(subcommand, ()))
    return list(dict.fromkeys(arg.split("=")[0] for arg in argv if arg.startswith(groups)))


def overridden(given: dict, kept: Namespace, subcommand: str) -> None:
    """UserError naming each model setting ``given`` that the checkpoint's hyperparameters (``kept``)
    overrode; validate and predict read only the shape (no dropout, no optimizer)."""
    fix = ", or train a new run with it" if subcommand == "fit" else ""
    changed = [
        f"model.{name} {value!r}: the checkpoint's {kept[name]!r} is kept with --ckpt_path; set it to that, "
        f"or remove it (flag or --config){fix}"
        for name, value in given.items()
        if kept[name] != value and (subcommand == "fit" or name in SHAPE)
    ]
    if changed:
        raise UserError("\n".join(changed))


def argument_error(
    error: str, args: Sequence[str], subcommands: Iterable[str], parsers: list, seed_recipe: str
) -> str:
    """jsonargparse's message in one line: the values a setting takes, the config file that is not one
    (``seed_recipe``: the one fit reads first), the closest option to a misspelt one (``parsers``')."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    message = re.sub(r'^Parser key "([^"]+)":', r"--\1:", " ".join(lines[:2]))
    message = message[:1].lower() + message[1:]  # jsonargparse 4.39 writes "Unrecognized arguments"
    given = [line for line in lines[2:] if line.startswith("Given value:")]
    subtypes = next((line for line in lines if line.startswith("Subtypes:")), "")  # of a Union
    literals = re.findall(r"Literal\[([^]]*)]", subtypes)  # the values allowed, e.g. --trainer.precision's
    if set(re.findall(r"<class '([^']+)'>", subtypes)) - {"NoneType"}:  # other types too: not a list
        literals = []
    choices = dict.fromkeys(value.strip(" '") for group in literals for value in group.split(","))
    given += [f"expected one of {', '.join(choices)}"] if choices else []
    message += f" ({'; '.join(given)})" if given else ""
    subcommand = next((word for word in args if word in subcommands), None)
    if message.startswith(("problems parsing config", "unexpected config")):  # jsonargparse names no file
        bad = first_bad_config([seed_recipe] * (subcommand == "fit") + values_of("--config", args))
        where = message.partition(": ")[2].replace(' in "<unicode string>",', " at")  # YAML's reason
        where = f" ({where})" if message.startswith("problems") else ""  # not the file's whole text
        message = f"--config {bad} is not a YAML mapping of settings{where}; see configs/*.yaml"
    unknown = re.match(r"unrecognized arguments: (--[^\s=]+)", message)
    for parser in parsers if unknown and subcommand else []:
        if parser.prog.endswith(f" {subcommand}"):
            options = [f"--{key}" for key, _ in parser.get_defaults(skip_validation=True).items()]
            close = difflib.get_close_matches(unknown.group(1), options, n=1)
            message += f"; did you mean {close[0]}?" if close else ""
    return f"{message} (options: cli.py {subcommand or ''} --help)".replace("  ", " ")
