"""Lightning's DDP on the CPU with two processes (gloo): training, synced validation, exact resume,
and runs that cannot hang the test suite."""

import json
import os
import re
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli, run_command, tiny_fit_args

LIMIT_S = 120  # one two-process run of the tiny model takes seconds; past this it is hung


def ddp_env() -> dict[str, str | None]:
    """The environment of a two-process CPU run that only ever talks to itself.

    Rendezvous and gloo on the loopback interface (gloo otherwise uses the address the hostname
    resolves to, which a sandbox may not route), no GPU (a CPU run would initialise CUDA for pinned
    memory), one thread per process, and none of a surrounding launcher's variables (SLURM,
    torchrun): with those Lightning would wait for ranks it never starts.
    """
    paths = [str(ROOT / "tests" / "helpers"), os.environ.get("PYTHONPATH", "")]
    env: dict[str, str | None] = {
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),  # rank 1 is started with this too
        "MASTER_ADDR": "127.0.0.1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    interfaces = {name for _, name in socket.if_nameindex()}
    loopback = next((name for name in ("lo", "lo0") if name in interfaces), None)
    if loopback:
        env["GLOO_SOCKET_IFNAME"] = loopback
    for name in ("MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        env[name] = None
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "LSB_JOBID"):
        env[name] = None
    return env


def ddp_fit(corpus: Path, cwd: Path, probe: str, *extra: str, status: int = 0) -> str:
    """8 steps of the tiny model with dropout on two CPU processes, each with its own streams; the
    run must end with ``status``. Returns its stderr."""
    result = run_cli(
        *tiny_fit_args(corpus, steps=8, val_every=8),
        "--trainer.limit_val_batches=null",
        "--model.dropout=0.1",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.precision=32-true",
        "--sample.print_at_end=false",
        "--trainer.callbacks+=ddp_probe.PerRankSeeds",
        "--trainer.callbacks+=ddp_probe.RankProbe",
        f"--trainer.callbacks.folder={probe}",
        *extra,
        cwd=cwd,
        timeout=LIMIT_S,
        env=ddp_env(),
    )
    assert result.returncode == status, result.stderr[-3000:]
    return result.stderr


