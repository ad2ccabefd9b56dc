"""Download a file over HTTP(S) with a pinned sha256, retries, and an atomic write."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

import requests
from tqdm import tqdm

from lightning_gpt.atomic import write_atomically
from lightning_gpt.errors import UserError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
_CHUNK = 1 << 16
_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def sha256_of(path: Path, suffix: bytes = b"") -> str:
    """sha256 of the file's bytes followed by ``suffix`` (not hashlib.file_digest: Python 3.10 lacks it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(suffix)
    return digest.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 1.0,
    progress: bool = True,
    progress_min_bytes: int = 4 << 20,
) -> Path:
    """Make ``dest`` hold the file at ``url`` (kept if already there), verified against ``sha256``.
    Connection errors, timeouts and 5xx answers are retried ``retries`` times, waiting ``backoff``
    seconds, then twice that, ...; ``timeout`` bounds each wait for the server."""
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256):
        if sha256 is None:  # nothing tells whether it came from this url
            note = f"note: using {dest} from an earlier download; delete it to download {url} again"
            print(note, file=sys.stderr)
        return dest
    if dest.is_file():  # edited or damaged: replaced, but not without a word
        print(f"note: {dest} is not the file expected (sha256); downloading it again", file=sys.stderr)
    manual = f"download it yourself and pass --data.path FILE, or place it at {dest}"
    last_problem = ""

    def fetch(file: BinaryIO) -> None:
        """Stream ``url`` into ``file``. A body shorter than ``Content-Length`` is a ChunkedEncodingError
        (urllib3 >= 2 counts the bytes off the wire)."""
        digest = hashlib.sha256()
        with requests.get(
            url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}
        ) as answer:
            answer.raise_for_status()
            expected = int(answer.headers.get("Content-Length") or 0)
            hide = not progress or expected <= progress_min_bytes
            name = f"downloading {Path(url).name}"
            with tqdm(total=expected, unit="B", unit_scale=True, desc=name, disable=hide) as bar:
                for chunk in answer.iter_content(_CHUNK):
                    file.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if sha256 is not None and (sent := digest.hexdigest()) != sha256:
            raise UserError(
                f"{url} sent a file with sha256 {sent}, expected {sha256}; nothing was saved. "
                f"Check the URL, or {manual}"
            )

    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            write_atomically(dest, fetch)  # renamed into place only once complete and verified
            return dest
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            if status < 500:
                raise UserError(f"cannot download {url}: HTTP {status}; {manual}") from None
            last_problem = f"HTTP {status}"
        except _RETRYABLE as error:  # in a few words, for the final message
            if isinstance(error, requests.Timeout) or "timed out" in str(error).lower():
                last_problem = f"no answer within the {timeout:g} s timeout"
            elif isinstance(error, requests.exceptions.ChunkedEncodingError):
                last_problem = "the connection closed before the whole file arrived"
            elif isinstance(error, requests.exceptions.SSLError):
                last_problem = "a TLS/SSL error"
            else:
                last_problem = "cannot connect to the server"
        except requests.RequestException as error:  # a malformed URL, too many redirects, ...
            raise UserError(f"cannot download {url}: {error}; {manual}") from None
    raise UserError(f"cannot download {url} after {retries + 1} attempts (last: {last_problem}); {manual}")
