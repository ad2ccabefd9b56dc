"""Sampling and the KV cache: exactness against recomputation, and the sampling filters."""

import lightning as L
import pytest
import torch
from conftest import TINY

import lightning_gpt.generation as generation
from lightning_gpt import GPT, CharTokenizer, preset
from lightning_gpt.data import CharDataModule
from lightning_gpt.errors import UserError
from lightning_gpt.generation import (
    GenerationSettings,
    check_sampling,
    filter_logits,
    generate_tokens,
    prepare_prompt,
    sample_next,
)
from lightning_gpt.model import decode
from lightning_gpt.module import GPTModule


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    model = GPT(preset("tiny", context_length=16))
    with torch.no_grad():
        for parameter in model.parameters():  # sharper distributions than the default init
            parameter.normal_(0.0, 1.0)
    return model.eval()


def run(model, idx, steps, **kwargs) -> torch.Tensor:
    return torch.cat(list(generate_tokens(model, idx, steps, **kwargs)), dim=1)


def seed_loop(model, idx, steps) -> torch.Tensor:
    """The seed's greedy loop: crop to the last context_length tokens, recompute everything."""
    for _ in range(steps):
        logits, _ = model(idx[:, -model.config.context_length :])
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


@pytest.mark.parametrize("keep", [None, 1, 16])
@pytest.mark.parametrize("batch", [1, 2])
def test_cached_and_uncached_logits_match_past_the_context(model, monkeypatch, keep, batch):
    recorded = {True: [], False: []}
    idx = torch.randint(0, 65, (batch, 5))
    for use_cache in (True, False):

        def spy(logits, *args, use_cache=use_cache, **kwargs):
            recorded[use_cache].append(logits.clone())
            return sample_next(logits, *args, **kwargs)

        monkeypatch.setattr(generation, "sample_next", spy)
        run(model, idx, 60, temperature=0, use_cache=use_cache, keep=keep)
    assert len(recorded[True]) == len(recorded[False]) == 60  # 65 tokens: well past context 16
    for cached, uncached in zip(recorded[True], recorded[False], strict=True):
        torch.testing.assert_close(cached, uncached, atol=1e-4, rtol=1e-4)  # logits ~ 1e2


def test_the_window_restarts_from_half_the_context_once_it_is_full(model, monkeypatch):
    calls = []

    def spy(model, ids, cache, start=0):
        calls.append((start, ids.shape[1]))
        return decode(model, ids, cache, start)

    monkeypatch.setattr(generation, "decode", spy)
    run(model, torch.zeros(1, 15, dtype=torch.long), 3, temperature=0)  # context 16
    # the prompt; its 16th token, at position 15; the 17th overflows: a restart from the last 8 (the default)
    assert calls == [(0, 15), (15, 1), (0, 8)]


def test_a_one_token_context_generates_as_the_seed_loop():
    """The default keep, half the context, was 0 here: an IndexError past the first new token."""
    torch.manual_seed(0)
    model, idx = GPT(preset("tiny", context_length=1)).eval(), torch.randint(0, 65, (1, 3))
    assert torch.equal(run(model, idx, 5, temperature=0), seed_loop(model, idx, 5)[:, 3:])


def test_greedy_same_with_and_without_cache_and_seed_loop(model):
    idx = torch.randint(0, 65, (2, 5))
    cached = run(model, idx, 60, temperature=0)
    assert torch.equal(cached, run(model, idx, 60, temperature=0, use_cache=False))
    assert len(set(cached[0].tolist())) > 3  # not a degenerate constant output
    # keep = context_length re-runs the full window every step: exactly the seed's loop
    full = run(model, idx, 60, temperature=0, keep=16)
    assert torch.equal(full, seed_loop(model, idx, 60)[:, 5:])


def test_sampling_is_reproducible_with_a_seed(model):
    idx = torch.randint(0, 65, (3, 4))

    def sample(seed, use_cache=True):
        return run(model, idx, 40, temperature=1.0, top_k=20, seed=seed, use_cache=use_cache)

    state = torch.get_rng_state()
    assert torch.equal(sample(1), sample(1))
    assert torch.equal(sample(1), sample(1, use_cache=False))
    assert not torch.equal(sample(1), sample(2))
    assert not torch.equal(sample(None), sample(None))  # a fresh seed at every call
    assert torch.equal(torch.get_rng_state(), state)  # PyTorch's global generator is left alone


