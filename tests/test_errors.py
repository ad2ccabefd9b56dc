"""Mistakes that end a command with one line: the ones no other file covers (test_errors_md.py maps each
row of docs/errors.md to its test)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import ROOT, TINY_MODEL, error_lines, one_line_error, run_cli, tiny_fit_args
from lightning.pytorch.callbacks import device_stats_monitor as device_stats

from lightning_gpt.checkpoint_io import check_checkpoint
from lightning_gpt.data import CharDataModule
from lightning_gpt.errors import UserError
from lightning_gpt.module import GPTModule


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["predict", "--generate.temprature", "0.5"],
            "temprature 0.5; did you mean --generate.temperature? (options: cli.py predict --help)",
        ),
        (["fit", "--model.d_model", "abc"], "--model.d_model: Expected a <class 'int'>. Got value: abc"),
        (  # the values it takes (jsonargparse names their types only)
            ["fit", "--trainer.precision", "17"],
            "--trainer.precision: Does not validate against any of the Union subtypes (Given value: 17; "
            "expected one of 64, 32, 16, transformer-engine,",
        ),
        (["fit", "--trainer.deterministic=foo"], "(Given value: foo) (options"),  # true/false too: no list
        (["test"], "invalid choice: 'test' (choose from 'fit', 'validate', 'predict')"),
        (["fit", "--config", "nothere.yaml"], "--config: File does not exist"),
    ],
)
def test_argument_mistakes_are_one_line_without_the_usage(tmp_path, cli_main, args, message):
    result = cli_main(*args, cwd=tmp_path)
    one_line_error(result, message)
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_a_config_that_is_not_a_mapping_of_settings_is_named(tmp_path, cli_main, monkeypatch):
    (tmp_path / "good.yaml").write_text("model:\n  d_model: 64\n")
    (tmp_path / "broken.yaml").write_text("model:\n  d_model: [1\n")
    (tmp_path / "notes.txt").write_text("a line of notes, not settings\n" * 100)
    result = cli_main("fit", "-c", "good.yaml", "--config=broken.yaml", cwd=tmp_path)
    where = "(while parsing a flow sequence at line 2, column 12); see configs/*.yaml"
    one_line_error(result, f"--config broken.yaml is not a YAML mapping of settings {where}")
    result = cli_main("fit", "--config=notes.txt", cwd=tmp_path)  # YAML reads it as one string
    one_line_error(result, "--config notes.txt is not a YAML mapping of settings; see configs/*.yaml (")
    assert "a line of notes" not in result.stderr  # jsonargparse's message held the whole text
    (tmp_path / "empty.yaml").write_text("")  # "unexpected config:" with nothing after it (a traceback)
    one_line_error(cli_main("fit", "--config=empty.yaml", cwd=tmp_path), "--config empty.yaml is not a YAML")
    # fit reads the seed recipe before any --config: an edited, broken one is named
    monkeypatch.setattr("lightning_gpt.cli.SEED_RECIPE", tmp_path / "broken.yaml")
    result = cli_main("fit", "--config", "good.yaml", cwd=tmp_path)
    one_line_error(result, f"--config {tmp_path / 'broken.yaml'} is not a YAML mapping of settings {where}")


def test_help_offers_fit_validate_and_predict_only(tmp_path, cli_main):
    result = cli_main("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert re.findall(r"^    (\w+) ", result.stdout, re.MULTILINE) == ["fit", "validate", "predict"]
    assert "`serve --help`" in result.stdout  # serve has a parser of its own: the help points to it
    predict = cli_main("predict", "--help", cwd=tmp_path)  # says what it does, not Trainer.predict's words
    assert "Generate text from a checkpoint alone" in predict.stdout and "Useful to\n" not in predict.stdout


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--model.num_heads=5", "invalid model settings: d_model (32) must be divisible by num_heads (5)"),
        ("--model.d_model=131072", "invalid model settings: d_model must be an integer from 1 to 65536"),
        (
            "--model.num_blocks=1000 --model.d_model=1024",
            "the shape needs 1.3e+10 weights, more than the limit 1e+10",
        ),
        ("--data.batch_size=0", "data.batch_size must be at least 1, got 0"),
        ("--data.val_fraction=1.5", "data.val_fraction must be between 0 and 1, got 1.5"),
        ("--data.val_fraction=0", "data.val_fraction must be between 0 and 1, got 0"),
        (
            "--trainer.accelerator=gpuu",
            "invalid --trainer settings: You selected an invalid accelerator name",
        ),
        pytest.param(  # the automatic precision read no capability first (an AssertionError before)
            "--trainer.accelerator=cuda",
            "invalid --trainer settings: `CUDAAccelerator` can not run on your system",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
        pytest.param(  # what to do: a CPU-only PyTorch build (as here) or a GPU CUDA cannot see
            "--trainer.accelerator=gpu",
            "No supported gpu backend found! PyTorch " + torch.__version__,
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
        pytest.param(  # a traceback before
            "--trainer.accelerator=tpu",
            "error: Requirement 'torch_xla>=",
            marks=pytest.mark.skipif(bool(importlib.util.find_spec("torch_xla")), reason="has torch_xla"),
        ),
        (
            "--trainer.devices=0",
            "invalid --trainer settings: `Trainer(devices='0')` value is not a valid input",
        ),
        (  # a TypeError in Lightning: a traceback before
            "--trainer.devices=-2",
            "invalid --trainer settings: `devices` selected with `CPUAccelerator` should be an int > 0",
        ),
        (
            "--trainer.accumulate_grad_batches=0",
            "--trainer.accumulate_grad_batches must be at least 1, got 0",
        ),
        (
            "--trainer.val_check_interval=0",
            "--trainer.val_check_interval counts batches: it must be >= 1, got 0",
        ),
        (  # before: a run that never ended (epochs of an endless stream)
            # max_time: without the check this run would not end (a hung suite, not a failure)
            "--trainer.max_steps=-1 --trainer.max_epochs=1 --model.decay_steps=100 "
            "--trainer.max_time=00:00:00:20",
            "--trainer.max_epochs 1 cannot end this run: training draws random windows without end, so its "
            "epoch never ends; set --trainer.max_steps instead",
        ),
        (  # before: tracebacks
            "--trainer.callbacks+=EarlyStopping --trainer.callbacks.monitor=val_loss "
            "--trainer.callbacks.mode=best",
            "invalid --trainer settings: `mode` can be min, max, got best",
        ),
        (
            "--trainer.callbacks+=ModelCheckpoint --trainer.callbacks.monitor=val_loss",
            "HINT: The `callback.state_key` must be unique among all callbacks in the Trainer. "
            "(fit's own is set with --checkpoint.*)",
        ),
        (
            "--trainer.enable_checkpointing=false",
            "to save no checkpoints pass --checkpoint.save_top_k 0 --checkpoint.save_last false instead",
        ),
        ("--model.learning_rate=-1", "model.learning_rate must be a finite number >= 0, got -1.0"),
        ("--model.beta1=1.5", "model.beta1 must be in [0, 1), got 1.5"),
        ("--model.beta2=1", "model.beta2 must be in [0, 1), got 1.0"),  # the bound itself (AdamW's traceback)
        ("--model.min_lr_ratio=1.5", "model.min_lr_ratio must be in [0, 1], got 1.5"),  # the LR would climb
        (
            "--model.decay_steps=-1",
            "model.decay_steps must be at least 0 (0 or unset: trainer.max_steps), got -1",
        ),
        ("--data.num_workers=-1", "data.num_workers must be 0 (no worker processes) or more, got -1"),
        ("--checkpoint.mode=best", "invalid --checkpoint settings: `mode` can be min, max but got best"),
        (
            "--checkpoint.monitor=val_los",
            "--checkpoint.monitor val_los is not a logged value; use one of train_loss, lr, grad_norm, "
            "tokens_per_sec, val_loss, val_bpc, val_ppl, step, epoch",
        ),
        (  # before: a traceback at the first validation, after training had begun (Lightning's check)
            "--trainer.callbacks+=EarlyStopping --trainer.callbacks.monitor=val_los",
            "--trainer.callbacks EarlyStopping's monitor val_los is not a logged value; use one of",
        ),
        (  # one callback alone, not in a list (as a config file may give it)
            '--trainer.callbacks={"class_path":"EarlyStopping","init_args":{"monitor":"val_los"}}',
            "--trainer.callbacks EarlyStopping's monitor val_los is not a logged value; use one of",
        ),
        (  # before: a traceback at the first validation, after training had begun
            "--sample.seed=-1",
            "invalid --sample settings: seed must be in [0, 2**63), got -1",
        ),
        (  # before: a traceback at the first validation, after training had begun
            "--sample.keep=100",
            "invalid --sample settings: keep must be <= the model's context_length 32, got 100",
        ),
        (
            "--trainer.accumulate_grad_batches=4 --trainer.val_check_interval=250",
            "--trainer.val_check_interval counts batches: 250 is not a multiple of "
            "--trainer.accumulate_grad_batches 4, so validations and their checkpoints would fall inside an "
            "optimizer step; pass a multiple, e.g. 1000 (every 250 steps)",
        ),
    ],
)
def test_bad_settings_are_refused_before_anything_is_built(tmp_path, small_corpus, cli_main, flag, message):
    args = ["fit", f"--data.path={small_corpus}", *TINY_MODEL, *flag.split()]
    one_line_error(cli_main(*args, cwd=tmp_path), message)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("text", ["", "too short for one window"])
def test_a_fit_refused_for_its_corpus_leaves_no_folders(tmp_path, cli_main, text):
    """Before, it left an empty checkpoints/ and, for a short corpus, a run folder without data, which
    TensorBoard lists as a run."""
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    result = cli_main("fit", f"--data.path={path}", *TINY_MODEL, "--data.cache_dir=cache", cwd=tmp_path)
    one_line_error(result, "is empty; pass" if not text else "fewer than context_length + 1 = 33")
    assert {entry.name for entry in tmp_path.iterdir()} <= {"corpus.txt", "cache"}
    # an existing folder stays, empty or not
    (tmp_path / "kept").mkdir()
    one_line_error(cli_main("fit", f"--data.path={path}", "--checkpoint.dirpath=kept", cwd=tmp_path), "")
    assert (tmp_path / "kept").is_dir()


@pytest.mark.parametrize("strategy", ["ddp_fork", "ddp_notebook"])
def test_automatic_precision_is_refused_with_a_strategy_that_forks_on_cuda(
    tmp_path, small_corpus, cli_main, monkeypatch, strategy
):
    """Before, reading the compute capability started CUDA: every forked rank then failed (a traceback)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    args = ["fit", f"--data.path={small_corpus}", *TINY_MODEL, f"--trainer.strategy={strategy}"]
    message = f"--trainer.strategy {strategy} cannot fork once CUDA has started"
    one_line_error(cli_main(*args, "--trainer.precision=null", cwd=tmp_path), message)


