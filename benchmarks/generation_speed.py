"""Batch-1 generation speed of the seed-size model: KV cache vs the seed's recompute loop.

    python benchmarks/generation_speed.py [--new 500] [--repeats 5]

Random weights (speed does not depend on them). Each repeat runs the cache, the cache without the
compiled kernel (``lightning_gpt.matvec``), the seed loop, the cache without the kernel and the
cache again; the medians, their ratios and each repeat's own ratios are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402

from lightning_gpt import GPT, CharTokenizer, matvec, preset  # noqa: E402
from lightning_gpt.generation import generate_tokens  # noqa: E402

PROMPT = "First Citizen"  # 13 characters, as in the seed's walkthrough


@torch.no_grad()
def seed_loop(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0) -> torch.Tensor:
    """The seed's generate(): crop to the last context_length tokens and recompute them all."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.context_length :])
        probs = torch.softmax(logits[:, -1, :] / temperature, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
    return idx


def cached(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    return torch.cat(list(generate_tokens(model, idx, max_new_tokens, temperature=1.0)), dim=1)


def cached_pytorch_only(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    with matvec.pytorch_only():
        return cached(model, idx, max_new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=500, help="characters to generate")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    vocab = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    model = GPT(preset("seed", vocab_size=len(vocab))).eval()
    idx = torch.from_numpy(CharTokenizer(vocab).encode(PROMPT)).unsqueeze(0)  # [1, 13]
    cached(model, idx, 20)  # warm-up

    def timed(run: Callable[[GPT, torch.Tensor, int], torch.Tensor]) -> float:
        start = time.perf_counter()
        run(model, idx, args.new)
        return time.perf_counter() - start

    # Each repeat: cache, PyTorch only, seed loop, PyTorch only, cache. The seed loop's ~10 s is
    # compared with the mean of the two runs of each kind around it, so that a shared machine's
    # drift over those seconds cancels out.
    seed_times, cache_times, pytorch_times, ratios, pytorch_ratios = [], [], [], [], []
    for _ in range(args.repeats):
        before, plain_before = timed(cached), timed(cached_pytorch_only)
        seed = timed(seed_loop)
        plain_after, after = timed(cached_pytorch_only), timed(cached)
        seed_times.append(seed)
        cache_times += [before, after]
        pytorch_times += [plain_before, plain_after]
        ratios.append(seed / ((before + after) / 2))
        pytorch_ratios.append(seed / ((plain_before + plain_after) / 2))
    print(f"machine: {describe()}")
    print(f"one-row products: {matvec.load()[1]}")
    print(
        f"seed-size model ({model.num_parameters():,} parameters), batch 1, {len(PROMPT)}-character prompt, "
        f"{args.new} new characters; {args.repeats} repeats; medians"
    )
    baseline = statistics.median(seed_times)
    for name, values in (
        ("seed recompute loop", seed_times),
        ("KV cache, PyTorch only", pytorch_times),
        ("KV cache (this project)", cache_times),
    ):
        median = statistics.median(values)
        print(f"{name:26s} {median:7.2f} s  {args.new / median:8.1f} chars/s  {baseline / median:6.2f}x")
    for name, values in (("KV cache, PyTorch only", pytorch_ratios), ("KV cache (this project)", ratios)):
        listed = ", ".join(f"{r:.2f}" for r in sorted(values))
        print(f"speed-up within each repeat, {name}: {listed}; median {statistics.median(values):.2f}x")


if __name__ == "__main__":
    main()
