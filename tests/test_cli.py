"""``cli.py`` end to end with a tiny model on a small corpus: in subprocesses where the output of a
whole process is checked, in-process (``cli_main``) where the process boundary adds nothing."""

import math
import os
import shutil
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import TINY_MODEL, main_in_process, run_cli, run_command, tiny_fit_args

from lightning_gpt.checks import LOGGED


def event_files(root):
    return list((root / "lightning_logs").glob("version_*/events.out.tfevents.*"))


NOISE = [
    "exists and is not empty",  # Lightning about a checkpoint folder that holds files
    "is not supported by the model summary",
    "FLOPs",
    "litlogger",
    "TPU available",  # on every machine without one
    "callbacks used to create the checkpoint",
    "`weights_only` was not set",  # Lightning, when a save does not say (the last.ckpt at the end did not)
    "Traceback",
]


def scalar_steps(root, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = event_files(root)
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


# Python's default warning filters, as a user's shell has them (run_cli otherwise ignores warnings)
AS_A_USER = {"PYTHONWARNINGS": None}


def test_fit_then_validate_then_predict_quietly(tmp_path, small_corpus):
    fit = run_cli(*tiny_fit_args(small_corpus), cwd=tmp_path, env=AS_A_USER)
    assert fit.returncode == 0, fit.stderr
    # 58 characters: embeddings 58*32 + 32*32, two blocks of 12,704, the final LayerNorm 64
    shape = "2 blocks, d_model 32, 2 heads, context 32, vocabulary 58"
    assert f"GPT: 28,352 parameters ({shape}), precision" in fit.stderr, fit.stderr
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["best-step000006-val" + checkpoints[0][-11:], "last.ckpt"]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6
    assert saved["hyper_parameters"]["vocab"] == "".join(sorted(set(small_corpus.read_text())))
    logged = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text())
    assert logged["vocab"] == saved["hyper_parameters"]["vocab"]  # was None: read before the corpus was
    # validation scalars are charted at the steps that checkpoints and samples name
    assert scalar_steps(tmp_path, "val_loss") == [3, 6]

    validate = run_cli(
        "validate",
        f"--data.path={small_corpus}",
        "--ckpt_path=checkpoints/last.ckpt",
        "--trainer.limit_val_batches=2",
        cwd=tmp_path,
        env=AS_A_USER,
    )
    assert validate.returncode == 0, validate.stderr
    assert "val_loss" in validate.stdout and "val_bpc" in validate.stdout
    # predict through the installed `lightning-gpt` command, from the checkpoint alone in another folder
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tmp_path / "checkpoints" / "last.ckpt", bare / "model.ckpt")  # moved: see "dirpath" below
    beside_python = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    script = shutil.which("lightning-gpt", path=beside_python)
    assert script, "no lightning-gpt command beside this Python or on PATH: run pip install -e ."
    args = ["predict", "--ckpt_path=model.ckpt", "--generate.prompt=ROMEO:", "--generate.max_new_tokens=40"]
    predict = run_command(
        [script, *args, "--generate.output=out/samples.txt"], cwd=bare, timeout=240, env=AS_A_USER
    )
    assert predict.returncode == 0, predict.stderr
    text = predict.stdout.rstrip("\n")
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40
    assert (bare / "out" / "samples.txt").read_text() == text + "\n"
    assert sorted(path.name for path in bare.iterdir()) == ["model.ckpt", "out"]  # no corpus, no run folder
    again = main_in_process(*args, cwd=bare)
    assert again.stdout.rstrip("\n") == text  # same seed, same text
    for run in (fit, validate, predict):
        for noise in [*NOISE, "Warning", "dirpath has changed", "Seed set"] if run is predict else NOISE:
            assert noise not in run.stdout + run.stderr
    assert len(event_files(tmp_path)) == 1  # validate made no run folder of its own
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    # TensorBoard: every scalar, and a text sample at each validation
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_files(tmp_path)[0]), size_guidance={"tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert scalars - {"epoch", "hp_metric"} == set(LOGGED)  # what --checkpoint.monitor may name
    samples = events.Tensors("sample/text_summary")
    assert [s.step for s in samples] == [3, 6]
    assert all(len(s.tensor_proto.string_val[0]) > 100 for s in samples)


def test_saved_config_runs_again(tmp_path, small_corpus, cli_main):
    assert cli_main(*tiny_fit_args(small_corpus, steps=2, val_every=2), cwd=tmp_path).returncode == 0
    config = tmp_path / "lightning_logs" / "version_0" / "config.yaml"
    again = cli_main("fit", f"--config={config}", "--checkpoint.dirpath=second", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "second" / "last.ckpt").is_file()


def test_new_fit_never_overwrites_earlier_checkpoints(tmp_path, small_corpus, cli_main):
    assert cli_main(*tiny_fit_args(small_corpus, steps=2, val_every=2), cwd=tmp_path).returncode == 0
    before = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    again = cli_main(*tiny_fit_args(small_corpus, steps=2, val_every=2), cwd=tmp_path)
    assert again.returncode != 0
    assert again.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "--ckpt_path last" in again.stderr and "Traceback" not in again.stderr
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == before


def test_a_resumed_run_never_writes_over_another_runs_checkpoints(tmp_path, small_corpus, cli_main):
    """Before, resuming run B with run A's --checkpoint.dirpath replaced A's last.ckpt without a word."""
    fit = tiny_fit_args(small_corpus, steps=2, val_every=2)
    for run in ("A", "B"):
        assert cli_main(*fit, f"--checkpoint.dirpath=run{run}", cwd=tmp_path).returncode == 0
    before = (tmp_path / "runA" / "last.ckpt").read_bytes()
    resume = tiny_fit_args(small_corpus, steps=4, val_every=2) + ["--ckpt_path=runB/last.ckpt"]
    refused = cli_main(*resume, "--checkpoint.dirpath=runA", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        "error: runA/last.ckpt is another run's, and resuming runB/last.ckpt would write over it; pass "
        "--checkpoint.dirpath runB (its folder) or a new one"
    )
    assert (tmp_path / "runA" / "last.ckpt").read_bytes() == before
    (tmp_path / "linkB").symlink_to(tmp_path / "runB")  # the same folder by another path
    assert cli_main(*resume, "--checkpoint.dirpath=linkB/../runB/", cwd=tmp_path).returncode == 0
    shutil.copy(tmp_path / "runB" / "last.ckpt", tmp_path / "runB" / "step4.ckpt")  # for the end
    resume[-1] = "--ckpt_path=linkB/last.ckpt"
    resume[resume.index("--trainer.max_steps=4")] = "--trainer.max_steps=6"
    assert cli_main(*resume, "--checkpoint.dirpath=runB", cwd=tmp_path).returncode == 0
    assert torch.load(tmp_path / "runB" / "last.ckpt", weights_only=True)["global_step"] == 6
    # branching a run into a new folder writes over nothing; a checkpoint in the working folder is "."
    shutil.copy(tmp_path / "runB" / "last.ckpt", tmp_path / "model.ckpt")
    resume[-1], resume[resume.index("--trainer.max_steps=6")] = (
        "--ckpt_path=model.ckpt",
        "--trainer.max_steps=8",
    )
    assert cli_main(*resume, "--checkpoint.dirpath=branch", cwd=tmp_path).returncode == 0
    assert torch.load(tmp_path / "branch" / "last.ckpt", weights_only=True)["global_step"] == 8
    refused = cli_main(*resume, "--checkpoint.dirpath=runA", cwd=tmp_path)
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .endswith("pass --checkpoint.dirpath . (its folder) or a new one")
    )
    # going back to an earlier checkpoint (a best one, say) in its own folder lost the later last.ckpt
    before = (tmp_path / "runB" / "last.ckpt").read_bytes()
    resume[-1] = "--ckpt_path=runB/step4.ckpt"
    refused = cli_main(*resume, "--checkpoint.dirpath=runB", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        "error: resuming runB/step4.ckpt (step 4) would write over runB/last.ckpt (step 6), a later state of "
        "its run; continue that run with --ckpt_path last, or branch from step4.ckpt into a new "
        "--checkpoint.dirpath"
    )
    assert (tmp_path / "runB" / "last.ckpt").read_bytes() == before
    # a checkpoint of last.ckpt's own step (a best one saved at the last validation) continues the run
    shutil.copy(tmp_path / "runB" / "last.ckpt", tmp_path / "runB" / "step6.ckpt")
    resume[-1] = "--ckpt_path=runB/step6.ckpt"
    assert cli_main(*resume, "--checkpoint.dirpath=runB", cwd=tmp_path).returncode == 0
    assert torch.load(tmp_path / "runB" / "last.ckpt", weights_only=True)["global_step"] == 8


