"""Shared fixtures: the real corpus, small texts, and a runner for ``cli.py`` in a subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

# One torch thread in this process and every cli.py it starts: the test models are tiny, and on a
# 2-core runner threads only contend (set before torch is imported).
os.environ["OMP_NUM_THREADS"] = "1"
# Lightning 2.6's LightningCLI calls jsonargparse APIs deprecated in jsonargparse 4.49: not this
# project's code, and `python cli.py` does not show them (jsonargparse's own switch).
os.environ["JSONARGPARSE_DEPRECATION_WARNINGS"] = "off"

import pytest
import torch

from lightning_gpt.config import PRESETS
from lightning_gpt.download import SHAKESPEARE_SHA256, SHAKESPEARE_URL, download, sha256_of

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "cli.py"
# Machines without internet get the corpus from ../shared (CI copies it into data/).
CORPUS_CANDIDATES = [
    ROOT / "data" / "tinyshakespeare.txt",
    ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
]

# The "tiny" preset's shape, as GPTModule arguments and as cli.py flags (with a short warmup and batch).
SETTINGS = ("d_model", "num_heads", "num_blocks", "context_length", "dropout")
TINY = {name: getattr(PRESETS["tiny"], name) for name in SETTINGS}
TINY_MODEL = [*(f"--model.{name}={value}" for name, value in TINY.items()), "--model.warmup_steps=2"]
TINY_MODEL += ["--data.batch_size=8"]


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """Tiny Shakespeare, verified by sha256: found locally, else downloaded into data/."""
    for candidate in CORPUS_CANDIDATES:
        if candidate.is_file() and sha256_of(candidate) == SHAKESPEARE_SHA256:
            return candidate
    return download(SHAKESPEARE_URL, CORPUS_CANDIDATES[0], SHAKESPEARE_SHA256)


@pytest.fixture(scope="session")
def shakespeare(shakespeare_path: Path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")


@pytest.fixture
def small_corpus(tmp_path: Path, shakespeare: str) -> Path:
    """The first 20,000 characters of Shakespeare (all 65 characters do not appear in it)."""
    path = tmp_path / "small.txt"
    path.write_text(shakespeare[:20_000], encoding="utf-8")
    return path


def run_cli(
    *args: str,
    cwd: Path,
    timeout: float = 240,
    stdin: str | None = None,
    env: Mapping[str, str | None] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python cli.py ARGS`` in ``cwd`` and return the finished process (text output); see
    ``run_command`` for ``env`` and what happens past ``timeout`` seconds."""
    return run_command([sys.executable, str(CLI), *args], cwd=cwd, timeout=timeout, stdin=stdin, env=env)


def run_command(
    command: list[str],
    cwd: Path,
    timeout: float,
    stdin: str | None = None,
    env: Mapping[str, str | None] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``command`` in ``cwd`` in its own process group and return the finished process.

    ``env`` sets (or, with ``None``, removes) environment variables. DDP ranks and dataloader workers
    started by the command join its process group. Past ``timeout`` seconds the whole group gets
    SIGABRT (faulthandler prints every Python thread's stack to stderr), then SIGKILL, and the test
    fails with its name, the time and the tail of the output.
    """
    environment = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONFAULTHANDLER="1")
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=environment,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        stdout, stderr = process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        elapsed = time.monotonic() - started
        stdout, stderr = _stop_process_group(process)
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        pytest.fail(
            f"{test}: `{' '.join(command)[:300]}` did not finish in {elapsed:.0f} s "
            f"(limit {timeout:g} s); its process group was killed. Environment set: {dict(env or {})}\n"
            f"--- stdout (tail) ---\n{(stdout or '')[-2000:]}\n{_stderr_and_stacks(stderr or '')}",
            pytrace=False,
        )
    except BaseException:  # e.g. Ctrl-C, which no longer reaches a group of its own
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _stderr_and_stacks(stderr: str) -> str:
    """The tail of ``stderr`` before the stack dumps, then the start of each process's dump."""
    before, *dumps = stderr.split("Fatal Python error: Aborted")
    parts = [f"--- stderr (tail) ---\n{before[-3000:]}"]
    for number, dump in enumerate(dumps, 1):
        stacks = dump.split("\nExtension modules:", 1)[0]  # then a long list of compiled modules
        parts.append(f"--- stacks of process {number} of the group ---{stacks[:4000]}")
    return "\n".join(parts)


def _group_members(group: int) -> list[int]:
    """The processes in process group ``group`` (read from /proc; empty where there is none)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, pgrp
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group:
            members.append(int(stat.parent.name))
    return members


def _stop_process_group(process: subprocess.Popen) -> tuple[str, str]:
    """Dump the stacks of a timed-out run's processes, kill them all and return the output so far."""
    prlimit = getattr(resource, "prlimit", None)  # Linux
    for pid in _group_members(process.pid) if prlimit else []:
        with contextlib.suppress(OSError):
            prlimit(pid, resource.RLIMIT_CORE, (0, 0))  # SIGABRT must not write core files
    for pid in _group_members(process.pid):  # one at a time: dumps written at once interleave
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGABRT)
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGABRT)  # anything started since
    try:
        return process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    try:
        return process.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # something outside the group still holds the pipes
        process.kill()
        return "", "(no output: the pipes stayed open after the process group was killed)"


