import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from lightning_gpt import GPT, GPTConfig, preset
from lightning_gpt.model import KVCache, decode, rotary_table, rotate, sinusoidal_table


def expected_parameters(c: GPTConfig) -> int:
    """Count by hand from the seed's shape tables (biases on, learned positions, tied head)."""
    C = c.d_model
    per_block = (
        2 * C  # ln1
        + C * 3 * C
        + 3 * C  # qkv
        + C * C
        + C  # output projection
        + 2 * C  # ln2
        + C * 4 * C
        + 4 * C  # FFN up
        + 4 * C * C
        + C  # FFN down
    )
    return c.vocab_size * C + c.context_length * C + c.num_blocks * per_block + 2 * C


def test_seed_parameter_count():
    config = preset("seed")
    model = GPT(config)
    count = model.num_parameters()
    print(f"seed GPT parameters (tied head counted once): {count:,}")
    assert count == expected_parameters(config) == 4_821_248
    assert model.head.weight is model.token_embedding.weight


def test_sinusoidal_and_rotary_positions_have_no_parameters():
    learned = GPT(preset("seed")).num_parameters()
    for positional in ("sinusoidal", "rotary"):
        model = GPT(preset("seed", positional=positional))
        assert learned - model.num_parameters() == 256 * 256
        # nor do checkpoints hold their tables: made again from the shape (a saved one would not load)
        assert set(model.state_dict()) == {name for name, _ in model.named_parameters(remove_duplicate=False)}


def test_bias_false_leaves_no_linear_layer_a_bias():
    without = GPT(preset("tiny", bias=False))  # C 32, 2 blocks
    linears = [module for module in without.modules() if isinstance(module, nn.Linear)]
    assert len(linears) == 2 * 4 + 1 and all(linear.bias is None for linear in linears)
    # qkv 3C, proj C, up 4C, down C per block; the LayerNorms keep theirs
    assert GPT(preset("tiny")).num_parameters() - without.num_parameters() == 2 * 9 * 32


@pytest.mark.parametrize("autocast", [False, True])
def test_attention_is_the_softmax_of_scaled_scores_over_earlier_positions(autocast):
    """softmax(q k^T / sqrt(hs), later positions masked) v, by hand. The forward and the cached decoding
    share ``attend``, so comparing them cannot find a wrong scale or mask; under CPU autocast (bf16) it
    takes another branch."""
    torch.manual_seed(0)
    attention = GPT(preset("tiny")).eval().blocks[0].attn
    q, k, v = torch.randn(3, 2, 2, 5, 16).unbind(0)  # [B, H, T, hs]
    later = torch.ones(5, 5, dtype=torch.bool).triu(1)  # [T, T]: key after query
    scores = (q @ k.transpose(-1, -2) / math.sqrt(16)).masked_fill(later, float("-inf"))
    expected = torch.softmax(scores, dim=-1) @ v  # [B, H, T, hs]
    dtype = torch.bfloat16 if autocast else torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        causal = attention.attend(q.to(dtype), k.to(dtype), v.to(dtype), is_causal=True)
        newest = attention.attend(q[:, :, -1:].to(dtype), k.to(dtype), v.to(dtype), is_causal=False)
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if autocast else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(causal.float(), expected, **tolerance)
    torch.testing.assert_close(newest.float(), expected[:, :, -1:], **tolerance)  # sees every position


def test_position_tables_hold_the_papers_values():
    """Not in checkpoints (rebuilt at every load): a changed formula would silently alter every model."""
    sinusoidal, (cos, sin) = sinusoidal_table(50, 8), rotary_table(50, 8)  # [50, 8]; [50, 4] each
    for position, i in ((37, 1), (49, 3)):  # pair i: frequency 10000^(-2i/8)
        angle = position * 10000 ** (-2 * i / 8)
        assert sinusoidal[position, 2 * i] == pytest.approx(math.sin(angle), abs=1e-5)
        assert sinusoidal[position, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-5)
        assert (cos[position, i], sin[position, i]) == pytest.approx(
            (math.cos(angle), math.sin(angle)), abs=1e-5
        )