def test_a_package_a_callback_needs_is_one_line(tmp_path, small_corpus, cli_main, monkeypatch):
    """DeviceStatsMonitor without psutil: a traceback once fit had started, before."""
    monkeypatch.setattr(device_stats, "_PSUTIL_AVAILABLE", False)  # as where psutil is not installed
    args = [*tiny_fit_args(small_corpus, steps=2, val_every=2), "--trainer.callbacks+=DeviceStatsMonitor"]
    one_line_error(
        cli_main(*args, cwd=tmp_path), "`DeviceStatsMonitor` cannot log CPU stats as `psutil` is not"
    )


def test_a_checkpoint_folder_that_cannot_be_made_is_one_line(tmp_path, small_corpus, cli_main):
    (tmp_path / "taken").write_text("a file where the folder would go")
    args = ["fit", f"--data.path={small_corpus}", *TINY_MODEL, "--checkpoint.dirpath=taken/checkpoints"]
    message = (
        "cannot use checkpoint folder taken/checkpoints: Not a directory; pass another --checkpoint.dirpath"
    )
    one_line_error(cli_main(*args, cwd=tmp_path), message)


def test_a_log_folder_that_cannot_be_written_is_found_before_training(tmp_path, small_corpus, cli_main):
    """It was a traceback once fit had started."""
    (tmp_path / "afile").write_text("a file where the logs' folder would go")
    args = ["fit", f"--data.path={small_corpus}", *TINY_MODEL, "--trainer.default_root_dir=afile/runs"]
    message = "cannot write the run's logs to afile/runs/lightning_logs: Not a directory; run from a folder"
    one_line_error(cli_main(*args, cwd=tmp_path), message)
    assert not (tmp_path / "checkpoints").exists()  # refused before the checkpoint folder was made


