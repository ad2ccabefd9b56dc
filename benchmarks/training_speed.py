"""Training speed: a plain PyTorch loop against the project's ``Trainer.fit`` path, side by side.

    python benchmarks/training_speed.py [--preset seed|cpu] [--rounds 3] [--warmup 2] [--steps 4]

Contenders (each round runs them all, in turn, with a fresh model of the same seed):
  plain-fp32     the seed's way, no framework: fp32, eager, the recipe's ``GPT``, optimizer (AdamW, or Muon
                 + AdamW), clipping and warmup+cosine, as ``GPTModule`` builds them
  trainer-fp32   the project's fit path (GPTLightningCLI: logging, progress bar, tokens/s) in fp32
  trainer-bf16   the same in bf16-mixed autocast, same model and dropout
  trainer-fast   the fastest CPU setting measured: bf16-mixed and attention_dropout 0
Step time is the wall time between the ends of consecutive optimizer steps (data, forward, backward,
clipping, optimizer, logging: everything). The first ``--warmup`` steps of each run are dropped;
the median over all rounds is reported, with ratios against plain-fp32. A data section times
batch assembly and the encoding of a 100 MB text.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402
from machine import describe  # noqa: E402

from lightning_gpt.cli import make_cli  # noqa: E402
from lightning_gpt.corpus import build_token_cache, read_corpus  # noqa: E402
from lightning_gpt.data import RandomWindows  # noqa: E402
from lightning_gpt.module import GPTModule  # noqa: E402
from lightning_gpt.tokenizer import CharTokenizer  # noqa: E402

RECIPES = {
    "seed": ROOT / "configs" / "shakespeare_char.yaml",
    "cpu": ROOT / "configs" / "shakespeare_char_cpu.yaml",
}


def recipe_settings(name: str) -> dict:
    """A recipe's sections, read from its YAML (the CPU recipe over the seed's, as ``cli.py fit`` layers
    them)."""
    merged: dict = {"trainer": {}, "model": {}, "data": {}}
    for path in dict.fromkeys([RECIPES["seed"], RECIPES[name]]):
        recipe = yaml.safe_load(path.read_text())
        for section in merged:
            merged[section].update(recipe.get(section) or {})
    return merged


CONTENDERS = {
    "trainer-fp32": ["--trainer.precision=32-true"],
    "trainer-bf16": ["--trainer.precision=bf16-mixed"],
    "trainer-fast": ["--trainer.precision=bf16-mixed", "--model.attention_dropout=0.0"],
}


class StepTimer(L.Callback):
    """Records the time at the end of every optimizer step (wall time unless another ``clock``)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.ends.append(self.clock())


def step_times(ends: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(ends[warmup:-1], ends[warmup + 1 :], strict=True)]


def plain_loop(corpus: Path, recipe: dict, steps: int, seed: int = 1337) -> list[float]:
    """The seed's training loop, written without any framework, with the model, optimizer and warmup +
    cosine schedule that ``fit`` builds for the recipe (``GPTModule``). Returns step end times."""
    torch.manual_seed(seed)
    text = read_corpus(corpus)
    tokenizer = CharTokenizer.from_text(text)
    data = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    train = data[: int((1 - recipe["data"]["val_fraction"]) * len(data))]
    model_settings = {k: v for k, v in recipe["model"].items() if k != "compile"}
    module = GPTModule(**model_settings, decay_steps=recipe["trainer"]["max_steps"], vocab=tokenizer.vocab)
    model, parts = module.model.train(), module.configure_optimizers()
    optimizer, schedule = parts["optimizer"], parts["lr_scheduler"]["scheduler"]
    T, B = recipe["model"]["context_length"], recipe["data"]["batch_size"]
    ends = []
    for _ in range(steps):
        starts = torch.randint(len(train) - T, (B,))
        x = torch.stack([train[i : i + T] for i in starts])  # [B, T]
        y = torch.stack([train[i + 1 : i + T + 1] for i in starts])  # [B, T]
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["trainer"]["gradient_clip_val"])
        optimizer.step()
        schedule.step()
        ends.append(time.perf_counter())
    return ends