def crafted_logits() -> torch.Tensor:
    probs = torch.tensor([[0.05, 0.5, 0.02, 0.3, 0.1, 0.03]])
    return probs.log()


def test_a_top_k_of_the_whole_vocabulary_or_more_keeps_every_token():
    """nanoGPT's default top_k is 200: on a 65-character vocabulary torch.topk would fail."""
    for top_k in (7, 200):  # 6 tokens: torch.topk(logits, 7) raises
        assert torch.equal(filter_logits(crafted_logits(), top_k=top_k), crafted_logits())


def test_top_k_keeps_tokens_tied_with_the_kth():
    filtered = filter_logits(torch.tensor([[1.0, 2.0, 2.0, 0.5]]), top_k=1)
    assert torch.isfinite(filtered).tolist() == [[False, True, True, False]]


def test_top_p_applies_to_the_distribution_after_the_temperature():
    """At temperature 2, probabilities go as sqrt(p): [.106, .335, .067, .260, .150, .082]; the nucleus
    of 0.8 is then {1, 3, 4, 0}. Taken before the temperature it would be {1, 3} (0.5 + 0.3)."""
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(crafted_logits(), 2.0, top_p=0.8, generator=g).item() for _ in range(2000)}
    assert draws == {0, 1, 3, 4}


def test_top_k_masks_with_minus_infinity_and_never_leaves_the_set():
    filtered = filter_logits(crafted_logits(), top_k=2)
    assert torch.isinf(filtered[0, [0, 2, 4, 5]]).all() and (filtered[0, [0, 2, 4, 5]] < 0).all()
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(crafted_logits(), top_k=2, generator=g).item() for _ in range(500)}
    assert draws == {1, 3}


@pytest.mark.parametrize(
    ("top_p", "allowed"),
    # 1e-300 is 0 in float32: it dropped every token, and the nan probabilities gave token 0
    [(1e-300, {1}), (0.5, {1}), (0.8, {1, 3}), (0.81, {1, 3, 4})],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, allowed):
    kept = torch.isfinite(filter_logits(crafted_logits(), top_p=top_p))[0].nonzero()[:, 0].tolist()
    assert set(kept) == allowed  # the token whose probability reaches p is kept, no more
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(crafted_logits(), top_p=top_p, generator=g).item() for _ in range(2000)}
    assert draws <= allowed
    assert len(draws) >= len(allowed) - 1  # the likely members do get drawn


def test_the_edges_of_top_k_and_top_p_are_honoured():
    logits = crafted_logits()  # 6 tokens
    assert torch.isinf(filter_logits(logits, top_k=5)).nonzero()[:, 1].tolist() == [2]  # the least likely
    assert torch.equal(filter_logits(logits, top_k=6), logits)
    # top_p 1.0 is "off" (OpenAI clients send it): even tokens whose mass float32 rounds away are kept
    # (the mass before each of the two unlikely tokens, 1 - 2e-11, is 1.0 in float32: ">= p")
    assert torch.isfinite(filter_logits(torch.tensor([[0.0, -25.0, -25.0]]), top_p=1.0)).all()
    generation.check_sampling(0.8, 6, 1.0, 10)


def test_sampling_draws_what_torch_multinomial_draws():
    """sample_next makes multinomial's one draw without its checks: same tokens, same generator."""
    ours, reference = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(500):
        logits = torch.randn(3, 65) * 2
        expected = torch.multinomial(torch.softmax(logits, -1), 1, generator=reference)
        assert torch.equal(sample_next(logits, 1.0, generator=ours), expected)


def test_temperature_zero_is_greedy():
    assert sample_next(crafted_logits(), temperature=0).item() == 1


def test_a_tiny_temperature_samples_the_most_likely_token():
    """logits / 1e-40 overflow float32 (inf / inf = nan), and 1e-300 is 0 in float32 (0 / 0 = nan): it
    sampled token 0, a newline, every time."""
    logits = torch.randn(4, 65) * 3
    for temperature in (1e-300, 1e-40, 1e-30):
        drawn = sample_next(logits, temperature, generator=torch.Generator().manual_seed(0))
        assert torch.equal(drawn, logits.argmax(dim=-1, keepdim=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"top_k": 20.0}, "top_k must be an integer, got 20.0"),  # a TypeError deep in torch.topk
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"temperature": "0.8"}, "temperature must be a number, got '0.8'"),
        ({"keep": 17}, "keep must be <= the model's context_length 16"),  # before the window is full
    ],
)
def test_invalid_sampling_settings(model, kwargs, message):
    settings = {"max_new_tokens": 5, **kwargs}
    steps = settings.pop("max_new_tokens")
    with pytest.raises(ValueError, match=message):
        run(model, torch.zeros(1, 1, dtype=torch.long), steps, **settings)


