"""Quality per wall-clock second on a CPU: this project's CPU recipe against nanoGPT's, side by side.

    python benchmarks/cpu_quality.py --nanogpt DIR [--repeats 3] [--ours LABEL="FIT ARGS" ...] [--keep DIR]

DIR is a checkout of github.com/karpathy/nanoGPT (kept outside this repository). Its
``data/shakespeare_char`` is prepared from this repository's corpus (copied to its ``input.txt``,
so its ``prepare.py`` downloads nothing). Each repeat runs every contender once (the order reversed
from one repeat to the next) and times the whole command (Python start-up included) with the
threads each tool picks by default:

- nanoGPT: the CPU command of its README; its val loss is its own estimate (20 batches of 12 x 64).
- ours: ``cli.py fit --config configs/shakespeare_char_cpu.yaml`` (plus each ``--ours`` label's
  arguments); its val loss is the last one logged, on the whole validation split.

Prints each run, then each contender's median wall time and the median of its per-repeat ratio to
the first contender's (nanoGPT's when it runs).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402
from plot_loss_curve import load_run  # noqa: E402

NANOGPT_ARGS = shlex.split(
    "config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 "
    "--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 "
    "--lr_decay_iters=2000 --dropout=0.0"
)
NANOGPT_TOKENS = 2000 * 12 * 64  # max_iters x batch_size x block_size
CORPUS = ROOT / "data" / "tinyshakespeare.txt"


def prepare_nanogpt(nanogpt: Path) -> None:
    """Write nanoGPT's train.bin / val.bin from the local corpus (once)."""
    folder = nanogpt / "data" / "shakespeare_char"
    if not (folder / "prepare.py").is_file():
        sys.exit(f"error: {nanogpt} is not a nanoGPT checkout (no data/shakespeare_char/prepare.py)")
    if not (folder / "val.bin").is_file():
        shutil.copyfile(CORPUS, folder / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=folder, check=True, stdout=subprocess.DEVNULL)


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"error: {shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def run_nanogpt(nanogpt: Path) -> tuple[float, float, int]:
    """Wall seconds, final val loss and tokens seen of nanoGPT's CPU command."""
    with tempfile.TemporaryDirectory() as tmp:
        seconds, out = timed([sys.executable, "train.py", *NANOGPT_ARGS, f"--out_dir={tmp}"], nanogpt)
    losses = re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", out)
    return seconds, float(losses[-1]), NANOGPT_TOKENS


def run_ours(config: Path, extra: list[str], keep: Path | None) -> tuple[float, float, int]:
    """Wall seconds, last val_loss (whole validation split) and tokens seen of ``cli.py fit``; with
    ``keep``, its events, config and printed output are copied there."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "cli.py", "fit", f"--config={config}", *extra]
        # only where the outputs go differs from the plain command (a second run would refuse to
        # overwrite checkpoints/last.ckpt)
        command += [f"--trainer.default_root_dir={tmp}", f"--checkpoint.dirpath={tmp}/checkpoints"]
        seconds, out = timed(command, ROOT)
        version = next(Path(tmp).glob("lightning_logs/version_*"))
        if keep:
            shutil.copytree(version, keep, dirs_exist_ok=True)
            (keep / "stdout.txt").write_text(out)
        saved = yaml.safe_load((version / "config.yaml").read_text())
        trainer, data, model = saved["trainer"], saved["data"], saved["model"]
        tokens = trainer["max_steps"] * data["batch_size"] * model["context_length"]
        return seconds, load_run("ours", version).val[-1].value, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout, outside this repository")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "shakespeare_char_cpu.yaml")
    parser.add_argument(
        "--ours",
        action="append",
        metavar='LABEL="FIT ARGS"',
        help="a variant of our recipe (repeatable); default: the recipe as it is, labelled 'ours'",
    )
    parser.add_argument("--keep", type=Path, help="copy each run of ours here, in LABEL/REPEAT folders")
    args = parser.parse_args()
    contenders = {}
    if args.nanogpt:
        prepare_nanogpt(args.nanogpt)
        contenders["nanoGPT"] = lambda repeat: run_nanogpt(args.nanogpt)
    for spec in args.ours or ["ours="]:
        label, _, extra = spec.partition("=")
        contenders[label] = lambda repeat, label=label, extra=extra: run_ours(
            args.config, shlex.split(extra), args.keep and args.keep / label / str(repeat)
        )
    sys.stdout.reconfigure(line_buffering=True)  # each run's line as it ends
    print(f"machine: {describe()}")
    results: dict[str, list[tuple[float, float, int]]] = {label: [] for label in contenders}
    for repeat in range(args.repeats):
        order = list(contenders.items())
        for label, run in order[::-1] if repeat % 2 == 0 else order:  # who goes first alternates
            seconds, loss, tokens = run(repeat + 1)
            results[label].append((seconds, loss, tokens))
            print(
                f"repeat {repeat + 1}: {label:<12} {seconds:7.1f} s  val_loss {loss:.4f}  tokens {tokens:,}"
            )
    first = next(iter(results))
    print(f"\n| contender | median wall s | median ratio to {first} (same repeat) | val_loss | tokens seen |")
    print("|---|---|---|---|---|")
    for label, runs in results.items():
        median = statistics.median(s for s, _, _ in runs)
        ratio = statistics.median(
            s / ref for (s, _, _), (ref, _, _) in zip(runs, results[first], strict=True)
        )
        losses = ", ".join(sorted({f"{loss:.4f}" for _, loss, _ in runs}))
        print(f"| {label} | {median:.1f} | {ratio:.2f}x | {losses} | {runs[0][2]:,} |")


if __name__ == "__main__":
    main()