def test_trainer_settings_lightning_checks_while_running_are_one_line(tmp_path, small_corpus, cli_main):
    args = ["fit", f"--data.path={small_corpus}", *TINY_MODEL, "--trainer.val_check_interval=0.5"]
    message = "invalid --trainer settings: `val_check_interval` should be an integer or a time-based duration"
    one_line_error(cli_main(*args, cwd=tmp_path), message)


def test_inputs_are_checked_before_state_and_all_at_once(tmp_path, cli_main):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run")
    args = ["fit", "--data.path=nowhere.txt", *TINY_MODEL]
    result = cli_main(*args, "--model.num_heads=5", "--ckpt_path=missing.ckpt", cwd=tmp_path)
    one_line_error(result, "checkpoint missing.ckpt does not exist; pass the path of a .ckpt file")
    assert result.stderr.strip().splitlines()[-3:-1] == [
        "error: invalid model settings: d_model (32) must be divisible by num_heads (5)",
        "error: corpus file nowhere.txt does not exist; pass an existing text file or a folder of .txt "
        "files with --data.path",
    ]
    stale = cli_main(*args, cwd=tmp_path)  # the input mistake, not the earlier run's checkpoint
    one_line_error(stale, "nowhere.txt does not exist")
    assert "earlier run" not in stale.stderr
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == b"an earlier run"


