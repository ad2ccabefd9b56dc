"""``cli.py`` end to end in subprocesses, with a tiny model on a small corpus."""

import torch
from conftest import TINY_MODEL, run_cli, tiny_fit_args


def event_files(root):
    return list((root / "lightning_logs").glob("version_*/events.out.tfevents.*"))


def test_fit_then_validate_then_resume(tmp_path, small_corpus):
    fit = run_cli(*tiny_fit_args(small_corpus), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints
    assert any(name.startswith("best-step") for name in checkpoints)
    assert len(event_files(tmp_path)) == 1
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6
    assert saved["hyper_parameters"]["vocab"] == "".join(sorted(set(small_corpus.read_text())))

    validate = run_cli(
        "validate",
        f"--data.path={small_corpus}",
        "--ckpt_path=checkpoints/last.ckpt",
        "--trainer.limit_val_batches=2",
        cwd=tmp_path,
    )
    assert validate.returncode == 0, validate.stderr
    assert "val_loss" in validate.stdout and "val_bpc" in validate.stdout

    resume = run_cli(*tiny_fit_args(small_corpus, steps=9), "--ckpt_path=last", cwd=tmp_path)
    assert resume.returncode == 0, resume.stderr
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 9


def test_saved_config_runs_again(tmp_path, small_corpus):
    assert run_cli(*tiny_fit_args(small_corpus, steps=2, val_every=2), cwd=tmp_path).returncode == 0
    config = tmp_path / "lightning_logs" / "version_0" / "config.yaml"
    again = run_cli("fit", f"--config={config}", "--checkpoint.dirpath=second", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "second" / "last.ckpt").is_file()


def test_new_fit_never_overwrites_earlier_checkpoints(tmp_path, small_corpus):
    assert run_cli(*tiny_fit_args(small_corpus, steps=2, val_every=2), cwd=tmp_path).returncode == 0
    before = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    again = run_cli(*tiny_fit_args(small_corpus, steps=2, val_every=2), cwd=tmp_path)
    assert again.returncode != 0
    assert again.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "--ckpt_path last" in again.stderr and "Traceback" not in again.stderr
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == before


def test_bad_checkpoints_get_one_line_errors(tmp_path, small_corpus):
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, foreign)
    cases = {
        "missing.ckpt": "does not exist",
        str(not_a_checkpoint): "cannot load checkpoint",
        str(foreign): "not a lightning-gpt checkpoint",
        "last": "no checkpoint at checkpoints/last.ckpt",
    }
    for ckpt, message in cases.items():
        result = run_cli("validate", f"--data.path={small_corpus}", f"--ckpt_path={ckpt}", cwd=tmp_path)
        assert result.returncode == 2, (ckpt, result.stderr)
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith("error: ") and message in last_line, result.stderr
        assert "Traceback" not in result.stderr


def test_missing_corpus_and_bad_values(tmp_path):
    missing = run_cli("fit", "--data.path=nowhere.txt", *TINY_MODEL, cwd=tmp_path)
    assert missing.returncode == 2 and "nowhere.txt does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    typo = run_cli("fit", "--model.d_modle=32", cwd=tmp_path)
    assert typo.returncode != 0 and "d_modle" in typo.stderr
    heads = run_cli("fit", "--data.path=x.txt", "--model.num_heads=5", cwd=tmp_path)
    assert heads.returncode == 2 and "divisible" in heads.stderr