def same(a: object, b: object) -> bool:
    """Whether two checkpoint values are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def probes(folder: Path) -> list[dict]:
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, shakespeare: str) -> Path:
    """The folder of an uninterrupted two-process run that also kept its step-4 checkpoint (mid/)."""
    root = tmp_path_factory.mktemp("ddp")
    # 19,700 characters: a validation split of 61 windows, which two ranks cannot share evenly
    (root / "corpus.txt").write_text(shakespeare[:19_700], encoding="utf-8")
    ddp_fit(
        root / "corpus.txt",
        root,
        "probe",
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.dirpath=mid",
        "--trainer.callbacks.filename={step}",
        "--trainer.callbacks.every_n_train_steps=4",
        "--trainer.callbacks.save_top_k=-1",
    )
    return root


def test_two_process_ddp_on_cpu(ddp_run, cli_main):
    ranks = probes(ddp_run / "probe")
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"], "both ranks trained on the same windows"
    assert ranks[0]["weights_sum"] == ranks[1]["weights_sum"]
    assert ranks[0]["weights_abs_sum"] == ranks[1]["weights_abs_sum"]
    # val_loss is synced: every rank logs the mean over all validation tokens of both ranks
    assert ranks[0]["val_loss"] == pytest.approx(ranks[1]["val_loss"], abs=1e-6)
    # ... which is what one process computes over the whole validation split: every window once
    single = cli_main(
        "validate",
        f"--data.path={ddp_run / 'corpus.txt'}",
        "--ckpt_path=checkpoints/last.ckpt",
        "--trainer.precision=32-true",
        cwd=ddp_run,
    )
    assert single.returncode == 0, single.stderr
    value = float(re.search(r"val_loss\W+([0-9.]+)", single.stdout).group(1))  # a plain or a Rich table
    assert value == pytest.approx(ranks[0]["val_loss"], abs=1e-5)
    # checkpoints are written once, by rank 0: one best, one last, no leftovers
    names = sorted(p.name for p in (ddp_run / "checkpoints").iterdir())
    assert len(names) == 2 and "last.ckpt" in names and names[0].startswith("best-step000008")


def test_two_process_resume_gives_every_rank_its_own_streams(ddp_run):
    # Resume the step-4 checkpoint to step 8: what a run stopped at step 4 would have left.
    ddp_fit(
        ddp_run / "corpus.txt",
        ddp_run,
        "probe_resumed",
        "--ckpt_path=mid/step=4.ckpt",
        "--checkpoint.dirpath=resumed",
    )
    draws, resumed_draws = (
        [r["draws"] for r in probes(ddp_run / folder)] for folder in ("probe", "probe_resumed")
    )
    assert draws[0] != draws[1], "the two ranks' streams must differ, or mixing them up would not show"
    whole = torch.load(ddp_run / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(ddp_run / "resumed" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == whole["global_step"] == 8
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), f"{name} differs after resuming"
    assert resumed_draws == draws, "torch, Python and NumPy streams of each rank, after the last step"
    # the checkpoint holds one entry per rank, as plain data (it was loaded with weights_only)
    saved = torch.load(ddp_run / "mid" / "step=4.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and len(saved["rng_states"]) == 2
    assert not torch.equal(saved["rng_states"][0]["torch"], saved["rng_states"][1]["torch"])


def test_a_signal_to_every_rank_or_to_one_stops_all_at_one_step(ddp_run):
    # SIGTERM to the whole process group at step 4, as Ctrl-C, SLURM and systemd send (Lightning's own
    # handler runs a collective inside the signal handler, and such a run hung)
    stderr = ddp_fit(
        ddp_run / "corpus.txt",
        ddp_run,
        "probe_unused",
        "--checkpoint.dirpath=signalled",
        "--trainer.callbacks+=ddp_probe.SignalAt",
        status=143,
    )
    last = (ddp_run / "signalled" / "last.ckpt").resolve()
    assert stderr.strip().splitlines()[-1] == (
        f"SIGTERM: saved step 4 to {last}; continue: the same command with --ckpt_path last"
    )
    # ... exactly the state of the uninterrupted run's step-4 checkpoint, whose resume ends as that
    # run does (test_two_process_resume_gives_every_rank_its_own_streams): weights, optimizer, every
    # rank's generators, the loops' progress
    saved, mid = (torch.load(path, weights_only=True) for path in (last, ddp_run / "mid" / "step=4.ckpt"))
    assert saved["global_step"] == mid["global_step"] == 4
    for name, tensor in mid["state_dict"].items():
        assert torch.equal(tensor, saved["state_dict"][name]), name
    for key in ("optimizer_states", "lr_schedulers", "rng_states", "loops"):
        assert same(saved[key], mid[key]), key
    # SIGINT to rank 1 alone: rank 0 learns of it at the end of the step and both stop there
    stderr = ddp_fit(
        ddp_run / "corpus.txt",
        ddp_run,
        "probe_unused",
        "--checkpoint.dirpath=interrupted",
        "--trainer.callbacks+=ddp_probe.SignalAt",
        "--trainer.callbacks.name=SIGINT",
        "--trainer.callbacks.rank=1",
        status=130,
    )
    assert stderr.strip().splitlines()[-1].startswith("SIGINT: saved step 4 to ")
    assert torch.load(ddp_run / "interrupted" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_a_nan_loss_on_one_rank_stops_every_rank(tmp_path, small_corpus):
    # Rank 1 alone sees a nan loss at step 4 (a logging step); before, it stopped there while rank 0
    # went on into the gradient all-reduce: a crash with gloo's traceback (or a hang with NCCL)
    stderr = ddp_fit(
        small_corpus,
        tmp_path,
        "probe_unused",
        "--checkpoint.dirpath=poisoned",
        "--ckpt_path=last",
        "--trainer.callbacks+=ddp_probe.PoisonAt",
        status=2,
    )
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.count("note: no poisoned/last.ckpt yet; starting a new run") == 1  # not once per rank
    errors = {line for line in stderr.splitlines() if line.startswith("error:")}
    assert errors == {
        "error: the training loss became nan or inf at step 4 or earlier; training stopped and the "
        "checkpoints saved so far are kept. Train a new run with a lower --model.learning_rate (a resume "
        "would repeat the same batches)"
    }


def test_a_failed_save_on_rank_0_ends_every_rank_with_one_line(tmp_path, small_corpus):
    # Files over 100 kB cannot be written (SIGXFSZ ignored, as a full disk): rank 0's first save fails.
    # Before, rank 1 waited for it in the save's barrier and died with gloo's traceback (NCCL: a hang).
    fit = [sys.executable, str(ROOT / "cli.py"), *tiny_fit_args(small_corpus, steps=8, val_every=4)]
    fit += [
        "--model.d_model=64",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
    ]
    fit += ["--trainer.precision=32-true", "--checkpoint.dirpath=full"]
    shell = "trap '' XFSZ; ulimit -f 100; exec \"$@\""
    result = run_command(["bash", "-c", shell, "bash", *fit], cwd=tmp_path, timeout=LIMIT_S, env=ddp_env())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot save checkpoint ")
    assert "File too large; the checkpoints saved before are unchanged" in result.stderr


def test_a_hung_run_fails_with_its_stacks_and_leaves_no_process(tmp_path):
    # A parent that starts a child, as Lightning's launcher starts rank 1, and both sleep on.
    script = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(child.pid, flush=True); time.sleep(600)"
    )
    with pytest.raises(pytest.fail.Exception) as failure:
        run_command([sys.executable, "-c", script], cwd=tmp_path, timeout=3)
    message = str(failure.value)
    assert "test_a_hung_run_fails_with_its_stacks_and_leaves_no_process" in message
    assert "did not finish in 3 s" in message
    assert "stacks of process 2 of the group" in message, "both processes print their stacks"
    child = int(message.split("--- stdout (tail) ---\n", 1)[1].split()[0])
    assert gone_within(child, seconds=5), "the child outlived its killed process group"


def gone_within(pid: int, seconds: float) -> bool:
    """Whether ``pid`` has exited (a zombie, dead but not yet reaped, has) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False