def tiny_fit_args(corpus: Path, steps: int = 6, val_every: int = 3) -> list[str]:
    """Arguments for a fit of a tiny model that takes a few seconds."""
    return [
        "fit",
        f"--data.path={corpus}",
        *TINY_MODEL,
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={val_every}",
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
    ]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, shakespeare: str) -> Path:
    """A checkpoint of a tiny model fitted for a few steps on Shakespeare's first 20,000 characters."""
    root = tmp_path_factory.mktemp("tiny_fit")
    corpus = root / "corpus.txt"
    corpus.write_text(shakespeare[:20_000], encoding="utf-8")
    result = main_in_process(*tiny_fit_args(corpus, steps=30, val_every=15), cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "checkpoints" / "last.ckpt"


def main_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python cli.py ARGS`` run in ``cwd`` in this process (where a subprocess would add only its
    start-up time): the exit code and what it printed to ``sys.stdout`` and ``sys.stderr``, Python
    warnings included (printed there, as a process prints them, and not recorded by pytest; pytest's
    filters still choose which)."""
    from lightning_gpt.__main__ import main

    here, argv, out, err = Path.cwd(), sys.argv, io.StringIO(), io.StringIO()
    os.chdir(cwd)
    sys.argv = [str(CLI)]  # as if run as cli.py: no pytest arguments
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.showwarning = _show_on_stderr  # (restored on exit, with the filters run() adds)
            main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(here)
        sys.argv = argv
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def _show_on_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


# A SLURM job as Lightning's SLURMEnvironment detects it, with auto-requeue on SIGUSR1.
SLURM = {
    "SLURM_NTASKS": "1",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}


class Events(io.StringIO):
    """A stream that notes its writes, flushes and reads, in order, in ``events``."""

    def __init__(self, events: list, text: str = "", tty: bool = False):
        super().__init__(text)
        self.events, self.tty = events, tty

    def write(self, text: str) -> int:
        self.events.append(("write", text))
        return super().write(text)

    def flush(self) -> None:
        self.events.append(("flush",))

    def readline(self, *args) -> str:
        self.events.append(("read",))
        return super().readline(*args)

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def bare_dir(tmp_path, tiny_checkpoint):
    """A directory holding only a copy of the checkpoint."""
    shutil.copy(tiny_checkpoint, tmp_path / "model.ckpt")
    return tmp_path


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """In-process tests run on one torch thread too (tests that need more set it themselves)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _token_cache_in_tmp(tmp_path, monkeypatch):
    """Token caches of DataModules built in-process go to the test's tmp folder, not ./data."""
    from lightning_gpt.data import CharDataModule

    init = CharDataModule.__init__
    names = init.__code__.co_varnames[1 : init.__code__.co_argcount]  # the parameters after self
    defaults = dict(zip(names[-len(init.__defaults__) :], init.__defaults__, strict=True))
    defaults["cache_dir"] = str(tmp_path / "cache")  # a default, so the CLI's parser sees it too
    monkeypatch.setattr(init, "__defaults__", tuple(defaults.values()))


@pytest.fixture
def cli_main():
    """``main_in_process``, for checks of one-line errors and runs where a subprocess would add only
    start-up time: ``cli_main(*args, cwd=...)`` returns a CompletedProcess (exit code, stdout, stderr)."""
    return main_in_process


def one_line_error(result, message: str) -> None:
    """Exit code 2, and ``message`` in the last stderr line, which starts with ``error: ``."""
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr[-2000:]


def error_lines(result) -> list[str]:
    """The ``error: `` lines of a run that ended with status 2 (and no traceback)."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]
