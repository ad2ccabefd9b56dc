"""How much context a restarted generation window keeps: loss against speed.

    python benchmarks/window_keep.py --checkpoint CKPT --text CORPUS [--targets 2048]

With absolute positions a KV cache cannot slide, so past ``context_length`` generation restarts
the window from its last ``keep`` tokens (``generate_tokens(keep=...)``); every later token is
predicted from ``keep`` to ``context_length`` tokens of context, while the seed's crop-and-recompute
loop always uses ``context_length``. This script predicts the same tokens of the validation split
(the text's last 10 %) from contexts of several lengths, and reports the mean loss for each length
and, for each ``keep``, the loss over its range of contexts minus the full window's, paired on the
same tokens (± twice the standard error), with the time to generate 500 characters (median of 3).
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
def loss_by_context(
    module: GPTModule, text: str, contexts: list[int], targets: int
) -> dict[int, torch.Tensor]:
    """Cross-entropy of predicting the same ``targets`` tokens of the validation split from each
    context length: {length: [targets]}."""
    longest = max(contexts)
    ids = torch.from_numpy(module.tokenizer.encode(text[int(len(text) * 0.9) :]))
    ends = torch.linspace(longest, len(ids) - 1, targets).long()  # the tokens to predict
    losses = {}
    for length in contexts:
        parts = []
        for batch in ends.split(64):
            x = torch.stack([ids[end - length : end] for end in batch])  # [B, length]
            logits, _ = module.model(x)
            parts.append(F.cross_entropy(logits[:, -1], ids[batch], reduction="none"))  # [B]
        losses[length] = torch.cat(parts)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of this project")
    parser.add_argument("--text", required=True, help="the corpus it was trained on")
    parser.add_argument("--targets", type=int, default=2048, help="validation tokens to predict")
    args = parser.parse_args()
    module = GPTModule.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    context = module.model.config.context_length
    contexts = sorted(
        {max(1, context // 32), max(1, context // 16)} | {context * i // 8 for i in range(1, 9)}
    )
    losses = loss_by_context(module, Path(args.text).read_text(encoding="utf-8"), contexts, args.targets)
    print(f"machine: {describe()}")
    print(f"checkpoint {args.checkpoint}: context_length {context}, {args.targets} validation tokens")
    print("context " + " ".join(f"{length:6d}" for length in contexts))
    print("loss    " + " ".join(f"{losses[length].mean():6.3f}" for length in contexts))
    full = losses[context]  # the seed loop's context for every token past the first window
    prompt = torch.from_numpy(module.tokenizer.encode("First Citizen")).unsqueeze(0)
    for keep in (context, context * 3 // 4, context // 2, context // 4):
        # a restarted window predicts from keep .. context tokens, each length once
        spanned = torch.stack([losses[length] for length in contexts if length >= keep]).mean(0)
        difference = spanned - full  # paired on the same tokens: [targets]
        error = 2 * difference.std().item() / len(difference) ** 0.5
        times = []
        for _ in range(3):
            start = time.perf_counter()
            list(generate_tokens(module.model, prompt, 500, temperature=1.0, keep=keep))
            times.append(time.perf_counter() - start)
        print(
            f"keep {keep:4d}: loss {spanned.mean():.4f}, {difference.mean():+.4f} ± {error:.4f} against the "
            f"full window; 500 characters in {statistics.median(times):.2f} s"
        )


if __name__ == "__main__":
    main()
