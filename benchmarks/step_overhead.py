"""Per-step overhead of ``cli.py fit`` against a plain PyTorch loop doing the same work, on a tiny model.

    python benchmarks/step_overhead.py [--rounds 5] [--warmup 50] [--steps 300] [--device cpu|cuda]
        [--mode interleaved|separate] [--clock wall|cpu] [--threads N] [--fit-arg=--trainer.X=Y]
        [--floor] [--json FILE]

At this size (1 block, d_model 32, 2 heads, T 32, batch 8, fp32) a step computes almost nothing, so
the time per step is mostly framework work: hooks, logging, the progress bar, callbacks.

Contenders:
  plain  a PyTorch loop: batches of ``RandomWindows`` through a DataLoader (as the DataModule builds
         it), ``GPT`` forward, backward, clipping to 1.0, and the optimizer and warmup + cosine schedule
         of ``GPTModule.configure_optimizers`` (AdamW, or a recipe's Muon + AdamW)
  fit    the real CLI: ``make_cli(args, run=False)`` then ``trainer.fit``, with the shipped defaults
         (progress bar, TensorBoard logger, default callbacks, checkpointing) except for the tiny shape,
         ``32-true`` precision, throwaway folders and no validation within the timed steps
         (``--fit-arg`` adds CLI arguments; ``--floor`` times instead a minimal LightningModule
         through ``Trainer(barebones=True)``: what Lightning itself costs per step)
Every round starts both afresh (same seed). ``--mode separate`` runs them one after the other (their
order alternates from round to round) and times a step between the ends of consecutive optimizer
steps. ``--mode interleaved`` (the default on CPUs) alternates them step by step inside one fit: a
callback runs one plain step at the end of each fit step, so both see the same moments of a busy
machine; a fit step is then the time from the end of one plain step to the start of the next. On
CUDA only ``separate`` is meaningful (steps overlap with the device's queue).

The first ``--warmup`` steps of each run are dropped. Reported: the median ms/step of each contender
over all rounds, and fit / plain as the median of the per-round ratios of medians (and of means, which
include the work done only at logging steps).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402
from machine import describe  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from training_speed import StepTimer, step_times  # noqa: E402

from lightning_gpt.cli import make_cli  # noqa: E402
from lightning_gpt.data import CharDataModule, RandomWindows  # noqa: E402
from lightning_gpt.model import GPT  # noqa: E402
from lightning_gpt.module import GPTModule  # noqa: E402

# What both contenders train: the tiny model of the issue, or a recipe's model (--recipe).
SHAPE = dict(d_model=32, num_heads=2, num_blocks=1, context_length=32)
MODEL: dict = dict(SHAPE)  # --model.* values (a recipe adds dropout, learning rate, ...)
BATCH_SIZE = 8
PRECISION = "32-true"  # or bf16-mixed (--precision)
COMPILE = False  # torch.compile the model in both contenders (--compile)
SEED = 1337
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def training_parts(
    corpus: Path, cache_dir: str, decay_steps: int, device: str
) -> tuple[DataLoader, GPT, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Batches, model, AdamW and schedule as the project builds them, without the framework."""
    torch.manual_seed(SEED)
    data = CharDataModule(
        path=str(corpus), cache_dir=cache_dir, batch_size=BATCH_SIZE, context_length=SHAPE["context_length"]
    )
    data.prepare_data()
    data.setup("fit")
    windows = RandomWindows(data.train_tokens, SHAPE["context_length"], BATCH_SIZE, seed=SEED)
    loader = DataLoader(windows, batch_size=None, pin_memory=device == "cuda")
    # the model, optimizer and schedule that fit trains with these settings (a recipe's positions and
    # optimizer too), built by the module but driven by the loop below
    module = GPTModule(**{**MODEL, "decay_steps": decay_steps}, vocab=data.vocab)
    model = module.model.to(device).train()
    if device == "cuda":  # as GPTModule.on_fit_start
        torch.set_float32_matmul_precision("high")
    parts = module.configure_optimizers()
    return loader, model, parts["optimizer"], parts["lr_scheduler"]["scheduler"]


