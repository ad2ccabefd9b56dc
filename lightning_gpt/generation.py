"""Autoregressive sampling from a ``GPT``, with a KV cache. Independent of training and Lightning.

The model sees a window of the most recent tokens. Absolute positions cannot shift inside a
KV cache, so once the window is full it is restarted from the last ``keep`` tokens (one batched
prefill) and grows one token per step again. ``keep = context_length`` re-runs the full window
at every step past the context: exactly the seed's crop-and-recompute loop. The uncached path
(``use_cache=False``) computes the very same windows from scratch, so both give the same logits.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lightning_gpt.model import GPT


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int) -> None:
    """Raise ValueError with a one-line reason for settings that cannot sample."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus. logits: [B, V]."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of strictly more likely tokens
        drop_sorted = before >= top_p  # the smallest prefix reaching top_p is kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids [B, 1] from last-position logits [B, V]; temperature 0 is greedy.

    Sampling happens on the CPU (small tensors; avoids torch.multinomial bugs on MPS), so a
    given seed gives the same tokens on every device.
    """
    logits = logits.float().cpu()
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)  # [B, V]
    return torch.multinomial(probs, num_samples=1, generator=generator)  # [B, 1]


@torch.no_grad()
def generate_tokens(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    keep: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``max_new_tokens`` new token ids [B, 1] (on the CPU), one per step, after ``idx`` [B, T0].

    ``keep`` (default 3/4 of the context) is how many recent tokens a restarted window keeps.
    """
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    context = model.config.context_length
    keep = context * 3 // 4 if keep is None else keep
    if not 1 <= keep <= context:
        raise ValueError(f"keep must be in [1, {context}], got {keep}")
    device = next(model.parameters()).device
    tokens = idx.cpu()  # [B, L], the whole text so far
    start = max(0, tokens.shape[1] - context)  # first position of the model's window
    cache = model.new_cache() if use_cache else None
    logits, _ = model(tokens[:, start:].to(device), cache=cache)  # prefill: [B, L - start, V]
    for step in range(max_new_tokens):
        new = sample_next(logits[:, -1], temperature, top_k, top_p, generator)  # [B, 1]
        yield new
        if step == max_new_tokens - 1:
            break
        tokens = torch.cat((tokens, new), dim=1)  # [B, L + 1]
        if tokens.shape[1] - start > context:  # the window is full: restart it
            start = tokens.shape[1] - keep
            cache = model.new_cache() if use_cache else None
            logits, _ = model(tokens[:, start:].to(device), cache=cache)  # [B, keep, V]
        elif use_cache:
            logits, _ = model(new.to(device), cache=cache)  # one position: [B, 1, V]
        else:
            logits, _ = model(tokens[:, start:].to(device))  # the whole window again