def test_broken_weights_are_refused_not_sampled(model):
    with torch.no_grad():
        model.blocks[0].ffn.up.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="not finite"):
        run(model, torch.zeros(1, 3, dtype=torch.long), 5)


def test_python_api_from_checkpoint(tiny_checkpoint):
    draws = []
    for seed in (1, 2):  # loading set the caller's generators to the checkpoint's states
        torch.manual_seed(seed)
        module = GPTModule.load_from_checkpoint(tiny_checkpoint, map_location="cpu", weights_only=True)
        draws.append(torch.rand(3))
    assert not torch.equal(*draws)
    state = torch.get_rng_state()
    texts = {module.generate_text("ROMEO:", 30, seed=None) for _ in range(3)}  # another text each time
    assert len(texts) == 3 and torch.equal(torch.get_rng_state(), state)  # from its own generator
    for seed in range(3):  # an empty prompt starts from a newline (an IndexError before)
        text = module.generate_text("", 5, seed=seed)
        assert len(text) == 6 and text[0] == "\n"
    text = module.generate_text("ROMEO:", 50, temperature=0.8, seed=3)
    assert text.startswith("ROMEO:") and len(text) == 56
    assert text == module.generate_text("ROMEO:", 50, temperature=0.8, seed=3)
    assert module.training  # generation restored the mode it found
    for seed in (-1, 2**63, 2**64):  # sampled, sampled, and an OverflowError before
        with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*63\)"):
            module.generate_text("ROMEO:", 5, seed=seed)
    for count, reason in (
        (0, ">= 1, got 0"),
        (2.0, "an integer, got 2.0"),
    ):  # empty lists; repeat()'s TypeError
        with pytest.raises(ValueError, match=f"num_samples must be {reason}"):
            list(module.stream_text("ROMEO:", 5, num_samples=count))
    with pytest.raises(TypeError, match="num_samples"):  # one text: it returned the first of two, silently
        module.generate_text("ROMEO:", 5, num_samples=2)


def test_an_empty_prompt_starts_a_line_even_where_a_character_sorts_before_the_newline():
    """A tab (a TSV or code corpus) is the vocabulary's first character, but a sample starts a line."""
    assert prepare_prompt("", CharTokenizer("\t\nab")) == "\n"
    assert prepare_prompt("", CharTokenizer("ab")) == "a"  # no newline in the vocabulary: its first
    assert prepare_prompt("é", CharTokenizer("\t\nab"), drop_unknown=True) == "\n"  # nothing left: a line
    module = GPTModule(vocab="\t\nab", d_model=16, num_heads=2, num_blocks=1, context_length=8)
    assert module.generate_text("", 3, seed=0)[0] == "\n"


@pytest.mark.parametrize("name", ["top_k", "max_new_tokens", "seed", "temperature"])
def test_a_boolean_is_not_a_sampling_number(name):
    """From JSON (serve) or YAML, true would otherwise pass as 1 and false as 0."""
    settings = {"temperature": 0.8, "top_k": None, "top_p": None, "max_new_tokens": 5, name: True}
    with pytest.raises(ValueError, match=f"^{name} must be an? "):
        check_sampling(**settings)


def test_python_predict_takes_any_datamodule_window_length(tmp_path):
    """predict reads prompts only: a DataModule's window length (its default 256) does not matter."""
    vocab = "\n !,.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    module = GPTModule(**TINY, vocab=vocab)
    module.generation = GenerationSettings(max_new_tokens=3, seed=0)
    data = CharDataModule(cache_dir=str(tmp_path / "cache"))
    data.prompts = ["ROMEO:"]
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    (texts,) = trainer.predict(module, datamodule=data)
    assert len(texts) == 1 and texts[0].startswith("ROMEO:") and len(texts[0]) == len("ROMEO:") + 3