@pytest.fixture
def damaged(tmp_path: Path, tiny_checkpoint: Path):
    """Makes a file from ``tiny_checkpoint`` with ``edit(bytes or checkpoint dict)`` and returns its path."""

    def make(edit, name: str = "edited.ckpt") -> Path:
        path = tmp_path / name
        if edit is None:
            path.mkdir()
        elif isinstance(edit, bytes):
            path.write_bytes(edit)
        else:
            checkpoint = torch.load(tiny_checkpoint, weights_only=True)
            edit(checkpoint)
            torch.save(checkpoint, path)
        return path

    return make


def forged_shape(**shape):
    return lambda checkpoint: checkpoint["hyper_parameters"].update(shape)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (None, "is a folder; pass the path of a .ckpt file in it"),
        (b"", "is empty (0 bytes): its save never finished"),
        ((ROOT / "README.md").read_bytes(), "is not a checkpoint (not saved by PyTorch)"),
        (os.urandom(4096), "is not a checkpoint (not saved by PyTorch)"),
        (b"\x80\x04\x95" + b"\x00" * 40, "is not a checkpoint (not saved by PyTorch)"),  # a plain pickle
        ("half", "is damaged (cut short or altered)"),
        (lambda checkpoint: checkpoint.pop("hyper_parameters"), "is not a lightning-gpt checkpoint"),
        (forged_shape(vocab=""), "is not a lightning-gpt checkpoint (no model vocabulary or weights)"),
        (forged_shape(d_model=64), "is damaged: its weights do not fit its model settings"),
        (forged_shape(positional="sinusoidal"), "is damaged: its weights do not fit its model settings"),
        (forged_shape(d_model=2**16, num_blocks=1024), "impossible model settings: the shape needs 5.3e+13"),
        (forged_shape(context_length=2**40), "impossible model settings: context_length must be an integer"),
        (forged_shape(num_blocks="2"), "impossible model settings: num_blocks must be an integer"),
        (forged_shape(dropout="0.1"), "impossible model settings: '<=' not supported"),  # a TypeError
    ],
    ids=[
        "folder",
        "empty",
        "text",
        "random",
        "pickle",
        "cut",
        "foreign",
        "no vocabulary",
        "wider",
        "positional",
        "huge",
        "long",
        "string",
        "string dropout",
    ],
)
def test_files_that_are_not_sound_checkpoints(tiny_checkpoint, damaged, edit, message, recwarn):
    assert check_checkpoint(tiny_checkpoint)["global_step"] == 30  # the original is sound
    if edit == "half":
        edit = tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2]
    with pytest.raises(UserError, match=re.escape(message)):
        check_checkpoint(damaged(edit))
    assert [str(w.message) for w in recwarn] == []  # the one line alone (a pickle drew torch's note)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"block_size": 32}, "Subcommand 'validate' does not accept option 'model.block_size'"),
        ({"learning_rate": "fast"}, "Parser key \"model.learning_rate\": Expected a <class 'float'>"),
    ],
    ids=["unknown", "mistyped"],
)
def test_checkpoint_settings_this_version_lacks_are_one_line(
    damaged, cli_main, small_corpus, setting, message
):
    """Before, LightningCLI's parse of the checkpoint's hyperparameters ended in a traceback."""
    path = damaged(lambda checkpoint: checkpoint["hyper_parameters"].update(setting))
    result = cli_main("validate", f"--ckpt_path={path}", f"--data.path={small_corpus}", cwd=path.parent)
    one_line_error(result, f"checkpoint {path} does not fit this version of lightning-gpt: {message}")


