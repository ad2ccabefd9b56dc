"""The command line: LightningCLI over ``GPTModule`` and ``CharDataModule``."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import warnings
from argparse import ArgumentError
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_gpt.callbacks import AtomicCheckpointIO, ModelSize, SaveLastStep, TextSampler, TrainingSpeed
from lightning_gpt.checkpoint_io import (
    check_checkpoint,
    filesystem,
    in_folder,
    local_path,
    lock_folder,
    readable_copy,
    step_of,
    unlock,
    unwritable,
)
from lightning_gpt.checks import (
    argument_error,
    as_list,
    check_settings,
    ignored_flags,
    missing_package,
    model_settings_named,
    no_cuda_hint,
    overridden,
    settings_error,
    values_of,
)
from lightning_gpt.corpus import read_corpus
from lightning_gpt.data import CharDataModule
from lightning_gpt.errors import UserError
from lightning_gpt.generation import GenerationSettings, check_sampling, prepare_prompt
from lightning_gpt.interactive import interactive_session
from lightning_gpt.module import GPTModule
from lightning_gpt.precision import auto_precision, resolve_accelerator
from lightning_gpt.writer import SampleWriter, check_stdout

# `fit` without --config trains the seed recipe; a --config file overrides what it sets.
SEED_RECIPE = Path(__file__).resolve().parent.parent / "configs" / "shakespeare_char.yaml"
PROGRESS_REFRESH_STEPS = 10  # the progress bar redraws every this many steps


def _exit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)  # through Lightning's teardown and atexit (a URL checkpoint's copy)


class GPTLightningCLI(LightningCLI):
    """LightningCLI with checkpointing defaults, data/model links and one-line errors."""

    resumed_from: str | None = None  # --ckpt_path as given (a URL is read from a local copy)
    resumed_step = 0  # the global step it holds
    lock: int | None = None  # fit's lock on its checkpoint folder, released however fit ends

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and predict: Lightning's ``test`` is left out, as the corpus has no test split."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name != "test"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self.subcommand_parsers = [*getattr(self, "subcommand_parsers", []), parser]  # for "did you mean"
        parser.link_arguments("model.context_length", "data.context_length")
        parser.add_class_arguments(GenerationSettings, "generate")
        parser.add_lightning_class_args(TextSampler, "sample")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.dirpath": "checkpoints",
                "checkpoint.filename": "best-step{step:06d}-val{val_loss:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.monitor": "val_loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                # Always overwrite last.ckpt, even when a resumed run changes the cadence
                # (Lightning would otherwise write last-v1.ckpt beside it).
                "checkpoint.enable_version_counter": False,
            }
        )

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        """Every trainer saves checkpoints atomically and loads them with weights_only."""
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError, TypeError) as error:  # e.g. an accelerator it lacks
            raise settings_error("trainer", error, no_cuda_hint(error)) from None
        except ModuleNotFoundError as error:  # a package the accelerator or strategy needs (torch_xla, ...)
            raise missing_package(error) from None
        except RuntimeError as error:  # a ModelCheckpoint of the user's that cannot be told from fit's
            if "state_key" not in str(error):
                raise
            raise settings_error("trainer", error, " (fit's own is set with --checkpoint.*)") from None
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        callbacks, subcommand = trainer.callbacks, self.config.get("subcommand")
        given = self.config_init[subcommand] if subcommand else self.config_init  # the instances parsed
        best = given.get("checkpoint")
        mine = [*as_list(given.trainer.callbacks), *as_list(self.trainer_defaults.get("callbacks"))]
        if best in callbacks and best.monitor and best.save_last is True:  # --checkpoint's, not a user's
            # Lightning >= 2.6 writes last.ckpt only beside a new best, so a run would resume from its
            # best step, not its last: a second checkpoint, with no metric, keeps last.ckpt at the
            # cadence asked for (and SaveLastStep at the end). The best one is judged at validations
            # only: between them its val_loss would be stale.
            options = (self.config[subcommand] if subcommand else self.config).checkpoint.as_dict()
            options["save_last"] = None
            cadence = {name: options.pop(name) for name in ("every_n_train_steps", "train_time_interval")}
            callbacks[callbacks.index(best)] = ModelCheckpoint(**options)
            options.update(cadence, filename=best.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1)
            callbacks.append(ModelCheckpoint(**options))
        bar = trainer.progress_bar_callback
        if bar is not None and bar not in mine:
            # Lightning's own redraws at every step, and Rich's (its default where rich is installed) reads
            # every logged value at every step (a GPU sync): TQDM's, every few steps
            callbacks[callbacks.index(bar)] = TQDMProgressBar(refresh_rate=PROGRESS_REFRESH_STEPS)
        return trainer

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except MisconfigurationException as error:  # ModelCheckpoint's own checks (the trainer's are above)
            raise settings_error("checkpoint", error) from None
        except ValueError as error:  # jsonargparse's wrapping of a callback (or logger) refusing its settings
            if not isinstance(error.__cause__, (ValueError, TypeError, MisconfigurationException)):
                raise  # a bug in a callback of the user's keeps its traceback
            raise settings_error("trainer", error.__cause__) from None

    def parse_arguments(self, parser: LightningArgumentParser, args: Sequence[str] | None) -> None:
        """A mistake in the arguments is one line (the usage is left to --help), then settings are checked."""
        given = sys.argv[1:] if args is None else args
        self.argv = list(given) if isinstance(given, (list, tuple)) else []  # not a dict of settings
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:  # exit_on_error=False: the parser raises instead of printing its usage
            parsers, recipe = self.subcommand_parsers, str(SEED_RECIPE)  # for "did you mean", broken configs
            raise UserError(
                argument_error(str(error), self.argv, self.subcommands(), parsers, recipe)
            ) from None
        subcommand = self.config.get("subcommand")
        check_settings(subcommand, self.config[subcommand] if subcommand else self.config)
        if subcommand in ("validate", "predict") and not values_of("--seed_everything", self.argv):
            self.config[subcommand].seed_everything = False  # nothing random: no "Seed set to 1337" line
        ignored = ignored_flags(subcommand, self.argv)
        if ignored and rank_zero_only.rank == 0:  # said once, not by every rank Lightning starts
            print(f"note: {subcommand} ignores {', '.join(ignored)} (another subcommand's)", file=sys.stderr)

    def _parse_ckpt_path(self) -> None:
        """Resolve ``last`` and URLs, refuse bad checkpoints in one line, then let Lightning merge hparams."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        section = self.config[subcommand]
        folder = section.checkpoint.dirpath = local_path(section.checkpoint.dirpath or "checkpoints")
        fs, root = filesystem(folder)  # one line if the URL's package (s3fs, gcsfs) is missing
        if section.get("ckpt_path") == "last":
            last = os.path.join(folder, "last.ckpt")
            if fs.isfile(f"{root}/last.ckpt"):
                section.ckpt_path = last
            elif subcommand == "fit":  # one command for the first start and every restart
                if rank_zero_only.rank == 0:  # the ranks Lightning starts run this command again
                    print(f"note: no {last} yet; starting a new run", file=sys.stderr)
                section.ckpt_path = None
            else:
                raise UserError(f"no checkpoint at {last}; train one with fit, or pass --ckpt_path FILE")
        ckpt_path = self.resumed_from = section.get("ckpt_path")
        if not ckpt_path:
            return
        section.ckpt_path = readable_copy(local_path(ckpt_path))
        named = model_settings_named(self.argv, subcommand)
        given = {name: section.model[name] for name in dict.fromkeys(named) if name in section.model}
        if given.get("vocab", "") is None:  # a saved config.yaml's: the corpus's
            del given["vocab"]
        try:
            checkpoint = check_checkpoint(Path(section.ckpt_path))
            vocab = checkpoint["hyper_parameters"]["vocab"]
            self.resumed_step = checkpoint.get("global_step", 0)
            super()._parse_ckpt_path()  # its hyperparameters become the model.* settings
            # as saved: jsonargparse read the string as YAML (a vocabulary " #…" became None)
            self.config[subcommand].model.vocab = vocab
        except UserError as error:  # name the URL, not the local copy
            raise UserError(str(error).replace(section.ckpt_path, ckpt_path)) from None
        except ArgumentError as error:  # a setting this version does not have, or of another type
            reason = " ".join(str(error).split())
            raise UserError(
                f"checkpoint {ckpt_path} does not fit this version of lightning-gpt: {reason}"
            ) from None
        overridden(given, self.config[subcommand].model, subcommand)  # else ignored silently

    def before_instantiate_classes(self) -> None:
        """``trainer.precision: null`` (the default) means: the fastest safe precision here."""
        subcommand = self.config.get("subcommand")
        trainer = self.config[subcommand].trainer if subcommand else self.config.trainer
        for callback in as_list(trainer.callbacks):  # an Enum (Timer's interval) breaks the config's dump
            for name, value in callback.get("init_args", {}).items():
                callback.init_args[name] = value.value if isinstance(value, Enum) else value
        if trainer.precision is None:
            accelerator = trainer.accelerator if isinstance(trainer.accelerator, str) else "auto"
            device = resolve_accelerator(accelerator)
            strategy = trainer.strategy if isinstance(trainer.strategy, str) else ""
            if strategy.startswith(("ddp_fork", "ddp_notebook")) and device == "cuda":
                raise UserError(  # the capability is read with CUDA started, and then its ranks fail
                    f"--trainer.strategy {strategy} cannot fork once CUDA has started, as reading the GPU's "
                    "compute capability for the automatic precision does: pass --trainer.precision "
                    "(bf16-mixed on A100, H100 and newer, else 16-mixed)"
                )
            trainer.precision = auto_precision(accelerator)
            if subcommand == "predict" and device == "cpu":
                trainer.precision = "32-true"  # decoding on a CPU gains nothing from autocast
        if subcommand in ("validate", "predict"):  # no checkpoints, config.yaml or run folder are written
            if not self.config[subcommand].ckpt_path:
                raise UserError(f"{subcommand} needs a trained model: pass --ckpt_path CHECKPOINT")
            # where fit saved; and the callbacks it had (a Timer, ...), which matter to a resume only
            warnings.filterwarnings(
                "ignore", message=r"The dirpath has changed from|Be aware that when using"
            )
            if trainer.logger is None:
                trainer.logger = False  # nothing to chart: no empty lightning_logs/version_N
            self.save_config_callback = None
        sample = self.config.fit.get("sample") if subcommand == "fit" else None
        if sample is not None:  # found out now, not at the first validation; model.* holds a resume's shape
            try:
                settings = (sample.temperature, None, None, sample.max_new_tokens, sample.keep)
                check_sampling(*settings, self.config.fit.model.context_length, sample.seed)
            except ValueError as error:
                raise UserError(f"invalid --sample settings: {error}") from None
        if subcommand == "predict":
            if int(os.environ.get("RANK", 0)) > 0:  # started by torchrun: rank 0 alone generates
                sys.exit(0)
            if trainer.enable_progress_bar is None:
                trainer.enable_progress_bar = False  # stdout carries the generated text
            # one process on one device: more would each print and write only their share of prompts
            devices = trainer.devices
            one = devices in ("auto", 1, "1") or (isinstance(devices, (list, tuple)) and len(devices) == 1)
            if not one or trainer.num_nodes != 1:
                print(
                    f"note: predict generates on one device; ignoring --trainer.devices {devices}"
                    + (f" --trainer.num_nodes {trainer.num_nodes}" if trainer.num_nodes != 1 else ""),
                    file=sys.stderr,
                )
            trainer.devices = devices if one and devices != "auto" else 1
            trainer.num_nodes, trainer.strategy = 1, "auto"
            # the one check of --generate.*, before anything is loaded; model.* holds the checkpoint's
            # hyperparameters by now (LightningCLI merged them in)
            self.generation = GenerationSettings(**self.config.predict.generate)
            try:
                self.generation.check(self.config.predict.model.context_length)
            except ValueError as error:
                raise UserError(f"invalid --generate settings: {error}") from None
            check_stdout(self.config.predict.model.vocab)

    def before_predict(self) -> None:
        """Hand prompts to the DataModule and sampling settings to the model; print the samples."""
        settings = self.model.generation = self.generation
        prompts = list(settings.prompt)
        if settings.prompt_file:
            prompts.append(read_corpus(settings.prompt_file, "prompt", "--generate.prompt_file"))
        prompts = [prepare_prompt(p, self.model.tokenizer, settings.drop_unknown) for p in prompts]
        self.datamodule.prompts = prompts
        if settings.output:  # found out before generating, not after
            if settings.output.endswith(("/", os.sep)) or Path(settings.output).is_dir():
                raise UserError(f"--generate.output {settings.output} is a folder; pass the path of a file")
            filesystem(settings.output)  # one line if the URL's package (s3fs, gcsfs) is missing
            output = local_path(settings.output)
            read = {"checkpoint": self.config.predict.ckpt_path, "prompt file": settings.prompt_file}
            for name, path in read.items():  # the samples would replace it
                if path and os.path.isfile(output) and os.path.samefile(path, output):
                    raise UserError(f"--generate.output {settings.output} is the {name}; pass another file")
        headers = len(prompts) * settings.num_samples > 1
        self.trainer.callbacks.append(SampleWriter(settings.output, headers=headers))

    def _run_subcommand(self, subcommand: str) -> None:
        """``predict --generate.interactive true`` runs the interactive loop instead of trainer.predict."""
        if subcommand == "predict" and self.config.predict.generate.interactive:
            g = self.generation
            given = dict(prompt=g.prompt != [""], prompt_file=g.prompt_file, num_samples=g.num_samples != 1)
            ignored = [f"--generate.{name}" for name, value in {**given, "output": g.output}.items() if value]
            if ignored:
                print(
                    "note: interactive mode reads prompts from stdin and prints one sample each; "
                    f"ignoring {', '.join(ignored)}",
                    file=sys.stderr,
                )
            # as predict loads it (AtomicCheckpointIO: weights only, to the CPU)
            checkpoint = self.trainer.strategy.load_checkpoint(self.config.predict.ckpt_path)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.to(self.trainer.strategy.root_device)  # --trainer.accelerator's, as predict's
            interactive_session(self.model, self.generation)
            return
        handlers = {}
        if subcommand == "predict" and threading.current_thread() is threading.main_thread():
            # SIGTERM and Ctrl-C end predict at once with 143 and 130, as they end fit (Lightning's SIGTERM
            # handler only notes the signal, and a long generation went on until SIGKILL; Ctrl-C exited 1).
            # Lightning adds its SIGTERM handler to this one while predict runs.
            handlers = {signum: signal.signal(signum, _exit) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            super()._run_subcommand(subcommand)
        except MisconfigurationException as error:  # settings Lightning checks only once it runs
            raise settings_error("trainer", error) from None
        except ModuleNotFoundError as error:  # a package a callback or logger needs (psutil, wandb, ...)
            raise missing_package(error) from None
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            if self.lock is not None:
                unlock(self.lock)
                self.lock = None

    def before_fit(self) -> None:
        """Never start over an earlier run's checkpoints, nor beside another fit in the same folder."""
        folder, resumed = self.config.fit.checkpoint.dirpath, self.resumed_from
        fs, root = filesystem(folder)
        last, has_last = os.path.join(folder, "last.ckpt"), fs.exists(f"{root}/last.ckpt")
        if resumed is None and has_last:
            raise UserError(
                f"{last} exists from an earlier run; resume it with --ckpt_path last, or start anew with "
                "another --checkpoint.dirpath (or move the old checkpoints away)"
            )
        if resumed is not None and has_last and not in_folder(resumed, folder):
            raise UserError(
                f"{last} is another run's, and resuming {resumed} would write over it; pass "
                f"--checkpoint.dirpath {os.path.dirname(resumed) or '.'} (its folder) or a new one"
            )
        other = has_last and resumed is not None and Path(resumed).name != "last.ckpt"  # in the folder, then
        if other and self.config.fit.checkpoint.save_last and self.resumed_step < (step := step_of(last)):
            raise UserError(
                f"resuming {resumed} (step {self.resumed_step}) would write over {last} (step {step}), "
                f"a later state of its run; continue that run with --ckpt_path last, or branch from "
                f"{Path(resumed).name} into a new --checkpoint.dirpath"
            )
        hpc = Path(self.trainer.default_root_dir).glob("hpc_ckpt_*.ckpt") if SLURMEnvironment.detect() else []
        hpc = sorted(hpc, key=lambda path: int("0" + re.sub(r"\D", "", path.stem)))  # by number, as Lightning
        if resumed is None and hpc:  # Lightning would resume it, silently
            raise UserError(
                f"{hpc[-1]} (Lightning's checkpoint of a SLURM requeue) would be resumed instead of a new "
                "run; continue that run with --ckpt_path last and its --checkpoint.dirpath, or delete the "
                "hpc_ckpt_*.ckpt files"
            )
        if resumed is not None:  # a resumed run writes into its own folder on purpose
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        for logger in self.trainer.loggers if self.trainer.global_rank == 0 else []:  # found before training
            logs = getattr(logger, "root_dir", None) or getattr(logger, "save_dir", None)
            if isinstance(logs, str) and "://" not in logs and (reason := unwritable(logs)):
                raise UserError(
                    f"cannot write the run's logs to {logs}: {reason}; run from a folder you can write to, "
                    "or pass --trainer.default_root_dir DIR"
                )
        if self.trainer.global_rank == 0:
            self.lock = lock_folder(folder)


def make_cli(
    args: list[str] | None = None, callbacks: Sequence[L.Callback] = (), **kwargs
) -> GPTLightningCLI:
    """What ``python cli.py ARGS`` runs, plus ``callbacks``; ``kwargs`` go to LightningCLI (``run=False``)."""
    callbacks = [TrainingSpeed(), ModelSize(), SaveLastStep(), *callbacks]
    # the training stream has no end; where epochs end (--trainer.limit_train_batches), each draws on from
    # the step it starts at, as a resume does, instead of the stream's start again
    defaults = {"callbacks": callbacks, "enable_model_summary": False, "reload_dataloaders_every_n_epochs": 1}
    return GPTLightningCLI(
        GPTModule,
        CharDataModule,
        trainer_defaults=defaults,
        seed_everything_default=1337,
        save_config_kwargs={"overwrite": True},
        # parse errors raise ArgumentError (one line from __main__.main()) instead of printing the whole usage
        parser_kwargs={
            "exit_on_error": False,
            "description": "Train (fit), evaluate (validate) and sample (predict) a character-level GPT; "
            "`serve --help`: serve a checkpoint over HTTP.",
            # what each --help opens with (else the Trainer method's words: "Run inference ... Useful to")
            "fit": {
                "default_config_files": [str(SEED_RECIPE)],
                "description": "Train a GPT: the seed recipe (configs/shakespeare_char.yaml), then --config.",
            },
            "validate": {"description": "The loss of a checkpoint on the held-out part of the corpus."},
            "predict": {"description": "Generate text from a checkpoint alone (--generate.* settings)."},
        },
        args=args,
        **kwargs,
    )


def _quiet(record: logging.LogRecord) -> bool:
    """Drops two of Lightning's lines at every start: the tip for its cloud logger, and "no TPU"."""
    message = record.getMessage()
    return "litlogger" not in message and not message.startswith("TPU available: False")


def run(args: list[str] | None = None) -> None:
    """``python cli.py fit|validate|predict ARGS``: LightningCLI, without Lightning's noise."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_quiet)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*infer the batch indices.*")
    # under DDP: the validation values are reduced over the ranks already, by torchmetrics
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val_|step')")
    make_cli(args)


def main(args: list[str] | None = None) -> None:
    """The entry that ``lightning-gpt`` scripts installed before 2026-12-01 call (``pip install -e .``
    writes one that calls ``lightning_gpt.__main__.main``)."""
    from lightning_gpt.__main__ import main as entry

    entry(args)