def trainer_fit(corpus: Path, name: str, decay_steps: int, steps: int, extra: list[str]) -> list[float]:
    """``cli.py fit --config RECIPE`` in this process (the users' path), with a StepTimer added, the
    recipe's schedule and no validation. Returns step end times."""
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "fit",
            f"--config={RECIPES[name]}",
            f"--data.path={corpus}",
            f"--data.cache_dir={tmp}/data",
            f"--model.decay_steps={decay_steps}",  # the recipe's max_steps, as in the plain loop
            f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=0",  # time training steps only
            f"--trainer.default_root_dir={tmp}",
            f"--checkpoint.dirpath={tmp}/checkpoints",
            "--sample.print_at_end=false",
            *extra,
        ]
        # The progress bar (stdout) and warnings (stderr) still run, unseen.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            make_cli(args, callbacks=[timer])
    return timer.ends


def data_path(corpus: Path, context_length: int, batch_size: int, repeats: int = 200) -> tuple[float, float]:
    """Median seconds to assemble one training batch, and MB/s encoding a 100 MB text."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = build_token_cache(corpus, tmp)
        windows = RandomWindows(cache.tokens(), context_length, batch_size, seed=1)
        times = []
        for number in range(repeats):
            start = time.perf_counter()
            windows.batch(number)
            times.append(time.perf_counter() - start)
        text = read_corpus(corpus)
        big = Path(tmp) / "big.txt"
        big.write_text(text * (100_000_000 // len(text) + 1), encoding="utf-8")
        size = big.stat().st_size
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            build_token_cache(big, Path(tmp) / "big-cache")
        return statistics.median(times), size / 1e6 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(RECIPES), default="seed", help="which recipe of configs/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped from each run")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "tinyshakespeare.txt")
    parser.add_argument("--only", nargs="*", help="run only these contenders (plain-fp32 always runs)")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-run banners
    if not args.corpus.is_file():
        sys.exit(f"error: corpus {args.corpus} not found; run `python cli.py fit` once or pass --corpus")
    recipe = recipe_settings(args.preset)
    T, B = recipe["model"]["context_length"], recipe["data"]["batch_size"]
    total = args.warmup + args.steps + 1
    contenders = {name: extra for name, extra in CONTENDERS.items() if not args.only or name in args.only}
    print(f"machine: {describe()}")
    print(f"recipe {RECIPES[args.preset].name}: {recipe}")
    print(f"{args.rounds} rounds x {args.steps} timed steps (after {args.warmup})")
    results: dict[str, list[float]] = {"plain-fp32": [], **{name: [] for name in contenders}}
    for round_number in range(args.rounds):
        for name in results:
            if name == "plain-fp32":
                ends = plain_loop(args.corpus, recipe, total)
            else:
                decay = recipe["trainer"]["max_steps"]
                ends = trainer_fit(args.corpus, args.preset, decay, total, contenders[name])
            times = step_times(ends, args.warmup)
            results[name].extend(times)
            median = 1000 * statistics.median(times)
            print(f"round {round_number + 1} {name:13s} median {median:9.1f} ms/step", flush=True)
    base = statistics.median(results["plain-fp32"])
    print("\n| contender | ms/step | tokens/s | step time vs plain | tokens/s vs plain |")
    print("|---|---|---|---|---|")
    for name, times in results.items():
        median = statistics.median(times)
        print(
            f"| {name} | {1000 * median:.1f} | {T * B / median:,.0f} | "
            f"{median / base:.3f}x | {base / median:.2f}x |"
        )
    batch_seconds, encode_rate = data_path(args.corpus, T, B)
    trainer_step = statistics.median(results.get("trainer-fp32", results["plain-fp32"]))
    print(
        f"\ndata: one batch assembled in {1e6 * batch_seconds:.0f} us "
        f"({100 * batch_seconds / trainer_step:.3f} % of a trainer-fp32 step); "
        f"encoding a 100 MB text: {encode_rate:.1f} MB/s"
    )


if __name__ == "__main__":
    main()