def test_a_real_process_exits_2_with_one_line_and_no_usage(tmp_path):
    typo = run_cli("predict", "--generate.temprature", "0.5", cwd=tmp_path, timeout=120)
    assert typo.returncode == 2 and typo.stdout == ""
    assert typo.stderr.strip().splitlines() == [
        "error: unrecognized arguments: --generate.temprature 0.5; did you mean --generate.temperature? "
        "(options: cli.py predict --help)"
    ]


def test_no_step_count_and_no_vocabulary(tmp_path, small_corpus, cli_main):
    with pytest.raises(UserError, match=r"no vocabulary: pass a corpus \(--data.path\) or a checkpoint"):
        GPTModule().configure_model()
    args = ["fit", f"--data.path={small_corpus}", *TINY_MODEL, "--trainer.max_steps=-1"]
    result = cli_main(
        *args, "--trainer.max_time=00:00:01:00", "--trainer.enable_progress_bar=false", cwd=tmp_path
    )
    one_line_error(result, "set the trainer's max_steps (--trainer.max_steps) or the model's decay_steps")


def test_python_users_get_one_clear_line(tmp_path, small_corpus):
    """From Python, as Lightning's docs teach: a plain Trainer, GPTModule and CharDataModule."""
    with pytest.raises(UserError, match="no model yet: fit it, load a checkpoint"):  # an AttributeError
        GPTModule().generate_text("ROMEO:", 5)
    for setting in ("decay_steps", "warmup_steps"):  # -1: the schedule took it silently
        with pytest.raises(UserError, match=f"model.{setting} must be at least 0"):
            GPTModule(**{setting: -1})
    tiny = dict(d_model=16, num_heads=2, num_blocks=1, context_length=16, dropout=0.0, warmup_steps=1)
    quiet = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    data = CharDataModule(path=str(small_corpus), batch_size=4, context_length=32)
    with pytest.raises(
        UserError, match=r"windows \(32 characters\) are longer than the model's context_length 16"
    ):
        L.Trainer(max_steps=1, **quiet).fit(GPTModule(**tiny), datamodule=data)  # a ValueError 20 frames deep
    # Lightning's default validates at epoch ends, which the endless training stream never reaches: it
    # trained without a word, never validating
    data = CharDataModule(path=str(small_corpus), batch_size=4, context_length=16)
    model = GPTModule(**tiny)
    with pytest.warns(UserWarning, match="validation never runs: the training data has no epoch end"):
        L.Trainer(max_steps=2, num_sanity_val_steps=0, **quiet).fit(model, datamodule=data)
    data = CharDataModule(path=str(small_corpus))  # windows of 256: predict reads its prompts only
    data.prompts, model.generation.max_new_tokens = ["the"], 5
    [[text]] = L.Trainer(**quiet).predict(model, datamodule=data)  # one prompt, one sample
    assert text.startswith("the") and len(text) == 3 + 5


