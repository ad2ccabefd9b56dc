"""Exact resume after a kill, and checkpoints that survive kills during saves."""

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CLI, SLURM, TINY_MODEL, main_in_process, run_command

# Dropout on and two dataloader workers: both must be resumed exactly.
RUN = [
    *TINY_MODEL,
    "--model.dropout=0.1",
    "--model.decay_steps=60",
    "--data.num_workers=2",
    "--trainer.val_check_interval=20",
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=5",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--sample.print_at_end=false",
]


def fit(corpus: Path, cwd: Path, *extra: str) -> None:
    """A fit in this process: the runs that are killed or signalled below are processes of their own."""
    result = main_in_process("fit", f"--data.path={corpus}", *RUN, *extra, cwd=cwd)
    assert result.returncode == 0, result.stderr
    # resuming into the run's own folder is the point: Lightning's "is not empty" warning is not shown
    assert "exists and is not empty" not in result.stderr, result.stderr
    assert result.stdout == ""  # --sample.print_at_end false: no closing sample


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), f"{name} differs after resuming"


def step_of(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["global_step"]
    except Exception:
        return -1


class LastAtEachStep(L.Callback):
    """The step that checkpoints/last.ckpt holds when each training step starts (what a kill leaves)."""

    def __init__(self, folder: Path):
        self.folder, self.steps = folder, []

    def on_train_batch_start(self, trainer, *args) -> None:
        self.steps.append(step_of(self.folder / "checkpoints" / "last.ckpt"))


def test_last_ckpt_follows_every_validation_even_without_a_new_best(tmp_path, small_corpus, monkeypatch):
    """Lightning 2.6 writes last.ckpt only beside a new best; learning rate 0 never makes one after the
    first validation, yet last.ckpt must hold the step of every validation (what a kill leaves) and the
    run's final step (a resume continues from there). Beside it, a ModelCheckpoint of the user's, every 2
    steps, files named by step: before, they were named after the last validation's step (the step logged
    for the charts), so they overwrote one another, and last.ckpt followed new bests only again."""
    from lightning_gpt.cli import make_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(CLI)])
    frozen = ["--model.learning_rate=0", "--trainer.max_steps=9", "--trainer.val_check_interval=3"]
    every = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath=every"]
    every += ["--trainer.callbacks.every_n_train_steps=2", "--trainer.callbacks.save_top_k=-1"]
    probe = LastAtEachStep(tmp_path)
    make_cli(["fit", f"--data.path={small_corpus}", *RUN, *frozen, *every, "--data.num_workers=0"], [probe])
    folder = tmp_path / "checkpoints"
    assert [path.name for path in folder.glob("best-*.ckpt")] == [next(folder.glob("best-step000003-*")).name]
    assert probe.steps == [-1, -1, -1, 3, 3, 3, 6, 6, 6] and step_of(folder / "last.ckpt") == 9
    saved = {path.name: step_of(path) for path in (tmp_path / "every").iterdir()}
    assert saved == {f"epoch=0-step={step}.ckpt": step for step in (2, 4, 6, 8)}
    more = main_in_process(
        "fit",
        f"--data.path={small_corpus}",
        *RUN,
        *frozen[:1],
        "--trainer.max_steps=12",
        "--trainer.val_check_interval=3",
        "--ckpt_path=last",
        cwd=tmp_path,
    )
    assert more.returncode == 0, more.stderr
    assert step_of(folder / "last.ckpt") == 12 and "new run" not in more.stderr