def test_rotate_turns_each_pair_by_its_positions_angle():
    """RoFormer's rotation, counter-clockwise: (a, b) at position m -> (a cos mf - b sin mf, a sin mf +
    b cos mf), pairing dimension i with i + hs/2. A turn the other way also depends only on the distance,
    but every rotary checkpoint saved before would then compute something else."""
    hs, m = 8, 3
    table = rotary_table(m + 1, hs)[:, m : m + 1]  # position m alone: [2, 1, hs/2]
    frequencies = 10000.0 ** (-torch.arange(0, hs, 2) / hs)  # [hs/2]
    x = torch.randn(1, 1, 1, hs)  # [B, H, T, hs]
    a, b = x[..., : hs // 2], x[..., hs // 2 :]
    cos, sin = torch.cos(m * frequencies), torch.sin(m * frequencies)
    turned = torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
    assert torch.allclose(rotate(x, table), turned, atol=1e-6)
    first = torch.zeros(1, 1, 1, hs)
    first[..., 0] = 1.0  # the pair (1, 0) at position 3, frequency 1: (cos 3, sin 3)
    out = rotate(first, table)[0, 0, 0]
    assert torch.allclose(out[[0, hs // 2]], torch.tensor([math.cos(3), math.sin(3)]), atol=1e-6)


def test_initial_weights_follow_gpt2():
    torch.manual_seed(0)
    model = GPT(GPTConfig(d_model=256, num_blocks=8))
    assert not any(p.any() for name, p in model.named_parameters() if name.endswith("bias"))
    block = model.blocks[3]
    for weights in (block.ffn.up, block.attn.qkv, model.token_embedding, model.position_embedding):
        assert weights.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for projection in (block.attn.proj, block.ffn.down):  # into the residual stream: 0.02 / sqrt(2N)
        assert projection.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)


def test_rotary_attention_scores_depend_only_on_the_distance():
    """q.k of rotated queries and keys at positions (i, j) equals that at (i + s, j + s)."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 16).unbind(0)  # [B, H, 1, hs], the same vector at every position
    table = rotary_table(32, 16)  # [2, 32, 8]
    rotated_q, rotated_k = rotate(q.expand(1, 1, 32, 16), table), rotate(k.expand(1, 1, 32, 16), table)
    scores = (rotated_q @ rotated_k.transpose(-1, -2))[0, 0]  # [32, 32]: positions i, j
    for s in (1, 5, 20):
        torch.testing.assert_close(scores[s:, s:], scores[:-s, :-s], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(scores[0, 1], scores[0, 2])  # but on the distance it does depend
    torch.testing.assert_close(rotated_q.norm(dim=-1), q.norm(dim=-1).expand(1, 1, 32))  # rotations


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary"])
def test_forward_shapes_and_loss(positional):
    model = GPT(preset("tiny", positional=positional))
    idx = torch.randint(0, 65, (3, 32))
    logits, loss = model(idx)
    assert logits.shape == (3, 32, 65) and loss is None
    _, loss = model(idx, torch.randint(0, 65, (3, 32)))  # not idx: the tied head favours the input token
    assert loss.ndim == 0 and abs(loss.item() - torch.log(torch.tensor(65.0)).item()) < 0.5


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary"])
def test_causality(positional):
    torch.manual_seed(0)
    model = GPT(preset("tiny", positional=positional)).eval()
    idx = torch.randint(0, 65, (2, 32))
    logits, _ = model(idx)
    for t in (0, 7, 30):
        changed = idx.clone()
        changed[:, t + 1 :] = torch.randint(0, 65, changed[:, t + 1 :].shape)
        other, _ = model(changed)
        assert torch.allclose(logits[:, : t + 1], other[:, : t + 1], atol=1e-6)
        if t < 30:
            assert not torch.allclose(logits[:, t + 1 :], other[:, t + 1 :])


def test_dropout_only_in_training():
    model = GPT(preset("tiny", dropout=0.5))
    idx = torch.randint(0, 65, (2, 16))
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])


def test_every_dropout_site_drops_in_training():
    """--model.dropout reaches each site (embeddings, attention output, feed-forward) on its own."""
    model = GPT(preset("tiny", dropout=0.5, attention_dropout=0.0)).train()
    idx = torch.randint(0, 65, (2, 16))
    sites = [module for module in model.modules() if isinstance(module, nn.Dropout)]
    assert len(sites) == 1 + 2 * model.config.num_blocks  # after the embeddings; two per block
    assert all(site.p == 0.5 for site in sites)
    for site in sites:
        for other in sites:
            other.p = 0.5 if other is site else 0.0
        assert not torch.equal(model(idx)[0], model(idx)[0]), site
    site.p = 0.0
    assert torch.equal(model(idx)[0], model(idx)[0])  # none left: training forwards agree


def test_attention_dropout_is_separate_from_dropout():
    idx = torch.randint(0, 65, (2, 16))
    only_attention = GPT(preset("tiny", dropout=0.0, attention_dropout=0.5)).train()
    assert not torch.equal(only_attention(idx)[0], only_attention(idx)[0])
    # dropout 0.5 elsewhere, none on the attention weights: the attention output is deterministic
    no_attention = GPT(preset("tiny", dropout=0.5, attention_dropout=0.0)).train()
    attention = no_attention.blocks[0].attn
    assert attention.proj_dropout.p == 0.5
    attention.proj_dropout.p = 0.0  # leave only what happens inside attention
    x = torch.randn(2, 16, 32)
    assert torch.equal(attention(x), attention(x))
    assert GPTConfig(dropout=0.2).attention_dropout_p == 0.2  # unset: follows dropout
    assert GPTConfig(dropout=0.2, attention_dropout=0.0).attention_dropout_p == 0.0
    with pytest.raises(ValueError, match="attention_dropout"):
        GPTConfig(attention_dropout=1.0)


def decoded(model: GPT, idx: torch.Tensor, prompt: int, cache: KVCache) -> Iterator[torch.Tensor]:
    """Logits of a cached decoding of idx [B, T]: the first ``prompt`` positions at once, [B, prompt, V],
    then one position per call, [B, V] each."""
    yield decode(model, idx[:, :prompt], cache)
    for t in range(prompt, idx.shape[1]):
        yield decode(model, idx[:, t : t + 1], cache, t)[:, -1]


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_cached_decoding_gives_the_logits_of_a_full_forward_at_every_position(positional, batch, autocast):
    torch.manual_seed(0)
    model = GPT(preset("tiny", positional=positional)).eval()
    idx = torch.randint(0, 65, (batch, 32))
    tolerance = {"atol": 0.05, "rtol": 0.05} if autocast else {"atol": 1e-5, "rtol": 1e-5}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        full, _ = model(idx)  # [B, 32, V]
        cache = KVCache(model.config)
        logits = list(decoded(model, idx, 5, cache))
        assert len(logits) == 1 + 27
        torch.testing.assert_close(logits[0], full[:, :5], **tolerance)  # the prompt
        for t, step in enumerate(logits[1:], start=5):
            torch.testing.assert_close(step.float(), full[:, t].float(), **tolerance)
        with pytest.raises(ValueError, match="exceed context_length"):
            decode(model, idx[:, :1], cache, start=32)  # the window is full


def test_a_refilled_cache_takes_another_batch_dtype_and_weights():
    torch.manual_seed(0)
    model = GPT(preset("tiny")).eval()
    cache = KVCache(model.config)

    def check(idx: torch.Tensor) -> None:
        *_, last = decoded(model, idx, 4, cache)  # the prompt fills the cache again from position 0
        torch.testing.assert_close(last, model(idx)[0][:, -1], atol=1e-5, rtol=1e-5)

    with torch.inference_mode():
        check(torch.randint(0, 65, (3, 5)))
        check(torch.randint(0, 65, (1, 5)))  # another batch size: new buffers
        model.load_state_dict(GPT(preset("tiny")).state_dict(), assign=True)  # new weight tensors
        check(torch.randint(0, 65, (1, 5)))
        model.double()  # new dtype (as .to(device) moves them): new buffers
        check(torch.randint(0, 65, (1, 5)))
        assert cache.kv[0].dtype == torch.float64


def test_cache_misuse_is_refused():
    model = GPT(preset("tiny"))
    idx = torch.randint(0, 65, (1, 4))
    with pytest.raises(RuntimeError, match="eval"):
        decode(model, idx, KVCache(model.config))  # training mode: decode has no dropout
    model.eval()
    with pytest.raises(ValueError, match="position 0"):
        decode(model, idx[:, :1], KVCache(model.config), start=3)  # nothing cached before position 3
    cache = KVCache(model.config)
    decode(model, idx, cache)
    with pytest.raises(ValueError, match="one token per call"):
        decode(model, idx, cache, start=4)  # several positions after cached ones: no causal mask for that


def test_rejects_sequences_longer_than_context():
    model = GPT(preset("tiny"))
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_invalid_config():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="positional"):
        GPTConfig(positional="alibi")
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(positional="rotary", d_model=12, num_heads=4)
    for dropout in ("dropout", "attention_dropout"):  # 1 would zero every activation it touches
        with pytest.raises(ValueError, match=f"{dropout} must be in"):
            GPTConfig(**{dropout: 1.0})


def test_tiny_model_overfits_tiny_text():
    torch.manual_seed(0)
    text = "to be or not to be, that is the question. " * 4
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    model = GPT(preset("tiny", vocab_size=len(vocab)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.stack([ids[i : i + 32] for i in range(0, 120, 8)])
    y = torch.stack([ids[i + 1 : i + 33] for i in range(0, 120, 8)])
    for _ in range(150):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
