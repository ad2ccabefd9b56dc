"""Checkpoint files: a kill, Ctrl-C or a failed save leaves the old file or the new one, whole; one
fit per folder (its lock)."""

import errno
import fcntl
import fractions
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time

import fsspec
import pytest
import torch

from lightning_gpt.atomic import write_atomically
from lightning_gpt.callbacks import AtomicCheckpointIO
from lightning_gpt.checkpoint_io import lock_folder, step_of, unlock
from lightning_gpt.errors import UserError


def test_unlock_closes_only_what_this_process_locked(tmp_path):
    # A rank that ddp_spawn or ddp_fork starts gets a copy of the callback that holds the lock's
    # descriptor number, which in that process may name another file (a pipe of multiprocessing)
    other = os.open(tmp_path, os.O_RDONLY)
    unlock(other)
    os.fstat(other)  # still open
    os.close(other)
    held = lock_folder(str(tmp_path / "checkpoints"))
    unlock(held)
    with pytest.raises(OSError):
        os.fstat(held)


def test_a_folder_removed_before_it_was_locked_is_locked_anew(tmp_path, monkeypatch):
    """Another fit that ended with nothing saved removes the folder it made, perhaps between this fit's
    open and lock: the lock must hold the folder at the path, not the removed one."""
    folder = tmp_path / "checkpoints"
    flock, removed = fcntl.flock, []

    def removed_first(descriptor, operation):
        if not removed:
            removed.append(folder)
            folder.rmdir()  # as the other fit's unlock does
        return flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", removed_first)
    held = lock_folder(str(folder))
    assert removed and os.path.samestat(os.fstat(held), os.stat(folder))
    unlock(held)
    assert not folder.exists()  # made by this fit, which saved nothing


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_a_refused_lock_keeps_no_descriptor_open(tmp_path):
    held = lock_folder(str(tmp_path / "checkpoints"))
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(UserError, match="another fit is writing checkpoints"):
        lock_folder(str(tmp_path / "checkpoints"))
    assert set(os.listdir("/proc/self/fd")) <= before
    unlock(held)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """A dataloader worker forked by the fit shares its descriptors: it must not hold the lock on."""
    folder = str(tmp_path / "checkpoints")
    os.mkdir(folder)  # kept by unlock: the second lock is on the same folder, not a new one
    held = lock_folder(folder)
    ready, started = os.pipe()
    child = os.fork()
    if child == 0:  # the at-fork handlers have run
        try:
            os.write(started, b"x")
            time.sleep(10)
        finally:
            os._exit(0)  # never back into pytest
    try:
        os.read(ready, 1)
        unlock(held)
        unlock(lock_folder(folder))  # free again while the child lives
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready)
        os.close(started)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_folder_that_cannot_be_written_is_refused_when_locked():
    """An existing checkpoint folder without write permission was found at the first save, after a
    validation interval of training."""
    with tempfile.TemporaryDirectory() as parent:
        os.chmod(parent, 0o755)  # another user may reach what is inside
        folder = os.path.join(parent, "readonly")
        os.mkdir(folder, mode=0o555)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                if os.geteuid() == 0:  # root may write anywhere: a user (nobody) may not
                    os.setgid(65534)
                    os.setuid(65534)
                try:
                    message = f"locked {lock_folder(folder)}"
                except UserError as error:
                    message = str(error)
                os.write(write, message.encode())
            finally:
                os._exit(0)  # never back into pytest
        os.close(write)
        os.waitpid(child, 0)
        with os.fdopen(read) as pipe:
            message = pipe.read()
    assert (
        message
        == f"cannot use checkpoint folder {folder}: Permission denied; pass another --checkpoint.dirpath"
    )


def test_a_file_is_on_disk_before_it_takes_the_name(tmp_path, monkeypatch):
    """Written in full and fsynced, renamed from beside it (one filesystem: a rename, not a copy), then
    its folder fsynced: after a power cut the name holds the old file or all of the new one."""
    events = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync folder" if stat.S_ISDIR(info.st_mode) else "fsync file", info.st_size))
        return fsync(fd)

    def recorded_replace(source, target):
        events.append(("replace from beside", os.path.dirname(source) == os.path.dirname(target)))
        return replace(source, target)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    write_atomically(tmp_path / "sub" / "last.ckpt", lambda file: file.write(b"weights"))
    assert events[:2] == [("fsync file", 7), ("replace from beside", True)]  # 7 bytes: flushed first
    assert [event[0] for event in events[2:]] == ["fsync folder"]
    assert (tmp_path / "sub" / "last.ckpt").read_bytes() == b"weights"


