"""Token cache build speed and the resident memory of training on a large corpus.

    python benchmarks/corpus_memory.py [--size-mb 256] [--files 8] [--steps 30] [--workdir DIR]

Writes a synthetic corpus (Tiny Shakespeare's paragraphs, reshuffled for every copy) as a folder
of .txt files, then, each in its own subprocess so its peak memory is its own: builds the token
cache, reuses it, trains a tiny model for a few steps on it through the real CLI, does the same on
Tiny Shakespeare alone for reference, and encodes the whole corpus in memory the way the data
module did before the cache (one string, ids from it). Peak memory is the child's ru_maxrss (its
VmHWM: anonymous memory plus the touched pages of mapped files, the token cache included);
RssAnon and RssFile are sampled every 0.1 s while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SHAKESPEARE = [ROOT / "data" / "tinyshakespeare.txt", ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"]
TINY_FIT = [
    "--model.d_model=32",
    "--model.num_heads=2",
    "--model.num_blocks=2",
    "--model.context_length=64",
    "--model.dropout=0.0",
    "--model.warmup_steps=2",
    "--data.batch_size=16",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def make_corpus(folder: Path, source: str, size_mb: float, files: int) -> int:
    """Copies of ``source`` with their paragraphs shuffled, spread over ``files`` files; total bytes."""
    paragraphs = source.split("\n\n")
    rng = random.Random(0)
    folder.mkdir(parents=True)
    per_file = int(size_mb * 1e6 / files)
    total = 0
    for number in range(files):
        written = 0
        with open(folder / f"part{number:03d}.txt", "w", encoding="utf-8") as file:
            while written < per_file:
                rng.shuffle(paragraphs)
                text = "\n\n".join(paragraphs) + "\n\n"
                written += file.write(text)
        total += (folder / f"part{number:03d}.txt").stat().st_size
    return total


def run_child(command: list[str], cwd: Path) -> dict:
    """Run ``command``; its wall time, peak RSS (ru_maxrss) and sampled RssAnon/RssFile peaks, in MB."""
    peaks = {"RssAnon": 0, "RssFile": 0}
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(child.stdout.read()))
    reader.start()
    while True:  # sample the child's memory until it exits (wait4 then reaps it)
        try:
            with open(f"/proc/{child.pid}/status") as status:
                for line in status:
                    key, _, value = line.partition(":")
                    if key in peaks:
                        peaks[key] = max(peaks[key], int(value.split()[0]))
        except (OSError, ValueError, IndexError):
            pass
        if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break  # exited; not reaped yet
        time.sleep(0.1)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    seconds = time.perf_counter() - start
    text = output[0].decode(errors="replace") if output else ""
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{text[-3000:]}")
    return {
        "seconds": seconds,
        "maxrss": usage.ru_maxrss / 1024,
        "anon": peaks["RssAnon"] / 1024,
        "file": peaks["RssFile"] / 1024,
        "output": text,
    }


def child_build(corpus: str, cache_dir: str) -> None:
    """In a child: build (or reuse) the token cache and print what it took, as JSON."""
    from lightning_gpt.corpus import CHUNK_BYTES, build_token_cache

    start = time.perf_counter()
    cache = build_token_cache(corpus, cache_dir)
    seconds = time.perf_counter() - start
    facts = {"built": cache.built, "length": cache.length, "dtype": cache.dtype, "vocab": len(cache.vocab)}
    print(json.dumps({"seconds": seconds, "chunk": CHUNK_BYTES, **facts}))


def child_in_memory(corpus: str) -> None:
    """In a child: the data module's encoding before the token cache (the corpus as one string)."""
    import torch

    from lightning_gpt.corpus import SEPARATOR, corpus_files, read_corpus, token_dtype
    from lightning_gpt.tokenizer import CharTokenizer

    start = time.perf_counter()
    text = SEPARATOR.join(read_corpus(path) for path in corpus_files(corpus))
    tokenizer = CharTokenizer.from_text(text)
    ids = torch.from_numpy(tokenizer.encode(text, token_dtype(tokenizer.vocab_size)))
    print(json.dumps({"seconds": time.perf_counter() - start, "length": len(ids)}))


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=256, help="corpus size in MB (1e6 bytes)")
    parser.add_argument("--files", type=int, default=8, help="number of .txt files in the corpus folder")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the tiny model")
    parser.add_argument("--workdir", default=None, help="where to write the corpus (default: a temp folder)")
    parser.add_argument("--skip-in-memory", action="store_true", help="skip the in-memory comparison")
    parser.add_argument("--child-build", nargs=2, metavar=("CORPUS", "CACHE_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--child-in-memory", metavar="CORPUS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_build:
        return child_build(*args.child_build)
    if args.child_in_memory:
        return child_in_memory(args.child_in_memory)

    from machine import describe

    shakespeare = next((path for path in SHAKESPEARE if path.is_file()), None)
    if shakespeare is None:
        raise SystemExit(
            "put Tiny Shakespeare at data/tinyshakespeare.txt first (python cli.py fit downloads it)"
        )
    work = Path(tempfile.mkdtemp(prefix="corpus-memory-", dir=args.workdir))
    try:
        corpus = work / "corpus"
        size = make_corpus(corpus, shakespeare.read_text(encoding="utf-8"), args.size_mb, args.files)
        me = [sys.executable, str(Path(__file__).resolve())]
        print(f"machine: {describe()}")
        print(f"corpus: {size / 1e6:.1f} MB in {args.files} .txt files (Tiny Shakespeare, reshuffled)")

        build = run_child([*me, "--child-build", str(corpus), str(work / "cache")], cwd=work)
        info = last_json(build["output"])
        assert info["built"], "the cache existed before the build"
        print(
            f"build cache: {info['seconds']:.2f} s, {size / 1e6 / info['seconds']:.1f} MB/s, "
            f"{info['length']:,} tokens of {info['dtype']}, vocabulary {info['vocab']}, "
            f"chunks of {info['chunk'] / 2**20:g} MiB; child peak RSS {build['maxrss']:.0f} MB"
        )
        reuse = run_child([*me, "--child-build", str(corpus), str(work / "cache")], cwd=work)
        again = last_json(reuse["output"])
        assert not again["built"], "the cache was rebuilt for an unchanged corpus"
        print(f"reuse cache: {again['seconds'] * 1000:.1f} ms")

        fits = {
            "large corpus": (corpus, work / "cache"),
            "Tiny Shakespeare": (shakespeare, work / "cache-small"),
        }
        steps = [f"--trainer.max_steps={args.steps}", f"--trainer.val_check_interval={args.steps}"]
        for number, (name, (path, cache_dir)) in enumerate(fits.items()):
            run = work / f"run{number}"
            run.mkdir()
            data = [f"--data.path={path}", f"--data.cache_dir={cache_dir}"]
            fit = run_child([sys.executable, str(ROOT / "cli.py"), "fit", *data, *TINY_FIT, *steps], cwd=run)
            corpus_mb = (size if path == corpus else path.stat().st_size) / 1e6
            print(
                f"fit {args.steps} steps on {name} ({corpus_mb:.1f} MB): {fit['seconds']:.1f} s, "
                f"peak RSS {fit['maxrss']:.0f} MB (RssAnon {fit['anon']:.0f}, RssFile {fit['file']:.0f})"
            )
        if not args.skip_in_memory:
            memory = run_child([*me, "--child-in-memory", str(corpus)], cwd=work)
            seconds = last_json(memory["output"])["seconds"]
            print(
                f"in memory, as before the cache (one string, then ids): {seconds:.2f} s, "
                f"peak RSS {memory['maxrss']:.0f} MB (RssAnon {memory['anon']:.0f} MB)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
