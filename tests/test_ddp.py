"""Lightning's DDP on the CPU with two processes (gloo)."""

import json
import os
import re

import pytest
from conftest import ROOT, run_cli, tiny_fit_args


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path, small_corpus):
    env_path = os.pathsep.join([str(ROOT / "tests" / "helpers"), os.environ.get("PYTHONPATH", "")])
    os.environ["PYTHONPATH"] = env_path  # the launcher re-runs cli.py for rank 1 with this environment
    try:
        result = run_cli(
            *tiny_fit_args(small_corpus, steps=8, val_every=8),
            "--trainer.limit_val_batches=null",
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
            "--trainer.precision=32-true",
            "--trainer.callbacks+=ddp_probe.RankProbe",
            "--sample.print_at_end=false",
            cwd=tmp_path,
            timeout=300,
        )
    finally:
        os.environ["PYTHONPATH"] = env_path.split(os.pathsep, 1)[1]
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"], "both ranks trained on the same windows"
    assert ranks[0]["weights_sum"] == ranks[1]["weights_sum"]
    assert ranks[0]["weights_abs_sum"] == ranks[1]["weights_abs_sum"]
    # val_loss is synced: every rank logs the mean over all validation tokens of both ranks
    assert ranks[0]["val_loss"] == pytest.approx(ranks[1]["val_loss"], abs=1e-6)
    # ... which is what one process computes over the whole validation split
    single = run_cli(
        "validate",
        f"--data.path={small_corpus}",
        "--ckpt_path=checkpoints/last.ckpt",
        "--trainer.precision=32-true",
        cwd=tmp_path,
    )
    assert single.returncode == 0, single.stderr
    value = float(re.search(r"val_loss\s+([0-9.]+)", single.stdout).group(1))
    assert value == pytest.approx(ranks[0]["val_loss"], abs=2e-3)
    # checkpoints are written once, by rank 0: one best, one last, no leftovers
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(names) == 2 and "last.ckpt" in names and names[0].startswith("best-step000008")