def test_a_failed_save_is_one_line_whatever_torch_raises(tmp_path, monkeypatch):
    """torch 2.6's writer raises a RuntimeError over the OSError (later ones pass the OSError on)."""

    def save(checkpoint, file):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0") from None

    monkeypatch.setattr(torch, "save", save)
    message = (
        rf"cannot save checkpoint .*: {os.strerror(errno.ENOSPC)}; the checkpoints saved before are unchanged"
    )
    with pytest.raises(UserError, match=message):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "last.ckpt")
    assert not list(tmp_path.iterdir())  # no temporary file left behind

    def save_without_reason(checkpoint, file):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", save_without_reason)  # no system error to name: torch's first line
    with pytest.raises(UserError, match=r"cannot save checkpoint .*: the write failed \(\[enforce fail"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "last.ckpt")


def test_saved_files_are_not_private(tmp_path):
    # mkstemp creates 0600 files: a checkpoint in a shared folder was unreadable to other users
    write_atomically(tmp_path / "shared" / "last.ckpt", lambda file: file.write(b"weights"))
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "shared" / "last.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask
    # a group-shared folder's umask (002) keeps the group's write permission
    write = f"from lightning_gpt.atomic import write_atomically as w; w({str(tmp_path / 'g')!r}, lambda f: 0)"
    subprocess.run([sys.executable, "-c", f"import os; os.umask(0o002); {write}"], check=True)
    assert (tmp_path / "g").stat().st_mode & 0o777 == 0o664


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit], ids=["ctrl-c", "exit"])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary_one(tmp_path, stop):
    """Ctrl-C while a token cache or a prediction file is written (outside fit's signal handling)."""
    write_atomically(tmp_path / "tokens.bin", lambda file: file.write(b"old"))

    def interrupted(file):
        file.write(b"half")
        raise stop

    with pytest.raises(stop):
        write_atomically(tmp_path / "tokens.bin", interrupted)
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.bin"]
    assert (tmp_path / "tokens.bin").read_bytes() == b"old"


def test_a_failed_write_to_a_url_leaves_the_old_object(tmp_path):
    """fsspec writes in a transaction: a save that fails half-way does not publish half a checkpoint."""
    url = f"memory://{tmp_path.name}/last.ckpt"  # tmp_path's name: a bucket of this test's own
    write_atomically(url, lambda file: file.write(b"old checkpoint"))

    def failing(file):
        file.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError):
        write_atomically(url, failing)
    assert fsspec.filesystem("memory").cat(url) == b"old checkpoint"


def test_a_checkpoint_saved_on_a_gpu_loads_on_a_machine_without_one(tmp_path, monkeypatch):
    """Lightning passes the checkpoint plugin no map_location: without "cpu", the tensors of a checkpoint
    trained on a GPU would go back to a GPU, and predict or a resume on a CPU-only machine failed."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")  # as saved on a GPU
        torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "gpu.ckpt")
    loaded = AtomicCheckpointIO().load_checkpoint(tmp_path / "gpu.ckpt")
    assert loaded["state_dict"]["w"].device.type == "cpu"
    if not torch.cuda.is_available():  # what torch alone does with it here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "gpu.ckpt", weights_only=True)


def test_the_step_of_a_checkpoint_that_cannot_be_read_safely_is_minus_one(tmp_path):
    """A last.ckpt holding objects that weights_only loading refuses holds no step to keep (a traceback
    before, when another checkpoint of its folder was resumed)."""
    torch.save({"global_step": 7, "odd": fractions.Fraction(1, 3)}, tmp_path / "odd.ckpt")
    torch.save({"global_step": 7}, tmp_path / "last.ckpt")
    assert (step_of(str(tmp_path / "odd.ckpt")), step_of(str(tmp_path / "last.ckpt"))) == (-1, 7)
