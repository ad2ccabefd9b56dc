"""Settings given with --ckpt_path: the checkpoint's model settings win, and a differing one is refused
(LightningCLI would ignore it silently)."""

from __future__ import annotations

import torch
from conftest import error_lines, one_line_error, tiny_fit_args


def test_a_resume_takes_the_checkpoints_shape_and_the_runs_saved_config(tmp_path, small_corpus, cli_main):
    """A resume takes the checkpoint's shape: --sample.keep is checked against it, not the flags'. The
    run's own config.yaml (model.vocab null: the corpus's) resumes it as it is."""
    assert cli_main(*tiny_fit_args(small_corpus, steps=2, val_every=2), cwd=tmp_path).returncode == 0
    resume = [*tiny_fit_args(small_corpus, steps=4, val_every=2), "--ckpt_path=last"]
    resume = [arg for arg in resume if not arg.startswith("--model.context_length")]  # the seed recipe's 256
    result = cli_main(*resume, "--sample.keep=40", cwd=tmp_path)
    one_line_error(result, "invalid --sample settings: keep must be <= the model's context_length 32, got 40")
    saved = ["--config=lightning_logs/version_0/config.yaml", "--sample.every_n_validations=0"]
    result = cli_main("fit", *saved, "--trainer.max_steps=3", "--ckpt_path=last", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_model_settings_that_a_checkpoint_overrides_are_refused_not_ignored(bare_dir, small_corpus, cli_main):
    """LightningCLI puts a checkpoint's hyperparameters over the settings given: a changed one was ignored
    silently (a lower learning rate for a resumed run that had diverged, say)."""
    kept = torch.load(bare_dir / "model.ckpt", weights_only=True)["hyper_parameters"]["learning_rate"]
    (bare_dir / "lower.yaml").write_text("model:\n  learning_rate: 0.0001\n")
    fit = ["fit", f"--data.path={small_corpus}", "--ckpt_path=model.ckpt"]
    error = f"error: model.learning_rate 0.0001: the checkpoint's {kept} is kept with --ckpt_path; "
    forms = [["--model.learning_rate=1e-4"], ["--config=lower.yaml"], ["-c", "lower.yaml"]]
    for given in [*forms, ["--model={learning_rate: 0.0001}"]]:
        result = cli_main(*fit, *given, "--model.compile=false", cwd=bare_dir)
        fix = "set it to that, or remove it (flag or --config), or train a new run with it"
        assert error_lines(result) == [error + fix]
    (bare_dir / "nested.yaml").write_text("fit:\n  model:\n    learning_rate: 0.0001\n")  # by subcommand
    assert error_lines(cli_main("--config=nested.yaml", *fit, "--model.compile=false", cwd=bare_dir)) == [
        error + fix
    ]
    validate = ["validate", "--ckpt_path=model.ckpt", "--model.num_heads=4", "--model.d_model=32"]
    one_line_error(cli_main(*validate, cwd=bare_dir), "model.num_heads 4: the checkpoint's 2 is kept with")
    # the checkpoint's own values, compile (not stored) and, outside fit, what is not the shape may be given
    predict = ["predict", "--ckpt_path=model.ckpt", "--model.d_model=32", "--generate.max_new_tokens=1"]
    assert cli_main(*predict, "--model.compile=false", "--model.dropout=0.5", cwd=bare_dir).returncode == 0
