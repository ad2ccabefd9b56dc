"""A corpus (one UTF-8 text file or a folder of .txt files) -> a memory-mapped token cache on disk.

Built in two streaming passes (the vocabulary, then the ids), so a multi-GB corpus never has to fit
in memory; reused until a source file changes, appears or disappears. A checksum over the ids and the
cache's description (sha256, checked at every reuse) makes an edited cache be built again, never used.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lightning_gpt.atomic import write_atomically
from lightning_gpt.download import sha256_of
from lightning_gpt.errors import UserError
from lightning_gpt.tokenizer import CharTokenizer, UnknownCharacterError

SEPARATOR = "\n\n"  # between the files of a folder corpus
CHUNK_BYTES = 4 * 2**20  # bytes of text decoded and encoded at a time while building a cache
PROGRESS_MIN_BYTES = 64 * 2**20  # corpora at least this big show a progress bar while building
CACHE_VERSION = 2  # 2: meta.json holds a checksum
_CONVERT_HINT = "convert it, e.g. iconv -f latin1 -t utf-8"
# what a file that starts with one of these marks is (UTF-32 first: UTF-16's little-endian mark begins its)
BYTE_ORDER_MARKS = {
    "utf-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE),
    "utf-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE),
}


def read_corpus(path: str | os.PathLike, name: str = "corpus", option: str = "--data.path") -> str:
    """The UTF-8 text of ``path``, or a UserError saying what is wrong with the file (the ``name`` of
    what the file is, and the ``option`` that gave it)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{name} file {path} is a folder; pass a text file with {option}")
    if not path.exists():  # a pipe, such as <(command), is read too
        raise UserError(f"{name} file {path} does not exist; pass an existing text file with {option}")
    text = "".join(text_chunks(path, name=name))
    if not text:
        raise UserError(f"{name} {path} is empty; pass a text file with {option}")
    return text


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids below ``vocab_size``."""
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.int32)


def corpus_files(path: str | os.PathLike) -> list[Path]:
    """The files of a corpus: ``path`` itself, or the .txt files under the folder ``path`` (recursively),
    sorted by their path relative to it."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        what = "is not a file (a device or a pipe)" if path.exists() else "does not exist"  # cached: a file
        raise UserError(
            f"corpus file {path} {what}; pass an existing text file or a folder of .txt files "
            "with --data.path"
        )
    found = [file for file in path.rglob("*.txt") if file.is_file()]
    if not found:
        raise UserError(f"corpus folder {path} has no .txt files; put UTF-8 .txt files in it")
    return sorted(found, key=lambda file: file.relative_to(path).as_posix())


def cache_folder(path: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """``cache_dir/tokens-NAME-HASH``: HASH is a short hash of the absolute corpus path."""
    absolute = Path(path).resolve()
    digest = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:12]
    name = os.fsencode(absolute.stem[:40]).decode("utf-8", "replace")  # torch.from_file reads UTF-8 paths
    return Path(cache_dir) / f"tokens-{name}-{digest}"


def text_chunks(
    path: Path, chunk_bytes: int = CHUNK_BYTES, progress: tqdm | None = None, name: str = "corpus"
) -> Iterator[str]:
    """The UTF-8 text of the file ``path`` in pieces of about ``chunk_bytes`` bytes (``progress`` counts
    the bytes). A UserError names the file and the byte offset of any invalid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    read = 0  # bytes read so far
    try:
        with open(path, "rb") as file:
            while True:
                block = file.read(chunk_bytes)
                read += len(block)  # what the decoder decodes (its buffered bytes + block) ends here
                try:
                    text = decoder.decode(block, final=not block)
                except UnicodeDecodeError as error:
                    at, hint = read - len(error.object) + error.start, _CONVERT_HINT
                    marked = [code for code, bom in BYTE_ORDER_MARKS.items() if error.object.startswith(bom)]
                    if at == 0 and marked:  # its byte-order mark says which
                        hint = f"it is {marked[0].upper()}: convert it, e.g. iconv -f {marked[0]} -t utf-8"
                    raise UserError(
                        f"{name} {path} is not UTF-8: byte 0x{error.object[error.start]:02x} at offset {at}; "
                        + hint
                    ) from None
                if progress is not None:
                    progress.update(len(block))
                if text:
                    yield text
                if not block:
                    return
    except OSError as error:
        raise UserError(f"cannot read {name} {path}: {error.strerror}") from None


@dataclass(frozen=True)
class MappedSlice:
    """Tokens [start, stop) of a cache file: what a memory-mapped token tensor pickles to, so a
    spawned dataloader worker maps the file again instead of receiving a copy of the corpus."""

    path: str
    dtype: str
    start: int
    stop: int

    def open(self) -> torch.Tensor:
        """The tokens as a torch tensor backed by a private, copy-on-write memory map of the file."""
        dtype = getattr(torch, self.dtype)
        tensor = torch.from_file(self.path, shared=False, size=self.stop, dtype=dtype)[self.start : self.stop]
        tensor.mapped_slice = self  # read by the datasets' __getstate__
        return tensor


@dataclass(frozen=True)
class TokenCache:
    """A built token cache: ``length`` ids of ``dtype`` in ``folder/tokens.bin``, over ``vocab``."""

    folder: Path
    vocab: str
    dtype: str
    length: int
    built: bool  # True when this call built it, False when it was reused

    @property
    def tokens_path(self) -> Path:
        return self.folder / "tokens.bin"

    def tokens(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Ids [start, stop) as a memory-mapped tensor (nothing is read until it is indexed)."""
        stop = self.length if stop is None else stop
        return MappedSlice(str(self.tokens_path), self.dtype, start, stop).open()


