"""One way to write a file so that a kill leaves either the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

_UMASK = os.umask(0o022)  # read once, at import: os.umask can only be read by setting it
os.umask(_UMASK)


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it over ``path`` (a
    device or a pipe, such as ``/dev/stdout``, is written directly).

    A URL of another filesystem (``s3://``, ``gs://``, ``memory://``) is written through fsspec in a
    transaction, as Lightning saves: an object store publishes the object only once it is complete.
    """
    filesystem, target = url_to_fs(str(path))
    if not isinstance(filesystem, LocalFileSystem):
        filesystem.makedirs(posixpath.dirname(target), exist_ok=True)
        with filesystem.transaction, filesystem.open(target, "wb") as file:
            write(file)
        return
    if os.path.exists(target) and not os.path.isfile(target):  # /dev/stdout, a FIFO
        with open(target, "wb") as file:
            write(file)
        return
    path = Path(os.path.realpath(target))  # through a symbolic link: the file it names is replaced
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes the file private (0600): give it a new file's mode
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename durable (no-op where folders cannot be opened)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
