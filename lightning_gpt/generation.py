"""Autoregressive sampling from a ``GPT``, with a KV cache. Independent of training and Lightning.

The model sees a window of the most recent tokens. Absolute positions cannot shift inside a
KV cache, so once the window is full it is restarted from the last ``keep`` tokens (one batched
prefill) and grows one token per step again. ``keep = context_length`` re-runs the full window
at every step past the context: exactly the seed's crop-and-recompute loop. The uncached path
(``use_cache=False``) computes the very same windows from scratch, so both give the same logits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral, Real

import torch

from lightning_gpt.errors import UserError
from lightning_gpt.model import GPT, KVCache, decode
from lightning_gpt.tokenizer import CharTokenizer, UnknownCharacterError

FLOAT32_TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32: the least temperature


def nth_seed(seed: int, n: int) -> int:
    """The seed of the n-th of several samplings that share ``seed``: seed + n, kept in [0, 2**63)."""
    return (seed + n) % 2**63


def check_sampling(
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    max_new_tokens: int,
    keep: int | None = None,
    context_length: int | None = None,
    seed: int | None = None,
    num_samples: int = 1,
) -> None:
    """The one check of sampling settings: raise ValueError with a one-line reason for settings that
    cannot sample (``keep`` also against the model's ``context_length`` when given)."""
    whole = dict(top_k=top_k, max_new_tokens=max_new_tokens, keep=keep, seed=seed, num_samples=num_samples)
    for name, value in {**whole, "temperature": temperature, "top_p": top_p}.items():  # e.g. 20.0 from JSON
        kind, what = (Integral, "an integer") if name in whole else (Real, "a number")
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise ValueError(f"{name} must be {what}, got {value!r}")
    if seed is not None and not 0 <= seed < 2**63:  # what a torch.Generator takes
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    for name, value in {"max_new_tokens": max_new_tokens, "num_samples": num_samples}.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if keep is not None and context_length is not None and keep > context_length:
        raise ValueError(f"keep must be <= the model's context_length {context_length}, got {keep}")


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
        drop_sorted[:, 0] = False  # and the most likely token, even for a top_p that float32 rounds to 0
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
    # Shifted first, so the largest is 0: a tiny temperature gives -inf for the others, never inf / inf;
    # and at least float32's smallest normal number, which a smaller one would round to (0 / 0 = nan).
    temperature = max(temperature, FLOAT32_TINY)
    logits = filter_logits((logits - logits.amax(dim=-1, keepdim=True)) / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)  # [B, V]
    # One draw from each row of probs, as torch.multinomial(probs, 1) makes it (the same tokens for
    # the same generator): the largest of p_i / E_i with E_i ~ Exponential(1) falls on token i with
    # probability p_i. Without multinomial's argument checks, which cost more than the draw itself.
    race = torch.empty_like(probs).exponential_(generator=generator)  # [B, V]
    return (probs / race).argmax(dim=-1, keepdim=True)  # [B, 1]


@torch.inference_mode()
def generate_tokens(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    keep: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``max_new_tokens`` new token ids [B, 1] (on the CPU), one per step, after ``idx`` [B, T0].

    ``seed`` None draws a fresh one (another text at every call); PyTorch's global generators are
    neither used nor changed. ``keep`` (default: half the context) is how many recent tokens a
    restarted window keeps.
    """
    check_sampling(temperature, top_k, top_p, max_new_tokens, keep, model.config.context_length, seed)
    generator = torch.Generator()  # sampling happens on the CPU (sample_next)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    context = model.config.context_length
    keep = max(1, context // 2) if keep is None else keep
    device = next(model.parameters()).device
    window = idx.cpu()[:, -context:]  # [B, T], the last context tokens: what the model sees
    cache = KVCache(model.config) if use_cache else None

    def next_logits(ids: torch.Tensor, position: int = 0) -> torch.Tensor:
        """Next-token logits [B, V] after ids [B, T], the first of them at ``position`` in the window."""
        ids = ids.to(device)
        return (decode(model, ids, cache, position) if use_cache else model(ids)[0])[:, -1]

    logits = next_logits(window)  # the prompt (prefill)
    if not torch.isfinite(logits).all():  # checked once: sampling would turn NaN into a token
        raise UserError(
            "the model's outputs are not finite: its weights are broken (use an earlier checkpoint)"
        )
    for step in range(max_new_tokens):
        new = sample_next(logits, temperature, top_k, top_p, generator)  # [B, 1]
        yield new
        if step == max_new_tokens - 1:
            break
        window = torch.cat((window, new), dim=1)  # [B, T + 1]
        if window.shape[1] > context:  # full: restart from the last keep tokens, a prefill from position 0
            window = window[:, -keep:]  # [B, keep]
            logits = next_logits(window)
        elif use_cache:  # one new position after the cached ones
            logits = next_logits(new, window.shape[1] - 1)
        else:  # the whole window, from scratch
            logits = next_logits(window)


@dataclass
class GenerationSettings:
    """What to generate: prompts and sampling controls (never model hyperparameters). ``predict``
    generates in one process, on one device: extra ``--trainer.devices`` are ignored with a note.

    Args:
        prompt: one prompt (``--generate.prompt "ROMEO:"``) or a list (``'["ROMEO:", "JULIET:"]'``); an
            empty one starts from a newline (or the vocabulary's first character, if it has none).
        prompt_file: a UTF-8 file whose whole text is one more prompt.
        num_samples: continuations per prompt.
        max_new_tokens: characters to generate per sample.
        temperature: softmax temperature; 0 means greedy (always the most likely character).
        top_k: sample only among the k most likely characters.
        top_p: sample only from the smallest set of characters whose probability reaches p.
        seed: makes sampling reproducible (each prompt uses seed + its index, modulo 2**63).
        output: also write the samples to this file.
        interactive: read prompts from stdin and stream continuations; EOF (Ctrl-D) ends.
        drop_unknown: drop prompt characters outside the vocabulary instead of failing.
        keep: past the model's context, the window restarts from this many recent characters
            (default: half the context); the context length itself re-runs the whole window at
            every step, exactly the seed's loop, and is several times slower.
    """

    prompt: list[str] | str = ""
    prompt_file: str | None = None
    num_samples: int = 1
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 1337
    output: str | None = None
    interactive: bool = False
    drop_unknown: bool = False
    keep: int | None = None

    def sampling(self, index: int) -> dict:
        """``stream_text``'s sampling settings for the ``index``-th prompt (its seed: ``nth_seed``)."""
        sampling = dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, keep=self.keep)
        return {**sampling, "seed": nth_seed(self.seed, index)}

    def check(self, context_length: int | None = None) -> None:
        """Raise ValueError with a one-line reason for impossible settings (``keep`` against the
        model's ``context_length`` where it is known)."""
        sampling = (self.temperature, self.top_k, self.top_p, self.max_new_tokens, self.keep)
        check_sampling(*sampling, context_length, self.seed, self.num_samples)
        if isinstance(self.prompt, str):
            self.prompt = [self.prompt]
        if not self.prompt and not self.prompt_file:
            raise ValueError(
                "prompt is an empty list: give at least one prompt (an empty string starts a line)"
            )


def prepare_prompt(
    prompt: str,
    tokenizer: CharTokenizer,
    drop_unknown: bool = False,
    hint: str = " (drop them with --generate.drop_unknown true)",
) -> str:
    """Check a prompt against the vocabulary (``hint``: what the error adds, how to fix it); an empty
    prompt starts from a newline."""
    unknown = tokenizer.unknown_characters(prompt)
    if unknown and drop_unknown:
        prompt = "".join(c for c in prompt if c not in set(unknown))
    elif unknown:
        names = ", ".join(repr(c) for c in unknown)
        raise UnknownCharacterError(f"prompt characters not in the model's vocabulary: {names}{hint}")
    if not prompt:
        prompt = "\n" if "\n" in tokenizer.vocab else tokenizer.vocab[0]
    return prompt


def stream_text(
    model: GPT,
    tokenizer: CharTokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    keep: int | None = None,
) -> Iterator[list[str]]:
    """Yield the next character of each of ``num_samples`` continuations of ``prompt``, step by step.

    The model is put in eval mode while sampling; afterwards every submodule gets back its own
    train/eval flag (Lightning >= 2.2 relies on mixed modes surviving).
    """
    # all of them, as the caller named them (generate_tokens sees num_samples only as its batch)
    check_sampling(temperature, top_k, top_p, max_new_tokens, keep, seed=seed, num_samples=num_samples)
    prompt = prepare_prompt(prompt, tokenizer, hint="")  # an empty one starts from a newline
    ids = torch.from_numpy(tokenizer.encode(prompt)).unsqueeze(0).repeat(num_samples, 1)  # [S, T0]
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        for new in generate_tokens(model, ids, max_new_tokens, temperature, top_k, top_p, seed, keep=keep):
            yield [tokenizer.decode(row) for row in new]  # S characters
    finally:
        for module, training in modes:
            module.training = training


def generate_text(model: GPT, tokenizer: CharTokenizer, prompt: str, max_new_tokens: int, **sampling) -> str:
    """``prompt`` (an empty one: a newline) followed by ``max_new_tokens`` sampled characters;
    ``sampling``: ``stream_text``'s settings by name, for one sample."""
    if "num_samples" in sampling:  # it would return the first sample only
        raise TypeError("generate_text makes one sample: use stream_text for num_samples")
    prompt = prepare_prompt(prompt, tokenizer, hint="")
    return prompt + "".join(
        chars for (chars,) in stream_text(model, tokenizer, prompt, max_new_tokens, **sampling)
    )
