"""How much context a restarted generation window keeps: loss against speed.

    python benchmarks/window_keep.py --checkpoint CKPT --text CORPUS [--windows 256]

With absolute positions a KV cache cannot slide, so past ``context_length`` generation restarts
the window from its last ``keep`` tokens (``generate_tokens(keep=...)``). Every later token is then
predicted from ``keep`` to ``context_length`` tokens of context. This script measures, on the last
10 % of the text (the validation split), the mean loss of predictions made with those contexts,
against the seed's crop-and-recompute loop (always the full window), and the generation time of
500 characters for each ``keep`` (batch 1, median of 3).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402

from lightning_gpt.generation import generate_tokens  # noqa: E402
from lightning_gpt.module import GPTModule  # noqa: E402


@torch.inference_mode()
def loss_by_position(module: GPTModule, text: str, windows: int, batch_size: int = 16) -> torch.Tensor:
    """Mean cross-entropy at each position 0 .. T-1 of full windows of the validation split: [T]."""
    context = module.model.config.context_length
    ids = torch.from_numpy(module.tokenizer.encode(text[int(len(text) * 0.9) :]))
    starts = torch.linspace(0, len(ids) - context - 2, windows).long()
    total = torch.zeros(context)
    for first in range(0, windows, batch_size):
        rows = starts[first : first + batch_size]
        x = torch.stack([ids[s : s + context] for s in rows])  # [B, T]
        y = torch.stack([ids[s + 1 : s + context + 1] for s in rows])
        logits, _ = module.model(x)  # [B, T, V]
        loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # [B, T]
        total += loss.sum(0)
    return total / windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of this project")
    parser.add_argument("--text", required=True, help="the corpus it was trained on")
    parser.add_argument("--windows", type=int, default=256, help="validation windows to average")
    args = parser.parse_args()
    module = GPTModule.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    context = module.model.config.context_length
    losses = loss_by_position(module, Path(args.text).read_text(encoding="utf-8"), args.windows)
    print(f"machine: {describe()}")
    print(f"checkpoint {args.checkpoint}: context_length {context}, {args.windows} validation windows")
    full = losses[-16:].mean().item()
    print(f"seed loop (always {context} tokens; mean of the last 16 positions): loss {full:.4f}")
    prompt = torch.from_numpy(module.tokenizer.encode("First Citizen")).unsqueeze(0)
    for keep in (context - 1, context * 7 // 8, context * 3 // 4, context // 2, context // 4):
        mean = losses[keep - 1 :].mean().item()  # predictions made with keep .. context tokens
        times = []
        for _ in range(3):
            start = time.perf_counter()
            list(generate_tokens(module.model, prompt, 500, temperature=1.0, keep=keep))
            times.append(time.perf_counter() - start)
        print(
            f"keep {keep:4d}: loss {mean:.4f} ({mean - full:+.4f} vs the seed loop), "
            f"500 characters in {statistics.median(times):.2f} s"
        )


if __name__ == "__main__":
    main()