def test_save_last_false_writes_no_last_checkpoint(tmp_path, small_corpus, cli_main):
    """Before, the last.ckpt written when training ends ignored --checkpoint.save_last false."""
    fit = tiny_fit_args(small_corpus, steps=2, val_every=2)
    assert cli_main(*fit, "--checkpoint.save_last=false", cwd=tmp_path).returncode == 0
    (saved,) = (tmp_path / "checkpoints").iterdir()
    assert saved.name.startswith("best-step000002-")
    # "link" keeps a last.ckpt at the last step; the steps count as a monitored value too
    fit = tiny_fit_args(small_corpus, steps=3, val_every=2)
    link = ["--checkpoint.save_last=link", "--checkpoint.monitor=step", "--checkpoint.mode=max"]
    assert cli_main(*fit, *link, "--checkpoint.dirpath=linked", cwd=tmp_path).returncode == 0
    assert torch.load(tmp_path / "linked" / "last.ckpt", weights_only=True)["global_step"] == 3
    # beside Lightning's OnExceptionCheckpoint, another kind of Checkpoint callback (a traceback at the
    # end of fit, which that callback then saved as on_exception.ckpt); and a Timer, whose default
    # interval (an Enum) LightningCLI could not write into the hyperparameters (a one-line refusal)
    fit = tiny_fit_args(small_corpus, steps=2, val_every=2)
    on_exception = ["--trainer.callbacks+=OnExceptionCheckpoint", "--trainer.callbacks.dirpath=crashed"]
    timer = ["--trainer.callbacks+=Timer", "--trainer.callbacks.duration=00:01:00:00"]
    result = cli_main(*fit, *timer, *on_exception, "--checkpoint.dirpath=beside", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert torch.load(tmp_path / "beside" / "last.ckpt", weights_only=True)["global_step"] == 2
    # Lightning's note on the callbacks a checkpoint was made with (the Timer) matters to a resume only
    checked = cli_main(
        "validate", "--ckpt_path=beside/last.ckpt", f"--data.path={small_corpus}", cwd=tmp_path
    )
    assert checked.returncode == 0 and "Be aware" not in checked.stderr, checked.stderr
    assert not (tmp_path / "crashed").exists()
    # a fast_dev_run saves nothing (it left last.ckpt, and the real run was refused beside it)
    dry = cli_main(*fit, "--trainer.fast_dev_run=true", "--checkpoint.dirpath=dry", cwd=tmp_path)
    assert dry.returncode == 0 and not list((tmp_path / "dry").glob("*")), dry.stderr[-2000:]


def test_bad_checkpoints_get_one_line_errors(tmp_path, small_corpus, cli_main):
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, foreign)
    cases = {
        "missing.ckpt": "does not exist",
        str(not_a_checkpoint): "is not a checkpoint",
        str(foreign): "not a lightning-gpt checkpoint",
        "last": "no checkpoint at checkpoints/last.ckpt",
        "best": "checkpoint best does not exist",  # Lightning's alias: a traceback before
    }
    for ckpt, message in cases.items():
        result = cli_main("validate", f"--data.path={small_corpus}", f"--ckpt_path={ckpt}", cwd=tmp_path)
        assert result.returncode == 2, (ckpt, result.stderr)
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith("error: ") and message in last_line, result.stderr
        assert "Traceback" not in result.stderr