def test_prompt_file_missing(tmp_path, tiny_checkpoint, cli_main):
    args = ["predict", f"--ckpt_path={tiny_checkpoint}", "--generate.prompt_file=nowhere.txt"]
    message = "prompt file nowhere.txt does not exist; pass an existing text file with --generate.prompt_file"
    one_line_error(cli_main(*args, cwd=tmp_path), message)
    (tmp_path / "prompts").mkdir()  # a folder, and a pipe, were said not to exist
    args[-1] = "--generate.prompt_file=prompts"
    message = "prompt file prompts is a folder; pass a text file with --generate.prompt_file"
    one_line_error(cli_main(*args, cwd=tmp_path), message)
    os.mkfifo(tmp_path / "pipe")
    writer = subprocess.Popen(["sh", "-c", f"printf ROMEO: > {tmp_path / 'pipe'}"])
    args[-1] = "--generate.prompt_file=pipe"
    piped = cli_main(*args, "--generate.prompt=[]", "--generate.max_new_tokens=3", cwd=tmp_path)
    assert writer.wait(timeout=30) == 0 and piped.returncode == 0 and piped.stdout.startswith("ROMEO:")


def test_validate_names_a_missing_corpus_with_the_other_mistakes(tmp_path, cli_main):
    result = cli_main("validate", "--data.path=not/here.txt", "--ckpt_path=none.ckpt", cwd=tmp_path)
    lines = error_lines(result)
    assert len(lines) == 2 and "not/here.txt" in lines[0], lines
    assert lines[1] == "error: checkpoint none.ckpt does not exist; pass the path of a .ckpt file"


@pytest.mark.parametrize(
    "settings",
    [
        ["--trainer.overfit_batches=2", "--trainer.max_steps=-1", "--trainer.max_epochs=2"],  # epochs end
        ["--trainer.max_steps=-1", "--trainer.max_epochs=-1"],  # Lightning's "no limit", not a count
        ["--trainer.limit_train_batches=2", "--trainer.max_steps=-1", "--trainer.max_epochs=2"],  # epochs end
    ],
    ids=["overfit_batches", "max_epochs -1", "limit_train_batches"],
)
def test_settings_that_can_end_or_run_on_are_not_refused(tmp_path, small_corpus, cli_main, settings):
    """Every mistake is named at once: a setting wrongly refused would add a line to the one planted."""
    result = cli_main("fit", f"--data.path={small_corpus}", *settings, "--model.num_heads=5", cwd=tmp_path)
    assert error_lines(result) == [
        "error: invalid model settings: d_model (256) must be divisible by num_heads (5)"
    ]


@pytest.mark.parametrize("subcommand", ["validate", "predict"])
def test_only_fit_needs_checkpointing(tmp_path, cli_main, subcommand):
    args = [subcommand, "--trainer.enable_checkpointing=false", "--ckpt_path=none.ckpt"]
    assert error_lines(cli_main(*args, cwd=tmp_path)) == [
        "error: checkpoint none.ckpt does not exist; pass the path of a .ckpt file"
    ]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")  # pytest's own arguments in sys.argv
def test_a_lightning_gpt_script_installed_before_the_entry_moved_still_works(capsys):
    """pip wrote ``lightning-gpt`` scripts that call ``lightning_gpt.cli:main`` until 2026-12-01; such a
    script is kept by a ``git pull`` (an editable install writes it only once)."""
    from lightning_gpt.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["predict", "--generate.temprature=1"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("error: unrecognized arguments: --generate.temprature=1; did")