def plain_steps(corpus: Path, cache_dir: str, decay_steps: int, device: str) -> Iterator[None]:
    """The same training work without a framework, one optimizer step per ``next()``."""
    loader, model, optimizer, schedule = training_parts(corpus, cache_dir, decay_steps, device)
    forward = torch.compile(model) if COMPILE else model
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=PRECISION == "bf16-mixed")
    for x, y in loader:  # endless
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # [B, T] each
        with autocast:
            _, loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        yield


class MinimalModule(L.LightningModule):
    """The least a LightningModule needs for the same work: Lightning's own per-step cost."""

    def __init__(self, model: GPT, optimizer: torch.optim.Optimizer, schedule):
        super().__init__()
        self.model = model
        self.optimizer, self.schedule = optimizer, schedule

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(*batch)[1]

    def configure_optimizers(self):
        return {"optimizer": self.optimizer, "lr_scheduler": {"scheduler": self.schedule, "interval": "step"}}


def floor_fit(corpus: Path, tmp: str, steps: int, device: str, callback: L.Callback) -> None:
    """``MinimalModule`` through ``Trainer(barebones=True)`` (no logger, progress bar, checkpoints
    or model summary), clipping to 1.0, with ``callback``."""
    loader, model, optimizer, schedule = training_parts(corpus, f"{tmp}/data", steps, device)
    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        precision="32-true",
        max_steps=steps,
        gradient_clip_val=1.0,
        barebones=True,
        callbacks=[callback],
        default_root_dir=tmp,
    )
    trainer.fit(MinimalModule(model, optimizer, schedule), loader)
    if device == "cuda":
        torch.cuda.synchronize()


class Interleaved(L.Callback):
    """Runs one plain step at the end of every fit step and times both contenders' steps."""

    def __init__(self, plain: Iterator[None], clock: Callable[[], float]):
        self.plain = plain
        self.clock = clock
        self.times: dict[str, list[float]] = {"plain": [], "fit": []}
        self._end: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        start = self.clock()
        if self._end is not None:
            self.times["fit"].append(start - self._end)
        next(self.plain)
        self._end = self.clock()
        self.times["plain"].append(self._end - start)


def cli_fit(
    corpus: Path, tmp: str, steps: int, device: str, callback: L.Callback, extra: Sequence[str]
) -> None:
    """``cli.py fit`` for ``steps`` steps in this process, with ``callback`` added (``extra``: more
    CLI arguments)."""
    args = [
        f"--data.path={corpus}",
        f"--data.cache_dir={tmp}/data",
        f"--data.batch_size={BATCH_SIZE}",
        *(f"--model.{name}={'null' if value is None else value}" for name, value in MODEL.items()),
        f"--model.compile={str(COMPILE).lower()}",  # as the plain loop
        f"--trainer.accelerator={device}",
        "--trainer.devices=1",
        f"--trainer.precision={PRECISION}",
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps + 1}",  # no validation while timing (the sanity check stays)
        f"--trainer.default_root_dir={tmp}",
        f"--checkpoint.dirpath={tmp}/checkpoints",
        *extra,
    ]
    cli = make_cli(args, callbacks=[callback], run=False)
    # The progress bar (stdout), the final sample and warnings (stderr) still run, unseen.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli.trainer.fit(cli.model, cli.datamodule)
    if device == "cuda":
        torch.cuda.synchronize()