def test_missing_corpus_and_bad_values(tmp_path, cli_main):
    missing = cli_main("fit", "--data.path=nowhere.txt", *TINY_MODEL, cwd=tmp_path)
    assert missing.returncode == 2 and "nowhere.txt does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    typo = cli_main("fit", "--model.d_modle=32", cwd=tmp_path)
    assert typo.returncode != 0 and "d_modle" in typo.stderr
    heads = cli_main("fit", "--data.path=x.txt", "--model.num_heads=5", cwd=tmp_path)
    assert heads.returncode == 2 and "divisible" in heads.stderr


def test_resuming_on_a_corpus_with_another_vocabulary_is_refused(tmp_path, small_corpus, cli_main):
    assert cli_main(*tiny_fit_args(small_corpus, steps=2, val_every=2), cwd=tmp_path).returncode == 0
    text = small_corpus.read_text()
    assert "z" in text and "§" not in text
    # another size; and as many characters, one of them another (ids would then name other characters)
    for name, other_text in (("other.txt", "0123456789 " * 500), ("same_size.txt", text.replace("z", "§"))):
        other = tmp_path / name
        other.write_text(other_text, encoding="utf-8")
        args = ("validate", f"--data.path={other}", "--ckpt_path=checkpoints/last.ckpt")
        result = cli_main(*args, cwd=tmp_path)
        assert result.returncode == 2 and "differs from the model's" in result.stderr.strip().splitlines()[-1]
    assert "'§' only in the corpus, 'z' only in the model; use the corpus the model" in result.stderr


