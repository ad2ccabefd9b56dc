"""The corpus reader and token cache: folders, chunked UTF-8, cache reuse and rebuilds, errors."""

import itertools
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from lightning_gpt import corpus
from lightning_gpt.corpus import SEPARATOR, build_token_cache, cache_folder, text_chunks
from lightning_gpt.data import CharDataModule, RandomWindows
from lightning_gpt.errors import UserError
from lightning_gpt.tokenizer import CharTokenizer

MIXED = "Ünïcödé text — with 漢字 and 🙂 emoji, line one.\nline two\r\n"  # 1- to 4-byte characters


def decoded(cache) -> str:
    return CharTokenizer(cache.vocab).decode(cache.tokens().numpy())


def make_folder(root, files: dict[str, str]):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8", newline="")
    return root


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 64])
def test_chunks_split_only_between_characters(tmp_path, chunk_bytes):
    path = tmp_path / "mixed.txt"
    path.write_bytes((MIXED * 3).encode("utf-8"))
    chunks = list(text_chunks(path, chunk_bytes))
    assert "".join(chunks) == MIXED * 3
    assert all(len(chunk.encode("utf-8")) <= chunk_bytes + 3 for chunk in chunks)


def test_folder_files_are_joined_in_sorted_order(tmp_path):
    corpus = make_folder(
        tmp_path / "corpus",
        # by name alone sub/0.txt would come first; by its path in the folder it comes last
        {"b.txt": "second file\n", "a.txt": MIXED, "sub/0.txt": "third", "notes.md": "not a .txt file"},
    )
    cache = build_token_cache(corpus, tmp_path / "cache", chunk_bytes=5)
    expected = MIXED + SEPARATOR + "second file\n" + SEPARATOR + "third"
    assert decoded(cache) == expected
    assert cache.vocab == "".join(sorted(set(expected)))
    assert cache.folder.parent == tmp_path / "cache" and cache.folder.name.startswith("tokens-corpus-")

    data = CharDataModule(path=str(corpus), cache_dir=str(tmp_path / "cache"), context_length=4)
    data.prepare_data()
    data.setup("fit")
    assert len(data.train_tokens) == int(len(expected) * 0.9)
    assert data.tokenizer.decode(torch.cat([data.train_tokens, data.val_tokens]).numpy()) == expected


def test_single_file_corpus_is_the_file_exactly(tmp_path):
    path = tmp_path / "one.txt"
    path.write_bytes(MIXED.encode("utf-8"))
    assert decoded(build_token_cache(path, tmp_path / "cache")) == MIXED  # no separator, \r\n kept


def test_a_file_name_that_is_not_utf8_trains(tmp_path):
    """A Latin-1 name (an old archive's): its undecodable bytes went into the cache folder's name, which
    torch.from_file could not open (a traceback)."""
    path = tmp_path / os.fsdecode(b"caf\xe9.txt")
    path.write_text(MIXED, encoding="utf-8", newline="")
    assert decoded(build_token_cache(path, tmp_path / "cache")) == MIXED


def test_cache_is_reused_then_rebuilt_when_the_corpus_changes(tmp_path):
    corpus = make_folder(tmp_path / "corpus", {"a.txt": "alpha\n", "b.txt": "beta\n"})
    cache_dir = tmp_path / "cache"
    first = build_token_cache(corpus, cache_dir)
    before = first.tokens_path.stat()
    again = build_token_cache(corpus, cache_dir)
    after = again.tokens_path.stat()
    assert first.built and not again.built
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    (corpus / "b.txt").write_text("beta, changed\n")
    changed = build_token_cache(corpus, cache_dir)
    assert changed.built and decoded(changed) == "alpha\n" + SEPARATOR + "beta, changed\n"
    assert changed.tokens_path.stat().st_ino != before.st_ino

    (corpus / "b.txt").write_text("beta, chanced\n")  # a typo mended: the same size, a later mtime
    os.utime(corpus / "b.txt", ns=(before.st_mtime_ns + 10**9,) * 2)
    mended = build_token_cache(corpus, cache_dir)
    assert mended.built and decoded(mended).endswith("beta, chanced\n")

    (corpus / "0.txt").write_text("zero\n")
    added = build_token_cache(corpus, cache_dir)
    assert added.built and decoded(added).startswith("zero\n" + SEPARATOR + "alpha")

    (corpus / "a.txt").unlink()
    removed = build_token_cache(corpus, cache_dir)
    assert removed.built and decoded(removed) == "zero\n" + SEPARATOR + "beta, chanced\n"
    assert not build_token_cache(corpus, cache_dir).built
    assert sorted(p.name for p in removed.folder.iterdir()) == ["meta.json", "tokens.bin"]  # no temp files