def one_round(args: argparse.Namespace, tmp: str, number: int) -> dict[str, list[float]]:
    """Step times (seconds) of both contenders in one round, warmup dropped."""
    clock = CLOCKS[args.clock]
    total = args.warmup + args.steps + 1
    plain = plain_steps(args.corpus, f"{tmp}/data", total, args.device)
    folder = f"{tmp}/fit{number}"

    def fit(callback: L.Callback) -> None:
        if args.floor:
            floor_fit(args.corpus, folder, total, args.device, callback)
        else:
            cli_fit(args.corpus, folder, total, args.device, callback, args.fit_arg)

    if args.mode == "interleaved":
        next(plain)  # builds the plain contender before the fit starts
        interleaved = Interleaved(plain, clock)
        fit(interleaved)
        return {name: times[args.warmup :] for name, times in interleaved.times.items()}
    times = {}
    for name in ["plain", "fit"] if number % 2 == 0 else ["fit", "plain"]:
        if name == "plain":
            ends = [clock() for _ in itertools.islice(plain, total)]
            if args.device == "cuda":
                torch.cuda.synchronize()
        else:
            timer = StepTimer(clock)
            fit(timer)
            ends = timer.ends
        times[name] = step_times(ends, args.warmup)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=50, help="steps dropped from each run")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--mode", choices=["interleaved", "separate"], help="default: interleaved on CPU")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (steadier on a busy machine; CPU only)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "tinyshakespeare.txt")
    parser.add_argument(
        "--fit-arg",
        action="append",
        default=[],
        help="one more argument for the fit contender, e.g. --fit-arg=--trainer.logger=false (repeatable)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="time a minimal LightningModule through Trainer(barebones=True) instead of the CLI",
    )
    parser.add_argument(
        "--recipe", type=Path, help="train this recipe's model and batch size (a configs/*.yaml file)"
    )
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in both contenders")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    global PRECISION, COMPILE, BATCH_SIZE
    PRECISION, COMPILE = args.precision, args.compile
    if args.recipe:
        import yaml

        recipe = yaml.safe_load(args.recipe.read_text())
        MODEL.clear()
        MODEL.update({k: v for k, v in recipe["model"].items() if k != "compile"})
        SHAPE.update({k: MODEL[k] for k in SHAPE})
        BATCH_SIZE = recipe["data"]["batch_size"]
    args.mode = args.mode or ("separate" if args.device == "cuda" else "interleaved")
    if args.device == "cuda" and (args.mode == "interleaved" or args.clock == "cpu"):
        sys.exit("error: on CUDA use --mode separate and --clock wall")
    if not args.corpus.is_file():
        sys.exit(f"error: corpus {args.corpus} not found; run `python cli.py fit` once or pass --corpus")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # no per-run banners
    warnings.filterwarnings("ignore")
    machine = describe()
    print(f"machine: {machine}")
    contender = "the Lightning floor (minimal module, barebones)" if args.floor else f"the CLI {args.fit_arg}"
    print(
        f"{MODEL}, batch {BATCH_SIZE}, {PRECISION}, compile {COMPILE}, {args.device}; "
        f"{args.mode}, {args.clock} clock; "
        f"{args.rounds} rounds x {args.steps} steps after {args.warmup}; fit: {contender}"
    )
    runs: dict[str, list[list[float]]] = {"plain": [], "fit": []}  # per round: step times in seconds
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(args.rounds):
            times = one_round(args, tmp, number)
            for name in runs:
                runs[name].append(times[name])
            plain, fit = (statistics.median(times[name]) for name in ("plain", "fit"))
            ratio = fit / plain
            print(f"round {number + 1}: plain {1e3 * plain:.3f} ms, fit {1e3 * fit:.3f} ms = {ratio:.3f}x")
    results = {
        name: {
            "median_ms": 1e3 * statistics.median(t for times in rounds for t in times),
            "mean_ms": 1e3 * statistics.fmean(t for times in rounds for t in times),
            "round_median_ms": [1e3 * statistics.median(times) for times in rounds],
        }
        for name, rounds in runs.items()
    }
    pairs = list(zip(runs["plain"], runs["fit"], strict=True))
    ratios = [statistics.median(fit) / statistics.median(plain) for plain, fit in pairs]
    mean_ratios = [statistics.fmean(fit) / statistics.fmean(plain) for plain, fit in pairs]
    ratio, mean_ratio = statistics.median(ratios), statistics.median(mean_ratios)
    print(f"plain: {results['plain']['median_ms']:.3f} ms/step (mean {results['plain']['mean_ms']:.3f})")
    print(f"fit:   {results['fit']['median_ms']:.3f} ms/step (mean {results['fit']['mean_ms']:.3f})")
    print(f"fit / plain: {ratio:.3f}x (median of per-round ratios; of means: {mean_ratio:.3f}x)")
    if args.json:
        summary = {
            "machine": machine,
            "device": args.device,
            "mode": args.mode,
            "clock": args.clock,
            "threads": torch.get_num_threads(),
            "shape": {**MODEL, "batch_size": BATCH_SIZE, "precision": PRECISION, "compile": COMPILE},
            "rounds": args.rounds,
            "warmup": args.warmup,
            "steps": args.steps,
            "fit": "floor" if args.floor else "cli",
            "fit_args": args.fit_arg,
            **results,
            "ratio": ratio,
            "round_ratios": ratios,
            "mean_ratio": mean_ratio,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