def test_a_corpus_without_newlines_trains_and_generates(tmp_path, small_corpus, cli_main):
    """The default prompts are a newline: the sample at the first validation ended fit in a traceback.
    And its vocabulary starts " #", a YAML comment: predict read it back from the checkpoint as None."""
    one_line = tmp_path / "one_line.txt"
    one_line.write_text(small_corpus.read_text().replace("\n", " ").replace("!", "#").replace('"', "#"))
    fit = cli_main(*tiny_fit_args(one_line, steps=2, val_every=2), "--sample.prompt=ROMEO\n", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-2000:]
    sample = fit.stdout.strip()
    assert sample.startswith("ROMEO") and len(sample) == len("ROMEO") + 300 and "\n" not in sample
    predict = cli_main(
        "predict", "--ckpt_path=checkpoints/last.ckpt", "--generate.max_new_tokens=5", cwd=tmp_path
    )
    assert predict.returncode == 0 and len(predict.stdout.rstrip("\n")) == 6  # the vocabulary's first + 5


@pytest.mark.parametrize("log_every", [1, 50], ids=["checked every step", "checked before each save"])
def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoints(
    tmp_path, small_corpus, cli_main, log_every: int
):
    result = cli_main(
        *tiny_fit_args(small_corpus, steps=60, val_every=30),
        f"--trainer.log_every_n_steps={log_every}",  # the loss is checked at logging steps and saves
        "--model.learning_rate=1e30",
        "--model.warmup_steps=1",
        "--trainer.gradient_clip_val=null",
        "--trainer.precision=32-true",
        "--checkpoint.every_n_train_steps=1",
        "--checkpoint.monitor=null",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "the training loss became" in last and "at step" in last and "Traceback" not in result.stderr
    kept = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values() if t.is_floating_point())


class NanLossAt(L.Callback):
    """The loss of training step ``step`` (from 0) alone is nan; its gradients stay finite."""

    def __init__(self, step: int = 2):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        model = pl_module.model
        model.__dict__.pop("forward", None)
        if trainer.global_step == self.step:
            plain = model.forward

            def forward(idx, targets):
                logits, loss = plain(idx, targets)
                return logits, loss + loss.detach() * math.nan  # the value nan, the gradients finite

            model.forward = forward


def test_a_nan_loss_between_logging_steps_still_stops_training(tmp_path, small_corpus, cli_main):
    """Every loss since the last check counts: a nan at step 3 alone was forgotten by step 4's check."""
    fit = [*tiny_fit_args(small_corpus, steps=8, val_every=8), "--trainer.log_every_n_steps=4"]
    result = cli_main(*fit, f"--trainer.callbacks+={__name__}.NanLossAt", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "the training loss became nan or inf at step 4 or earlier" in result.stderr.splitlines()[-1]


class InfValidationLoss(L.Callback):
    """Every validation loss is inf (as an overflow in half precision makes it)."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        model = pl_module.model
        plain = type(model).forward.__get__(model)

        def forward(idx, targets):
            logits, loss = plain(idx, targets)
            return logits, loss * math.inf

        model.forward = forward

    def on_validation_end(self, trainer, pl_module):
        pl_module.model.__dict__.pop("forward", None)


def test_an_infinite_validation_loss_stops_training(tmp_path, small_corpus, cli_main):
    fit = [
        *tiny_fit_args(small_corpus, steps=4, val_every=2),
        f"--trainer.callbacks+={__name__}.InfValidationLoss",
    ]
    result = cli_main(*fit, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "the validation loss became inf at step" in result.stderr.splitlines()[-1]


def test_print_config_runs_as_is(tmp_path, small_corpus, cli_main):
    printed = cli_main(*tiny_fit_args(small_corpus), "--print_config", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    config = tmp_path / "printed.yaml"
    config.write_text(printed.stdout)
    again = cli_main("fit", f"--config={config}", "--trainer.fast_dev_run=true", cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_settings_of_another_subcommand_are_noted_not_ignored_silently(bare_dir, cli_main):
    predict = ["predict", "--ckpt_path=model.ckpt", "--generate.max_new_tokens=2"]
    result = cli_main(*predict, "--sample.prompt=X", "--data.path=nowhere.txt", cwd=bare_dir)
    assert result.returncode == 0
    assert "note: predict ignores --sample.prompt, --data.path (another subcommand's)" in result.stderr
    # said before a refusal that comes later (here: a shape the checkpoint overrides), so no run is made
    refused = ["--ckpt_path=model.ckpt", "--model.num_heads=4"]
    result = cli_main("fit", *refused, "--generate.prompt=A", "--generate.output=a.txt", cwd=bare_dir)
    assert "note: fit ignores --generate.prompt, --generate.output (another subcommand's)" in result.stderr
    result = cli_main("validate", *refused, "--sample.seed=3", "--generate.top_k=2", cwd=bare_dir)
    assert "note: validate ignores --sample.seed, --generate.top_k (another subcommand's)" in result.stderr
    assert result.returncode == 2 and "model.num_heads 4: the checkpoint's 2" in result.stderr