def _checksum(tokens: Path, meta: dict) -> str:
    """sha256 of the token file and of the cache's description: an edit of either changes it."""
    return sha256_of(tokens, json.dumps(meta, sort_keys=True).encode())


def _cache_if_valid(folder: Path, sources: dict) -> TokenCache | None:
    """The cache in ``folder`` when it was built from exactly ``sources`` and is complete and unedited."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if any(meta.get(key) != value for key, value in sources.items()):
            return None
        cache = TokenCache(folder, meta["vocab"], meta["dtype"], meta["length"], built=False)
        complete = cache.tokens_path.stat().st_size == cache.length * np.dtype(cache.dtype).itemsize
        if complete and meta.pop("checksum") != _checksum(cache.tokens_path, meta):
            print(f"note: token cache {folder} was edited after it was built; rebuilding it", file=sys.stderr)
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing, unreadable or not ours
        return None
    return cache if complete else None


def _texts(files: list[Path], chunk_bytes: int, what: str) -> Iterator[str]:
    """The corpus's text in pieces, SEPARATOR between files; a progress bar for big corpora."""
    total = sum(file.stat().st_size for file in files)
    disable = total < PROGRESS_MIN_BYTES
    with tqdm(total=total, desc=f"token cache: {what}", unit="B", unit_scale=True, disable=disable) as bar:
        for number, file in enumerate(files):
            if number:
                yield SEPARATOR
            empty = True
            for text in text_chunks(file, chunk_bytes, bar):
                empty = False
                yield text
            if empty:
                where = "pass a text file with --data.path" if len(files) == 1 else "remove it or add text"
                raise UserError(f"corpus {file} is empty; {where}")


def _scan(files: list[Path], chunk_bytes: int) -> tuple[str, int]:
    """First pass: the sorted vocabulary of the corpus and its length in characters."""
    seen = np.zeros(0x110000, dtype=bool)  # one flag per Unicode code point
    length = 0
    for text in _texts(files, chunk_bytes, "vocabulary"):
        seen[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)] = True
        length += len(text)
    return np.flatnonzero(seen).astype(np.uint32).tobytes().decode("utf-32-le"), length


def build_token_cache(
    path: str | os.PathLike, cache_dir: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES
) -> TokenCache:
    """The token cache of the corpus ``path`` under ``cache_dir``: reused when its sources are
    unchanged, else built (vocabulary pass, then encoding pass) and written atomically."""
    files = corpus_files(path)
    folder = cache_folder(path, cache_dir)
    sources = {"version": CACHE_VERSION, "source": str(Path(path).resolve()), "separator": SEPARATOR}
    root = Path(path) if Path(path).is_dir() else Path(path).parent
    stats = [(file.relative_to(root).as_posix(), file.stat()) for file in files]
    # [relative path, size, mtime_ns] of each file: cheap to take, and changes when a file does
    sources["files"] = [[name, st.st_size, st.st_mtime_ns] for name, st in stats]
    cached = _cache_if_valid(folder, sources)
    if cached is not None:
        return cached
    vocab, length = _scan(files, chunk_bytes)
    tokenizer = CharTokenizer(vocab)
    dtype = token_dtype(tokenizer.vocab_size)

    def write_tokens(file) -> None:
        """Second pass: the ids of the corpus, checked against the first pass's length."""
        written = 0
        try:
            for text in _texts(files, chunk_bytes, "encoding"):
                file.write(tokenizer.encode(text, dtype))  # the array's bytes, without a copy
                written += len(text)
        except UnknownCharacterError:  # a character that the first pass did not see
            written = -1
        if written != length:
            raise UserError(f"corpus {path} changed while its token cache was being built; run again")

    meta = {**sources, "vocab": vocab, "dtype": dtype.name, "length": length}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").unlink(missing_ok=True)  # the old cache is invalid from here on
        write_atomically(folder / "tokens.bin", write_tokens)
        meta["checksum"] = _checksum(folder / "tokens.bin", meta)
        write_atomically(folder / "meta.json", lambda file: file.write(json.dumps(meta, indent=1).encode()))
    except OSError as error:  # no permission, disk full, ...
        hint = "free some space or pass another --data.cache_dir"
        raise UserError(f"cannot write the token cache {folder}: {error.strerror}; {hint}") from None
    return TokenCache(folder, vocab, dtype.name, length, built=True)
