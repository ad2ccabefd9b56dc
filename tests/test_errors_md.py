"""Every row of docs/errors.md has a test: ROWS names it."""

from __future__ import annotations

from conftest import ROOT

# the test -> the cases (first column) of docs/errors.md that it checks
ROWS = {
    "test_corpus.py::test_empty_folders_and_empty_files_are_user_errors": [
        "corpus path does not exist",
        "corpus folder without `.txt` files",
        "corpus file empty",
    ],
    "test_corpus.py::test_a_non_utf8_file_in_a_folder_is_named_with_the_byte_offset": ["corpus not UTF-8"],
    "test_corpus.py::test_unreadable_corpus_and_unwritable_cache": [
        "corpus unreadable",
        "token cache cannot be written",
    ],
    "test_corpus.py::test_corpus_changed_during_the_build": [
        "corpus changed while its token cache was built"
    ],
    "test_corpus.py::test_an_edited_token_cache_is_rebuilt_never_used": [
        "token cache edited after it was built"
    ],
    "test_data.py::test_bad_corpora_give_clear_errors": ["a split shorter than the context + 1"],
    "test_errors.py::test_a_package_a_callback_needs_is_one_line": [
        "a package that a callback or logger needs is not installed"
    ],
    "test_errors.py::test_automatic_precision_is_refused_with_a_strategy_that_forks_on_cuda": [
        "automatic precision with `ddp_fork` or `ddp_notebook` on CUDA"
    ],
    "test_data.py::test_fewer_validation_windows_than_processes_is_one_line": [
        "fewer validation windows than processes (a small corpus on many devices)"
    ],
    "test_errors.py::test_a_checkpoint_folder_that_cannot_be_made_is_one_line": [
        "checkpoint folder that cannot be made (read-only, a file in the way)"
    ],
    "test_checkpoint_files.py::test_a_folder_that_cannot_be_written_is_refused_when_locked": [
        "a checkpoint folder you cannot write to, found before training"
    ],
    "test_errors.py::test_a_log_folder_that_cannot_be_written_is_found_before_training": [
        "a log folder that cannot be written (read-only working folder, a file in the way), found before "
        "training"
    ],
    "test_predict.py::test_an_output_that_is_a_file_predict_reads_is_refused": [
        "`--generate.output` that is the checkpoint or the prompt file it reads"
    ],
    "test_download.py::test_cached_file_with_wrong_hash_is_replaced_with_a_note": [
        "downloaded corpus edited or damaged (`data/tinyshakespeare.txt` with another sha256)"
    ],
    "test_errors.py::test_trainer_settings_lightning_checks_while_running_are_one_line": [
        "a Trainer setting Lightning checks once fit runs"
    ],
    "test_errors.py::test_bad_settings_are_refused_before_anything_is_built": [
        "batch size below 1",
        "validation fraction outside (0, 1)",
        "validation interval not a multiple of the accumulated batches",
        "impossible `--sample` setting",
        "a count below 1 (accumulated batches, validation interval)",
        "optimizer setting out of range (learning rate, betas, weight decay, final LR ratio, warmup, decay)",
        "negative number of dataloader workers",
        "a `--checkpoint` setting Lightning refuses",
        "`--checkpoint.monitor` (or a callback's monitor) not a logged value",
        "a Trainer setting Lightning refuses (accelerator, devices)",
        "a package the accelerator needs (`--trainer.accelerator tpu` without torch_xla)",
        "impossible model shape or setting",
        "model too big (a typo in a size)",
        "`--trainer.max_epochs` without `--trainer.max_steps`",
        "a callback setting Lightning refuses",
        "`--trainer.enable_checkpointing false`",
        "a ModelCheckpoint of yours that Lightning cannot tell from fit's",
    ],
    "test_errors.py::test_checkpoint_settings_this_version_lacks_are_one_line": [
        "a checkpoint with settings this version does not have"
    ],
    "test_cli.py::test_a_resumed_run_never_writes_over_another_runs_checkpoints": [
        "resuming into a folder that holds another run's `last.ckpt`",
        "resuming a run's `best-…` (or any file but `last.ckpt`) in its own folder, from a step before "
        "`last.ckpt`'s",
    ],
    "test_download.py::test_404_names_the_url_and_the_manual_way": ["HTTP error 4xx"],
    "test_download.py::test_persistent_server_errors_give_up_clearly": [
        "still failing after the retries (timeouts, dropped connections, 5xx)"
    ],
    "test_download.py::test_wrong_hash_leaves_nothing": ["file with the wrong sha256"],
    "test_download.py::test_unsupported_or_malformed_urls_are_user_errors": [
        "malformed URL, too many redirects"
    ],
    "test_errors.py::test_no_step_count_and_no_vocabulary": [
        "no step count for the schedule (a run limited by `--trainer.max_time`)",
        "no vocabulary to build the model from",
    ],
    "test_errors.py::test_python_users_get_one_clear_line": [
        "from Python: generating before the model is built (no fit, checkpoint or vocabulary)",
        "from Python: a `CharDataModule` with longer windows than the model's context (the CLI links them)",
    ],
    "test_cli.py::test_non_finite_loss_stops_with_the_step_and_keeps_checkpoints": [
        "training or validation loss NaN or inf"
    ],
    "test_cli.py::test_resuming_on_a_corpus_with_another_vocabulary_is_refused": [
        "corpus vocabulary differs from the checkpoint's"
    ],
    "test_resume_settings.py::test_model_settings_that_a_checkpoint_overrides_are_refused_not_ignored": [
        "a model setting (`--model.*` flag or `--config`) whose value differs from the checkpoint's "
        "(LightningCLI would keep the checkpoint's silently)"
    ],
    "test_errors.py::test_argument_mistakes_are_one_line_without_the_usage": [
        "misspelt option",
        "value of the wrong type",
        "unknown subcommand (also `test`)",
        "`--config` file missing",
    ],
    "test_errors.py::test_a_config_that_is_not_a_mapping_of_settings_is_named": [
        "`--config` file that is not YAML settings (also a broken seed recipe, which `fit` reads first)"
    ],
    "test_errors.py::test_inputs_are_checked_before_state_and_all_at_once": ["several input mistakes"],
    "test_cli.py::test_new_fit_never_overwrites_earlier_checkpoints": ["new `fit` over an earlier run"],
    "test_cli.py::test_bad_checkpoints_get_one_line_errors": [
        "`validate`/`predict --ckpt_path last` with nothing there (`fit` starts a new run instead, with a "
        "`note:` line)",
        "checkpoint file missing",
    ],
    "test_checkpoint_urls.py::test_checkpoint_folders_at_urls": [
        "a URL whose filesystem is unknown or whose package is missing",
        "a checkpoint URL that does not exist",
    ],
    "test_resume.py::test_signals_a_full_disk_and_a_second_fit_lose_nothing": [
        "a save fails (disk full, quota, permission)",
        "a second `fit` into a folder another `fit` is using",
        "a new `fit` under SLURM beside a requeued run's `hpc_ckpt_*.ckpt`",
    ],
    "test_errors.py::test_files_that_are_not_sound_checkpoints": [
        "checkpoint path is a folder",
        "checkpoint file empty",
        "not a checkpoint at all (text, random bytes, a plain pickle)",
        "checkpoint cut short or altered",
        "a checkpoint of another project",
        "checkpoint's model settings impossible or too big",
        "checkpoint's weights do not fit its model settings",
    ],
    "test_safe_loading.py::test_cli_refuses_a_pickle_payload": ["checkpoint holds pickled Python objects"],
    "test_predict.py::test_an_output_that_cannot_be_written_is_one_line": [
        "`--generate.output` a folder (or ending in `/`), or not writable"
    ],
    "test_predict.py::test_a_stdout_that_cannot_print_the_vocabulary_is_one_line_before_generating": [
        "standard output cannot print a character of the model's vocabulary (`PYTHONIOENCODING=ascii`, a "
        "Windows pipe)"
    ],
    "test_predict.py::test_predict_without_checkpoint": [
        "`predict` (also interactive) or `validate` without a checkpoint"
    ],
    "test_predict.py::test_bad_generation_input": [
        "impossible sampling setting",
        "prompt characters outside the vocabulary",
    ],
    "test_errors.py::test_prompt_file_missing": [
        "`--generate.prompt_file` missing, a folder, empty or not UTF-8"
    ],
    "test_generation.py::test_broken_weights_are_refused_not_sampled": [
        "model outputs not finite (broken weights)"
    ],
    "test_serve_settings.py::test_serve_refuses_bad_arguments_in_one_line": [
        "`serve --host` that LitServe cannot listen on",
        "`serve` port taken",
        "`serve --port` outside 1024–65535",
        "`serve` a checkpoint with nan or inf weights",
        "`serve` a checkpoint at a URL other than `file://` (`last`: `checkpoints/last.ckpt`)",
        "`serve` argument missing, misspelt or of the wrong type",
    ],
    "test_serve.py::test_bad_requests_get_one_message_and_the_server_keeps_serving": [
        "request body not JSON, or not an object",
        "request body not UTF-8",
        "request string with half of a surrogate pair",
        "request body over 1 MB",
        "`/predict` without a prompt string",
        "`/predict` with a field it does not know",
        "request value of the wrong type",
        "request with an impossible sampling setting",
        "request prompt or `max_new_tokens` over the cap",
        "request seed out of range",
        "request prompt characters outside the vocabulary",
        "chat messages missing, or not text",
        "chat `n` out of range, or streamed",
    ],
    "test_serve.py::test_other_sites_pages_are_refused": [
        "a request from another site's web page (HTTP 403)",
    ],
}


def test_every_row_of_errors_md_has_a_test():
    table = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    cases = [row.split(" | ")[0].removeprefix("| ") for row in table.splitlines() if row.startswith("| ")]
    cases = [case for case in cases if case != "case"]
    assert len(cases) >= 30 and sorted(cases) == sorted(case for row in ROWS.values() for case in row)
    for test in ROWS:
        file, name = test.split("::")
        assert f"def {name}(" in (ROOT / "tests" / file).read_text(encoding="utf-8"), test