def test_an_incomplete_cache_is_rebuilt(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("some text to cache\n")
    cache = build_token_cache(path, tmp_path / "cache")
    with open(cache.tokens_path, "r+b") as tokens:
        tokens.truncate(5)  # e.g. a crash or a full disk
    rebuilt = build_token_cache(path, tmp_path / "cache")
    assert rebuilt.built and decoded(rebuilt) == "some text to cache\n"


@pytest.mark.parametrize("meta", ["[]", "null", '{"version": 2}'], ids=["list", "null", "no-vocab"])
def test_a_cache_description_of_another_shape_is_rebuilt(tmp_path, meta):
    path = tmp_path / "text.txt"
    path.write_text("some text to cache\n")
    cache = build_token_cache(path, tmp_path / "cache")
    (cache.tokens_path.parent / "meta.json").write_text(meta)  # hand-edited, or another program's
    rebuilt = build_token_cache(path, tmp_path / "cache")
    assert rebuilt.built and decoded(rebuilt) == "some text to cache\n"


def test_a_folder_named_like_a_text_file_is_not_read(tmp_path):
    make_folder(tmp_path / "corpus", {"a.txt": "first\n", "notes.txt/b.txt": "second\n"})
    cache = build_token_cache(tmp_path / "corpus", tmp_path / "cache")
    assert decoded(cache) == "first\n" + SEPARATOR + "second\n"


def test_two_corpora_never_share_a_cache(tmp_path):
    for name in ("x", "y"):
        make_folder(tmp_path / name, {"corpus.txt": f"text of {name}\n"})
    x = build_token_cache(tmp_path / "x" / "corpus.txt", tmp_path / "cache")
    y = build_token_cache(tmp_path / "y" / "corpus.txt", tmp_path / "cache")
    assert x.folder != y.folder and decoded(x) == "text of x\n" and decoded(y) == "text of y\n"
    assert cache_folder(tmp_path / "x" / ".." / "x" / "corpus.txt", tmp_path / "cache") == x.folder


@pytest.mark.parametrize(
    ("size", "dtype"), [(256, torch.uint8), (257, torch.uint16), (65536, torch.uint16), (65537, torch.int32)]
)
def test_the_token_dtype_is_the_smallest_that_holds_the_vocabulary(tmp_path, size, dtype):
    characters = (
        chr(point) for point in range(0x100, 0x110000) if not 0xD800 <= point < 0xE000
    )  # no surrogates
    text = "".join(itertools.islice(characters, size)) * 3
    make_folder(tmp_path / "corpus", {"wide.txt": text})
    data = CharDataModule(path=str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"), context_length=8)
    data.setup("fit")
    assert len(data.vocab) == size and data.train_tokens.dtype == dtype
    tokens = torch.cat([data.train_tokens, data.val_tokens]).long().numpy()
    assert data.tokenizer.decode(tokens) == text  # the largest id too (257 in uint8 would wrap to 0)
    x, y = next(iter(RandomWindows(data.train_tokens, 8, 4, seed=0)))
    assert x.dtype == torch.long and int(x.max()) < size and torch.equal(x[:, 1:], y[:, :-1])


def test_empty_folders_and_empty_files_are_user_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no .txt files"):
        build_token_cache(tmp_path / "empty", tmp_path / "cache")
    make_folder(tmp_path / "other", {"readme.md": "no text files here"})
    with pytest.raises(UserError, match="has no .txt files"):
        build_token_cache(tmp_path / "other", tmp_path / "cache")
    make_folder(tmp_path / "holes", {"a.txt": "text", "b.txt": ""})
    with pytest.raises(UserError, match=r"corpus .*b\.txt is empty"):
        build_token_cache(tmp_path / "holes", tmp_path / "cache")
    with pytest.raises(UserError, match="nowhere does not exist"):
        build_token_cache(tmp_path / "nowhere", tmp_path / "cache")
    with pytest.raises(UserError, match="corpus file /dev/null is not a file"):  # it said "does not exist"
        build_token_cache("/dev/null", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing is written for a bad corpus


def test_a_non_utf8_file_in_a_folder_is_named_with_the_byte_offset(tmp_path):
    corpus = make_folder(tmp_path / "corpus", {"a.txt": MIXED * 50})
    prefix = (MIXED * 20).encode("utf-8")
    (corpus / "b.txt").write_bytes(prefix + b"caf\xe9 au lait")
    offset = len(prefix) + 3
    with pytest.raises(UserError, match=rf"corpus .*b\.txt is not UTF-8: byte 0xe9 at offset {offset};"):
        build_token_cache(corpus, tmp_path / "cache", chunk_bytes=64)  # the bad byte is in a later chunk
    (corpus / "c.txt").write_bytes(b"ends inside a character \xe2\x82")
    (corpus / "b.txt").unlink()
    with pytest.raises(UserError, match=r"corpus .*c\.txt is not UTF-8: byte 0xe2 at offset 24;"):
        build_token_cache(corpus, tmp_path / "cache", chunk_bytes=7)
    (corpus / "c.txt").write_text("saved by Notepad or PowerShell", encoding="utf-16")  # with its BOM
    with pytest.raises(UserError, match=r"c\.txt is not UTF-8: .* offset 0; it is UTF-16: .* -f utf-16"):
        build_token_cache(corpus, tmp_path / "cache")
    (corpus / "c.txt").write_text("saved as UTF-32", encoding="utf-32")
    with pytest.raises(UserError, match=r"c\.txt is not UTF-8: .* offset 0; it is UTF-32: .* -f utf-32"):
        build_token_cache(corpus, tmp_path / "cache")


def test_tokens_are_memory_mapped_and_datasets_pickle_without_the_corpus(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text(MIXED * 4000)  # about 230 KB
    data = CharDataModule(path=str(path), cache_dir=str(tmp_path / "cache"), context_length=16, batch_size=4)
    data.setup("fit")
    cache = data.token_cache()
    assert not cache.built  # setup built it, this call reuses it
    # The tensor's memory is the file's: a private (copy-on-write) map, so writes never reach the file.
    expected = cache.tokens_path.read_bytes()[: len(data.train_tokens)]
    assert data.train_tokens.numpy().tobytes() == expected
    windows = RandomWindows(data.train_tokens, 16, 4, seed=3)
    payload = pickle.dumps(windows)
    assert len(payload) < 2000  # the file name and bounds, not the tokens
    copy = pickle.loads(payload)
    assert all(torch.equal(a, b) for a, b in zip(windows.batch(5), copy.batch(5), strict=True))
    assert os.path.samefile(copy.tokens.mapped_slice.path, cache.tokens_path)


def test_a_run_hashes_its_token_cache_once(tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(MIXED * 100)
    build_token_cache(path, tmp_path / "cache")
    hashed = []
    checksum = corpus._checksum
    monkeypatch.setattr(corpus, "_checksum", lambda *args: hashed.append(args) or checksum(*args))
    data = CharDataModule(path=str(path), cache_dir=str(tmp_path / "cache"), context_length=16, batch_size=4)
    data.prepare_data()  # checks the cache (one hash of tokens.bin) ...
    data.setup("fit")  # ... and setup, in the same process, reuses that check
    assert len(hashed) == 1 and len(data.train_tokens) + len(data.val_tokens) == len(MIXED) * 100


def cache_files(corpus_path: Path, cache_dir: Path) -> tuple[Path, Path]:
    cache = build_token_cache(corpus_path, cache_dir)
    return cache.folder / "meta.json", cache.tokens_path


def swap_two_vocabulary_characters(meta: Path, tokens: Path) -> None:
    data = json.loads(meta.read_text())
    data["vocab"] = data["vocab"][1] + data["vocab"][0] + data["vocab"][2:]  # same length, other order
    meta.write_text(json.dumps(data, indent=1))


def change_one_token(meta: Path, tokens: Path) -> None:
    with open(tokens, "r+b") as file:
        file.seek(100)
        byte = file.read(1)
        file.seek(100)
        file.write(bytes([(byte[0] + 1) % 20]))


def shorten_both(meta: Path, tokens: Path) -> None:
    data = json.loads(meta.read_text())
    data["length"] -= 1000
    meta.write_text(json.dumps(data, indent=1))
    os.truncate(tokens, data["length"])


@pytest.mark.parametrize("edit", [swap_two_vocabulary_characters, change_one_token, shorten_both])
def test_an_edited_token_cache_is_rebuilt_never_used(tmp_path, small_corpus, capsys, edit):
    meta, tokens = cache_files(small_corpus, tmp_path / "cache")
    original = tokens.read_bytes()
    edit(meta, tokens)
    capsys.readouterr()
    cache = build_token_cache(small_corpus, tmp_path / "cache")
    assert cache.built and "was edited after it was built; rebuilding it" in capsys.readouterr().err
    assert tokens.read_bytes() == original
    text = small_corpus.read_text(encoding="utf-8")
    assert "".join(cache.vocab[i] for i in cache.tokens(0, 500).tolist()) == text[:500]
    assert not build_token_cache(small_corpus, tmp_path / "cache").built  # and is trusted again


def test_unreadable_corpus_and_unwritable_cache(tmp_path, small_corpus):
    with pytest.raises(UserError, match=f"cannot read corpus {re.escape(str(tmp_path))}: Is a directory"):
        "".join(text_chunks(tmp_path))
    (tmp_path / "file").write_text("a file where the cache folder should be")
    with pytest.raises(UserError, match=r"cannot write the token cache .*: Not a directory; free some space"):
        build_token_cache(small_corpus, tmp_path / "file")


def test_corpus_changed_during_the_build(tmp_path, small_corpus, monkeypatch):
    scan = corpus._scan

    def scan_then_append(files, chunk_bytes):
        result = scan(files, chunk_bytes)
        with open(small_corpus, "a", encoding="utf-8") as file:
            file.write("more text")
        return result

    monkeypatch.setattr(corpus, "_scan", scan_then_append)
    with pytest.raises(UserError, match="changed while its token cache was being built; run again"):
        build_token_cache(small_corpus, tmp_path / "cache")