def test_a_step_cadence_keeps_last_ckpt_at_the_end_and_best_at_validations(tmp_path, small_corpus, cli_main):
    # Saves every 7 steps, validations every 10, 20 steps: last.ckpt must end at step 20 (not 14), and a
    # best checkpoint only where a validation measured its val_loss (not at 14 under the step-10 value)
    cadence = [
        "--trainer.max_steps=20",
        "--trainer.val_check_interval=10",
        "--checkpoint.every_n_train_steps=7",
        "--checkpoint.save_top_k=3",  # room for a stale one: with 1, a stale val_loss is never better
    ]
    result = cli_main("fit", f"--data.path={small_corpus}", *RUN, *cadence, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "checkpoints"
    assert step_of(folder / "last.ckpt") == 20
    best = {int(re.match(r"best-step(\d+)-", path.name)[1]): path for path in folder.glob("best-*.ckpt")}
    assert set(best) == {10, 20}, best
    assert all(step_of(path) == step for step, path in best.items())


@pytest.fixture(scope="module")
def whole(tmp_path_factory, shakespeare) -> Path:
    """The folder of an uninterrupted 60-step run (its last.ckpt and lightning_logs/version_0)."""
    folder = tmp_path_factory.mktemp("whole")
    (folder / "small.txt").write_text(shakespeare[:20_000], encoding="utf-8")
    fit(folder / "small.txt", folder, "--trainer.max_steps=60", "--checkpoint.dirpath=whole")
    return folder


def test_a_stopped_or_killed_run_resumes_bit_for_bit(tmp_path, small_corpus, whole):
    # stopped at a checkpoint, then resumed
    fit(
        small_corpus,
        tmp_path,
        "--trainer.max_steps=27",
        "--checkpoint.dirpath=split",
        "--checkpoint.every_n_train_steps=9",
    )
    assert step_of(tmp_path / "split" / "last.ckpt") == 27
    fit(small_corpus, tmp_path, "--trainer.max_steps=60", "--checkpoint.dirpath=split", "--ckpt_path=last")
    assert_same_weights(whole / "whole" / "last.ckpt", tmp_path / "split" / "last.ckpt")
    # another cadence than the first leg's: last.ckpt is still the one written (not a last-v1.ckpt beside it)
    assert not list((tmp_path / "split").glob("last-v*.ckpt"))
    # killed (SIGKILL) part-way, then resumed
    args = [
        sys.executable,
        str(CLI),
        "fit",
        f"--data.path={small_corpus}",
        *RUN,
        "--trainer.max_steps=60",
        "--checkpoint.dirpath=killed",
        "--checkpoint.every_n_train_steps=3",
    ]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.ckpt"
    deadline = time.monotonic() + 120
    while step_of(last) < 12 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = step_of(last)
    assert 12 <= killed_at < 60, "the run must be killed part-way"
    fit(small_corpus, tmp_path, "--trainer.max_steps=60", "--checkpoint.dirpath=killed", "--ckpt_path=last")
    assert step_of(last) == 60  # the kill left no lock behind: the resumed run got the folder
    assert_same_weights(whole / "whole" / "last.ckpt", last)


def test_epochs_of_a_few_batches_draw_new_windows_and_resume_exactly(tmp_path, small_corpus):
    """--trainer.limit_train_batches 3: before, every epoch drew the same 3 batches again (the stream
    restarted), and a resume mid-run went on with other ones."""
    epochs = ["--trainer.limit_train_batches=3", "--trainer.val_check_interval=3", "--data.num_workers=0"]
    fit(small_corpus, tmp_path, *epochs, "--trainer.max_steps=9", "--checkpoint.dirpath=whole")
    fit(small_corpus, tmp_path, *epochs, "--trainer.max_steps=4", "--checkpoint.dirpath=split")
    fit(
        small_corpus,
        tmp_path,
        *epochs,
        "--trainer.max_steps=9",
        "--checkpoint.dirpath=split",
        "--ckpt_path=last",
    )
    assert step_of(tmp_path / "split" / "last.ckpt") == 9
    assert_same_weights(tmp_path / "whole" / "last.ckpt", tmp_path / "split" / "last.ckpt")


# What `scontrol requeue` does to a running job, as far as its main process sees it: a SIGTERM.
FAKE_SCONTROL = '#!/bin/sh\necho "$@" >> scontrol.log\nkill -TERM $PPID\n'
SPLIT = ["--checkpoint.dirpath=split", "--ckpt_path=last"]
# Saves every 3 steps once a validation gave a val_loss to monitor (validations do not change what
# training draws, so the end is the uninterrupted run's).
LEG = ["--trainer.max_steps=60", "--trainer.val_check_interval=5", "--sample.every_n_validations=0"]
LEG += ["--checkpoint.every_n_train_steps=3", *SPLIT]
SAVED = re.compile(
    r"^(SIGTERM|SIGINT): saved step (\d+) to (\S+); continue: the same command with --ckpt_path last$"
)


LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_run_left_behind():
    """A test that fails midway leaves no run (stopped, perhaps, with its dataloader workers) behind."""
    yield
    while LAUNCHED:
        process = LAUNCHED.pop()
        with contextlib.suppress(ProcessLookupError):  # the group's workers may outlive its leader
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def launch(corpus: Path, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start (or resume) the 60-step run in ``cwd/split`` (``LEG``)."""
    process = subprocess.Popen(
        [sys.executable, str(CLI), "fit", f"--data.path={corpus}", *RUN, *LEG],
        cwd=cwd,
        env=dict(os.environ, PYTHONWARNINGS="ignore", **(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    LAUNCHED.append(process)
    return process


def wait_for_step(process: subprocess.Popen, last: Path, step: int) -> None:
    """Return once ``last`` holds ``step`` or a later one (the run must still be going)."""
    seen, deadline = None, time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp != seen and step_of(last) >= step:
            return
        seen = stamp
        time.sleep(0.01)
    pytest.fail(f"the run ended or stalled before step {step}")


def finish(process: subprocess.Popen) -> tuple[int, str]:
    """Exit status and stderr of ``process`` (its whole group is killed past two minutes)."""
    try:
        stderr = process.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the run did not end in two minutes: {process.communicate()[1][-2000:]}")
    return process.returncode, stderr


def saved_step(stderr: str, name: str, last: Path) -> int:
    """The step that the one line of a stopped run names; it must be what ``last`` holds."""
    assert "Traceback" not in stderr, stderr
    match = SAVED.match(stderr.strip().splitlines()[-1])
    assert match and match[1] == name and Path(match[3]) == last.resolve(), stderr[-2000:]
    assert int(match[2]) == step_of(last)
    return int(match[2])


def val_losses(cwd: Path) -> dict[int, float]:
    """Every val_loss the runs in ``cwd`` logged, by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    losses = {}
    for run in (cwd / "lightning_logs").iterdir():
        events = EventAccumulator(str(run))
        events.Reload()
        if "val_loss" in events.Tags()["scalars"]:
            losses.update({event.step: event.value for event in events.Scalars("val_loss")})
    return losses


@contextlib.contextmanager
def files_of_at_most_100kb():
    """In this process, a write past 100 kB fails with EFBIG (SIGXFSZ, which would kill, is ignored)."""
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


class RequeueMidStep(L.Callback):
    """Sends SLURM's requeue signal to this process in the middle of step ``at + 1`` and notes whether
    Lightning's requeue (its hpc checkpoint) ran at once."""

    at = 0
    ran_at_once: bool | None = None
    last_after: int | None = None  # the step in split/last.ckpt once the signalled step has ended

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.at:
            os.kill(os.getpid(), signal.SIGUSR1)
            RequeueMidStep.ran_at_once = any(Path.cwd().glob("hpc_ckpt_*.ckpt"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.at + 1:
            RequeueMidStep.last_after = step_of(Path.cwd() / "split" / "last.ckpt")
            os.kill(os.getpid(), signal.SIGUSR1)  # again, as another rank's may come later: one requeue


def test_signals_a_full_disk_and_a_second_fit_lose_nothing(
    tmp_path, small_corpus, whole, cli_main, monkeypatch
):
    """SIGTERM (to the process group, as SLURM and systemd send it), a second fit in the same folder, a
    disk-full save and a SLURM requeue, one after the other: the end equals the uninterrupted run. (A
    terminal's Ctrl-C, SIGINT to the group: the DDP tests stop a run with SIGINT, and tests/test_data.py
    signals a dataloader worker.)"""
    last = tmp_path / "split" / "last.ckpt"
    # 1. the first start (--ckpt_path last finds nothing: a new run), stopped by SIGTERM to its process
    #    group; while it is paused, a second fit into the same folder is refused and changes nothing
    first = launch(small_corpus, tmp_path)
    wait_for_step(first, last, 6)
    first.send_signal(signal.SIGSTOP)
    before = last.read_bytes()
    second = cli_main("fit", f"--data.path={small_corpus}", *RUN, *SPLIT, cwd=tmp_path)  # this process
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        "error: another fit is writing checkpoints to split; wait for it to end, or pass another "
        "--checkpoint.dirpath"
    )
    assert last.read_bytes() == before and len(list((tmp_path / "lightning_logs").iterdir())) == 1
    os.killpg(first.pid, signal.SIGTERM)  # to every process, dataloader workers too, as SLURM and systemd
    first.send_signal(signal.SIGCONT)
    status, stderr = finish(first)
    assert status == 143 and "note: no split/last.ckpt yet; starting a new run" in stderr, stderr[-3000:]
    stopped = saved_step(stderr, "SIGTERM", last)
    assert stopped >= 6
    # 2. a save that fails (a file-size limit, as a full disk) is one line and keeps last.ckpt
    before = last.read_bytes()
    with files_of_at_most_100kb():
        full = cli_main(
            "fit", f"--data.path={small_corpus}", *RUN, *SPLIT, "--data.num_workers=0", cwd=tmp_path
        )
    assert full.returncode == 2 and "Traceback" not in full.stderr
    assert full.stderr.strip().splitlines()[-1].startswith("error: cannot save checkpoint ")
    # torch >= 2.7 passes the system's reason on; 2.6 only says that its archive writer failed
    assert re.search(
        r"(File too large|the write failed \(.*\)); the checkpoints saved before are unchanged", full.stderr
    )
    assert last.read_bytes() == before and not list(last.parent.glob("*.tmp"))
    # 3. SLURM's requeue signal, here in the middle of a step: Lightning's requeue (its hpc checkpoint,
    #    then scontrol requeue, which ends the job with SIGTERM) runs when the step ends, not inside the
    #    signal handler, where it hung runs (it can wait for a lock that the interrupted code holds)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "scontrol").write_text(FAKE_SCONTROL)
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    slurm = dict(SLURM, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    RequeueMidStep.at = stopped + 2
    callback = f"--trainer.callbacks+={__name__}.RequeueMidStep"
    requeued = cli_main("fit", f"--data.path={small_corpus}", *RUN, *LEG, callback, cwd=tmp_path)
    assert RequeueMidStep.ran_at_once is False
    assert requeued.returncode == 143, requeued.stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert step_of(tmp_path / "hpc_ckpt_1.ckpt") == stopped + 3  # the step the signal came in, finished
    assert RequeueMidStep.last_after == stopped + 3  # SLURM's SIGKILL may come before the next step ends
    assert saved_step(requeued.stderr, "SIGTERM", last) == stopped + 4
    assert not (tmp_path / "hpc_ckpt_2.ckpt").exists()
    # a new run in this folder: Lightning would resume the hpc checkpoint, silently
    fresh = cli_main("fit", f"--data.path={small_corpus}", *RUN, "--checkpoint.dirpath=fresh", cwd=tmp_path)
    assert fresh.returncode == 2 and "Traceback" not in fresh.stderr, fresh.stderr[-3000:]
    assert fresh.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'hpc_ckpt_1.ckpt'} (Lightning's checkpoint of a SLURM requeue) would be resumed "
        "instead of a new run; continue that run with --ckpt_path last and its --checkpoint.dirpath, or "
        "delete the hpc_ckpt_*.ckpt files"
    )
    copies = [tmp_path / f"hpc_ckpt_{number}.ckpt" for number in (9, 10)]  # Lightning resumes the highest
    for copy in copies:
        copy.write_bytes((tmp_path / "hpc_ckpt_1.ckpt").read_bytes())
    fresh = cli_main("fit", f"--data.path={small_corpus}", *RUN, "--checkpoint.dirpath=fresh", cwd=tmp_path)
    assert fresh.stderr.strip().splitlines()[-1].startswith(f"error: {copies[1]} (Lightning's checkpoint")
    for copy in copies:
        copy.unlink()
    for name in slurm:
        monkeypatch.delenv(name)
    # 4. the requeued job: --ckpt_path last wins over Lightning's hpc checkpoint, and the run ends
    #    exactly as the uninterrupted one
    status, stderr = finish(launch(small_corpus, tmp_path, env=slurm))
    assert status == 0, stderr
    assert "Restoring states from the checkpoint path at split/last.ckpt" in stderr
    assert step_of(last) == 60
    assert_same_weights(whole / "whole" / "last.ckpt", last)
    assert val_losses(tmp_path)[60] == val_losses(whole)[60]


def test_a_signal_between_accumulated_batches_stops_after_the_optimizer_step(tmp_path, small_corpus):
    # Three batches per optimizer step; SIGTERM arrives after the first batch of step 5. Stopping there
    # would make the resumed run redo that batch with dropout masks drawn after it: the run goes on to
    # the end of step 5.
    steps = ["--data.num_workers=0", "--trainer.max_steps=8", "--trainer.accumulate_grad_batches=3"]
    steps.append("--trainer.val_check_interval=21")  # batches: every 7 steps
    signal_at = ["--trainer.callbacks+=ddp_probe.SignalAt", "--trainer.callbacks.rank=0"]
    signal_at.append("--trainer.callbacks.batch=12")
    args = [sys.executable, str(CLI), "fit", f"--data.path={small_corpus}", *RUN, *steps, *signal_at]
    helpers = str(Path(CLI).parent / "tests" / "helpers")
    result = run_command(
        [*args, "--checkpoint.dirpath=split"], cwd=tmp_path, timeout=120, env={"PYTHONPATH": helpers}
    )
    assert result.returncode == 143, result.stderr[-3000:]
    saved = torch.load(tmp_path / "split" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == 15
    # ... from where the resumed run ends exactly as an uninterrupted one
    fit(small_corpus, tmp_path, *steps, "--checkpoint.dirpath=split", "--ckpt_path=last")
    fit(small_corpus, tmp_path, *steps, "--checkpoint.dirpath=whole")
    assert_same_weights(tmp_path / "whole" / "last.ckpt", tmp_path / "split" / "last.ckpt")


def test_kills_during_saves_never_corrupt_checkpoints(tmp_path, small_corpus):
    # A larger model saved every step, so many kills land in the middle of a save.
    args = [
        sys.executable,
        str(CLI),
        "fit",
        f"--data.path={small_corpus}",
        *RUN,
        "--model.d_model=256",
        "--model.num_heads=4",
        "--model.num_blocks=4",
        "--trainer.max_steps=1000",
        "--checkpoint.every_n_train_steps=1",
        "--checkpoint.save_top_k=-1",
        "--checkpoint.filename=step{step}",
        "--checkpoint.monitor=null",
    ]
    folder = tmp_path / "checkpoints"
    for attempt in range(2):
        extra = ["--ckpt_path=last"] if (folder / "last.ckpt").exists() else []
        process = subprocess.Popen(
            args + extra, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        saved_before = len(list(folder.glob("*.ckpt"))) if folder.exists() else 0
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if folder.exists() and len(list(folder.glob("*.ckpt"))) >= saved_before + 2 + attempt:
                break
            time.sleep(0.01)
        time.sleep(0.05 * attempt)  # vary the moment of the kill
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    checkpoints = list(folder.glob("*.ckpt"))
    assert len(checkpoints) >= 4 and (folder / "last.ckpt").exists()
    for path in checkpoints:
        assert step_of(path) >= 1, f"{path.name} does not load"


def test_a_signal_before_the_first_step_saves_nothing(tmp_path, small_corpus, cli_main, monkeypatch):
    """SIGTERM after Lightning's own handler is set but before SaveLastStep takes over (here: while the
    training data loader is made): Lightning stops after the first batch, which with two accumulated
    batches finished no step. Writing last.ckpt then would make the same command refuse to start."""
    from lightning_gpt.data import CharDataModule

    make_loader = CharDataModule.train_dataloader

    def signalled(self):
        assert callable(signal.getsignal(signal.SIGTERM))  # Lightning's handler: else this would end pytest
        os.kill(os.getpid(), signal.SIGTERM)  # which only notes it
        return make_loader(self)

    monkeypatch.setattr(CharDataModule, "train_dataloader", signalled)
    args = [*TINY_MODEL, "--trainer.accumulate_grad_batches=2", "--trainer.num_sanity_val_steps=0"]
    args += ["--trainer.max_steps=10", "--trainer.enable_progress_bar=false", "--sample.print_at_end=false"]
    result = cli_main("fit", f"--data.path={small_corpus}", *args, cwd=tmp_path)
    assert result.returncode == 143, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == "SIGTERM: stopped before a training step of this run; nothing new to save"
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


class InterruptAtStep3(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 3:
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # SaveLastStep's
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_finishes_the_step_saves_it_and_exits_130(tmp_path, small_corpus, cli_main):
    callback = f"--trainer.callbacks+={__name__}.InterruptAtStep3"
    args = [*TINY_MODEL, "--trainer.max_steps=10", "--trainer.enable_progress_bar=false", callback]
    args += ["--sample.print_at_end=false"]
    result = cli_main("fit", f"--data.path={small_corpus}", *args, cwd=tmp_path)
    assert result.returncode == 130, result.stderr[-2000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert result.stderr.strip().splitlines()[-1] == (
        f"SIGINT: saved step 4 to {last}; continue: the same command with --ckpt_path last"
    )
    assert step_of(last) == 4
