"""Checkpoints that never run code when loaded and are checked before use, in local folders or at
fsspec URLs (``file://``, ``s3://``, ``gs://``, ``memory://``), and one ``fit`` per folder at a time.
No Lightning here, so that ``serve`` starts without it (atomic saves: ``callbacks.AtomicCheckpointIO``)."""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import pickle
import posixpath
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from fsspec import AbstractFileSystem
from fsspec.core import split_protocol, url_to_fs
from fsspec.implementations.local import LocalFileSystem

from lightning_gpt.config import GPTConfig
from lightning_gpt.errors import UserError
from lightning_gpt.model import GPT

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None


def check_checkpoint(path: Path) -> dict:
    """Load ``path`` safely (weights_only) and check it is a checkpoint of this project."""
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; pass the path of a .ckpt file in it")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the path of a .ckpt file")
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path}: {error.strerror}") from None
    if not head:
        raise UserError(f"checkpoint {path} is empty (0 bytes): its save never finished; use another")
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it did not write: noise here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # an unsafe pickle, a damaged file, or not a torch file at all
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", re.sub(r"\x1b\[[0-9;]*m", "", str(error)))
        if unsafe:
            raise UserError(
                f"refused to load checkpoint {path}: it holds Python objects ({unsafe.group(1)}), not only "
                "tensors and plain data; nothing from it was run. Load only checkpoints you trust"
            ) from None
        if head == b"PK\x03\x04":  # a zip archive, as torch.save writes, that torch cannot read
            raise UserError(f"checkpoint {path} is damaged (cut short or altered); use another") from None
        raise UserError(f"{path} is not a checkpoint (not saved by PyTorch); pass a .ckpt file") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    vocab = hparams.get("vocab") if isinstance(hparams, dict) else None
    if not vocab or not isinstance(vocab, str) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{path} is not a lightning-gpt checkpoint (no model vocabulary or weights)")
    # The shape must be sound and match the weights, so the model built from it is no bigger than the file.
    try:
        with torch.device("meta"):
            model = GPT(GPTConfig.from_hparams(hparams, len(vocab)))
    except (TypeError, ValueError) as error:
        raise UserError(f"checkpoint {path} has impossible model settings: {error}") from None
    shapes = {f"model.{key}": value.shape for key, value in model.state_dict().items()}
    weights = checkpoint["state_dict"].items()
    if shapes != {key: getattr(value, "shape", None) for key, value in weights if key.startswith("model.")}:
        raise UserError(f"checkpoint {path} is damaged: its weights do not fit its model settings")
    return checkpoint


def local_path(path: str) -> str:
    """A ``file://`` URL as a plain path (Lightning would make ``./file:/…`` of it); else ``path``."""
    protocol, rest = split_protocol(path)
    return rest if protocol in ("file", "local") else path


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """fsspec's filesystem for ``url`` and the path on it; one ``UserError`` if it cannot be used."""
    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as error:  # e.g. "Install s3fs to access S3"
        raise UserError(f"cannot use {url}: {error}") from None


def in_folder(path: str, folder: str) -> bool:
    """Whether the file ``path`` (a path or URL) is in ``folder``."""
    (fs, file), (fs_folder, root) = filesystem(path), filesystem(folder)
    if isinstance(fs, LocalFileSystem) and isinstance(fs_folder, LocalFileSystem):  # links, "..", "//"
        return os.path.realpath(os.path.dirname(file)) == os.path.realpath(root)
    same_kind = type(fs) is type(fs_folder)
    return same_kind and posixpath.normpath(posixpath.dirname(file)) == posixpath.normpath(root)


def readable_copy(path: str) -> str:
    """``path`` if it is local, else a local copy of it (removed at exit): LightningCLI reads the
    hyperparameters of local files only."""
    fs, remote = filesystem(path)
    if isinstance(fs, LocalFileSystem):
        return path
    if not fs.isfile(remote):
        raise UserError(f"checkpoint {path} does not exist; pass the path or URL of a .ckpt file")
    folder = tempfile.mkdtemp(prefix="lightning-gpt-")
    atexit.register(shutil.rmtree, folder, True)
    copy = os.path.join(folder, posixpath.basename(remote))
    fs.get_file(remote, copy)
    return copy


# descriptors that hold folder locks in this process -> the folder lock_folder created, or None
_locks: dict[int, str | None] = {}


def _drop_locks_in_child() -> None:
    """A forked child (a dataloader worker) closes its copies of the lock descriptors: otherwise it
    would keep the lock held after its parent ends, until it notices and exits itself."""
    for descriptor in _locks:
        os.close(descriptor)
    _locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)


def unlock(descriptor: int) -> None:
    """Release a lock taken by ``lock_folder`` in this process. Elsewhere (a rank that ``ddp_spawn``
    or ``ddp_fork`` started with a copy of the callback) the number may name another file: left alone."""
    if descriptor in _locks:
        made = _locks.pop(descriptor)
        if made:  # a fit that saved nothing (refused at the start) leaves no empty folder behind
            with contextlib.suppress(OSError):  # not empty; removed while still locked, so no other
                os.rmdir(made)  # fit can have taken the folder in between
        os.close(descriptor)


def step_of(path: str) -> int:
    """The global step of the checkpoint at ``path`` (a path or URL; a local file is not read whole),
    -1 if it cannot be read (then it holds nothing to keep)."""
    fs, file = filesystem(path)
    try:
        if isinstance(fs, LocalFileSystem):
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0)
        with fs.open(file, "rb") as stream:
            return torch.load(stream, map_location="cpu", weights_only=True).get("global_step", 0)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError):
        return -1


def unwritable(folder: str) -> str | None:
    """Why files cannot be written into the local ``folder`` (made where missing), or None."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):  # the nearest part of it that exists
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return os.strerror(errno.ENOTDIR)
    return None if os.access(path, os.W_OK | os.X_OK) else os.strerror(errno.EACCES)


def lock_folder(folder: str) -> int | None:
    """Lock a local checkpoint folder for this process and return the descriptor that holds the lock
    (the system releases it when the process ends, even by SIGKILL; ``unlock`` releases it before);
    ``UserError`` if another process holds it. URLs are not locked."""
    folder = local_path(folder)
    if fcntl is None or split_protocol(folder)[0] is not None:
        return None
    made = None if os.path.isdir(folder) else os.path.abspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        if reason := unwritable(folder):  # found now, not at the first save
            raise PermissionError(errno.EACCES, reason)
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError as error:  # a read-only mount, a file in the way, no permission
        raise UserError(
            f"cannot use checkpoint folder {folder}: {error.strerror}; pass another --checkpoint.dirpath"
        ) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise UserError(
            f"another fit is writing checkpoints to {folder}; wait for it to end, or pass another "
            "--checkpoint.dirpath"
        ) from None
    try:  # a fit that ended with nothing saved may have removed the folder since it was opened
        current = os.path.samestat(os.fstat(descriptor), os.stat(folder))
    except OSError:
        current = False
    if not current:
        os.close(descriptor)
        return lock_folder(folder)  # the folder as it is now
    _locks[descriptor] = made
    return descriptor
