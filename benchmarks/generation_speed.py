"""Batch-1 generation speed of the seed-size model: KV cache vs the seed's recompute loop.

    python benchmarks/generation_speed.py [--new 500] [--repeats 5]

Random weights (speed does not depend on them). Each repeat runs the cached generation, the seed
loop and the cached generation again; the repeat's speed-up is the seed loop's time over the mean
of the two cached runs around it, so that a shared machine's drift over those seconds cancels out.
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

from lightning_gpt import GPT, CharTokenizer, preset  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=500, help="characters to generate")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=1, help="rows generated at once")
    args = parser.parse_args()
    torch.manual_seed(0)
    vocab = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    model = GPT(preset("seed", vocab_size=len(vocab))).to(args.device).eval()
    prompt = torch.from_numpy(CharTokenizer(vocab).encode(PROMPT)).unsqueeze(0)  # [1, 13]
    idx = prompt.repeat(args.batch, 1).to(args.device)  # [batch, 13]
    cached(model, idx, 20)  # warm-up

    def timed(run: Callable[[GPT, torch.Tensor, int], torch.Tensor]) -> float:
        start = time.perf_counter()
        run(model, idx, args.new)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    print(f"machine: {describe()}")
    print(
        f"seed-size model ({model.num_parameters():,} parameters) on {args.device}, batch {args.batch}, "
        f"{len(PROMPT)}-character prompt, {args.new} new characters, {args.repeats} repeats"
    )
    seed_times, cache_times, ratios = [], [], []
    for repeat in range(args.repeats):
        before, seed, after = timed(cached), timed(seed_loop), timed(cached)
        seed_times.append(seed)
        cache_times += [before, after]
        ratios.append(seed / ((before + after) / 2))
        print(
            f"repeat {repeat + 1}: cache {before:.2f} s, seed loop {seed:.2f} s, cache {after:.2f} s: "
            f"{ratios[-1]:.2f}x",
            flush=True,
        )
    for name, values in (("seed recompute loop", seed_times), ("KV cache", cache_times)):
        median = statistics.median(values)
        rate = args.batch * args.new / median
        print(f"{name:20s} median {median:7.2f} s  {rate:8.1f} chars/s (all rows)")
    listed = ", ".join(f"{r:.2f}" for r in sorted(ratios))
    print(f"speed-up within each repeat: {listed}; median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
