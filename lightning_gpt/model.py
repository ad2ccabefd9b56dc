"""The GPT of the seed design, in plain PyTorch (no Lightning), readable top to bottom.

Shapes use B = batch, T = sequence length, C = d_model, H = num_heads, hs = head_size = C / H,
V = vocab_size. With the seed defaults: C 256, H 8, hs 32, 6 blocks, T <= 256, V 65.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_gpt.config import GPTConfig
from lightning_gpt.matvec import linear_row


class KVCache:
    """Keys and values of the positions seen so far, for every block.

    ``kv[i]`` holds block i's keys and values together, [2, B, H, context_length, hs]; the first
    ``length`` positions are filled: by ``GPT.forward`` (a prompt, into an empty cache), then by
    ``GPT.step`` (one position per call). Positions are absolute, so a full cache cannot slide:
    the caller ``clear``s it and fills it again (see ``lightning_gpt.generation``).
    """

    def __init__(self, config: GPTConfig):
        self.capacity = config.context_length
        self.kv: list[torch.Tensor | None] = [None] * config.num_blocks
        self.length = 0
        self.weight_halves: dict[nn.Linear, tuple[int, tuple[torch.Tensor, torch.Tensor | None] | None]] = {}

    def clear(self) -> None:
        """Forget every position, to fill the cache again; its buffers are kept."""
        self.length = 0

    def append(self, block: int, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store kv [2, B, H, T, hs] after the filled part; return all keys and values so far."""
        stored = self.kv[block]
        if (
            self.length == 0
            and (  # allocated when filling starts, in the dtype autocast produces
                stored is None
                or stored.shape[1:3] != kv.shape[1:3]
                or stored.dtype != kv.dtype
                or stored.device != kv.device
            )
        ):
            _, B, H, _, hs = kv.shape
            stored = self.kv[block] = kv.new_zeros(2, B, H, self.capacity, hs)
        stored.narrow(3, self.length, kv.shape[3]).copy_(kv)  # positions length .. length+T-1
        keys, values = stored.narrow(3, 0, self.length + kv.shape[3]).unbind(0)
        return keys, values  # 2 x [B, H, length+T, hs]

    def halves(self, layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """``layer``'s weight as two halves [2, in, out/2] (and bias [2, 1, out/2]) for ``project``;
        None where that route does not pay. Views, not copies: made again if the weight moved
        (``.to()``, a new tensor), so they always show the layer's current weight."""
        found = self.weight_halves.get(layer)
        if found is None or found[0] != layer.weight.data_ptr():
            out_features, in_features = layer.weight.shape
            halves = None
            if out_features % 2 == 0 and layer.weight.device.type == "cpu" and torch.get_num_threads() > 1:
                weight = layer.weight.view(2, out_features // 2, in_features).transpose(1, 2)
                bias = None if layer.bias is None else layer.bias.view(2, 1, out_features // 2)
                halves = (weight, bias)
            found = self.weight_halves[layer] = (layer.weight.data_ptr(), halves)
        return found[1]


def project(layer: nn.Linear, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """``layer(x)`` for one position of a decoding step: [B, in] -> [B, out].

    Decoding one token is bound by reading the weights. With batch 1 on a CPU, the compiled kernel
    of ``lightning_gpt.matvec`` reads them about twice as fast as PyTorch. Without it, on a
    multi-core CPU, the weight is viewed as two halves [2, out/2, in] and one batched matmul spreads
    them over two cores (PyTorch computes a one-row ``addmm`` on one core). The same numbers up to
    float rounding.
    """
    if x.shape[0] != 1:  # a batch of rows: a real matrix product
        return layer(x)
    y = linear_row(layer, x)
    if y is not None:
        return y
    halves = cache.halves(layer)
    if halves is None:  # a GPU, one thread, an odd width
        return layer(x)
    weight, bias = halves  # [2, in, out/2], [2, 1, out/2]
    rows = x.view(1, 1, -1).expand(2, 1, -1)  # the one row, once per half: [2, 1, in]
    y = torch.bmm(rows, weight) if bias is None else torch.baddbmm(bias, rows, weight)  # [2, 1, out/2]
    return y.view(1, -1)  # [1, out]


class CausalSelfAttention(nn.Module):
    """All heads at once: one Linear makes q, k, v for every head; SDPA applies the causal mask."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout_p
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.proj_dropout = nn.Dropout(config.dropout)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool) -> torch.Tensor:
        """SDPA: [B, H, T, hs] queries over [B, H, S, hs] keys and values -> [B, H, T, hs]."""
        dropout_p = self.attention_dropout if self.training else 0.0
        if q.device.type != "cpu" or (q.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")):
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, dropout_p=dropout_p)
        # On CPU, SDPA is slower in bf16 than in fp32 (forward + backward, torch 2.13: 16 vs 4 ms at
        # the CPU recipe's shape, 266 vs 162 ms at the seed's), so attend in fp32, outside autocast.
        # Dropout on the attention weights forces the unfused "math" kernel: slow on CPU.
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), is_causal=is_causal, dropout_p=dropout_p
            )
        return y.to(q.dtype)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, block: int = 0) -> torch.Tensor:
        """[B, T, C] -> [B, T, C]; with an empty cache, also stores the keys and values (prefill)."""
        B, T, C = x.shape  # [B, T, C]
        qkv = self.qkv(x)  # [B, T, 3C]
        # Split 3C into q, k, v of H heads of hs each and move heads next to batch:
        # [B, T, 3C] -> [B, T, 3, H, hs] -> [3, B, H, T, hs]
        qkv = qkv.view(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # 3 x [B, H, T, hs]
        if cache is not None:
            cache.append(block, qkv[1:])  # keys and values of positions 0 .. T-1
        # softmax(q k^T / sqrt(hs)) v over earlier positions only: [B, H, T, hs]
        y = self.attend(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, C)  # concatenate heads: [B, T, H * hs] = [B, T, C]
        return self.proj_dropout(self.proj(y))  # output projection: [B, T, C]

    def step(self, x: torch.Tensor, cache: KVCache, block: int) -> torch.Tensor:
        """``forward`` for the one new position after the cached ones: [B, C] -> [B, C]."""
        B, C = x.shape  # [B, C]
        # [B, 3C] -> [B, 3, H, 1, hs]: q, k, v of H heads, for a sequence of one position
        qkv = project(self.qkv, x, cache).view(B, 3, self.num_heads, 1, C // self.num_heads)
        k, v = cache.append(block, qkv[:, 1:].transpose(0, 1))  # 2 x [B, H, cached+1, hs]
        y = self.attend(qkv[:, 0], k, v, is_causal=False)  # the new query sees every position: [B, H, 1, hs]
        return project(self.proj, y.reshape(B, C), cache)  # concatenate heads, project: [B, C]


class FeedForward(nn.Module):
    """Linear C -> 4C, ReLU, Linear 4C -> C, dropout."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, 4 * config.d_model, bias=config.bias)
        self.down = nn.Linear(4 * config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, T, C] -> [B, T, 4C] -> [B, T, C]
        return self.dropout(self.down(F.relu(self.up(x))))

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """``forward`` for one position: [B, C] -> [B, 4C] -> [B, C]."""
        return project(self.down, F.relu(project(self.up, x, cache)), cache)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, block: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, block)  # [B, T, C]
        x = x + self.ffn(self.ln2(x))  # [B, T, C]
        return x

    def step(self, x: torch.Tensor, cache: KVCache, block: int) -> torch.Tensor:
        """``forward`` for one position after the cached ones: [B, C] -> [B, C]."""
        x = x + self.attn.step(self.ln1(x), cache, block)
        return x + self.ffn.step(self.ln2(x), cache)


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """Fixed positional encoding of 'Attention Is All You Need': [length, dim]."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # [length, 1]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class GPT(nn.Module):
    """Token embedding + positional encoding, N blocks, final LayerNorm, tied output head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        if config.positional == "learned":
            self.position_embedding = nn.Embedding(config.context_length, config.d_model)
        else:
            self.register_buffer(
                "position_table", sinusoidal_table(config.context_length, config.d_model), persistent=False
            )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_blocks))
        self.ln_final = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight  # weight tying: one [V, C] matrix
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2N).
        for name, parameter in self.named_parameters():
            if name.endswith(("attn.proj.weight", "ffn.down.weight")):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.num_blocks))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Trainable parameters; the tied embedding/head matrix is counted once."""
        return sum(p.numel() for p in self.parameters())

    def positions(self, start: int, length: int) -> torch.Tensor:
        """Positional encoding for positions start .. start+length-1: [length, C]."""
        if self.config.positional == "learned":
            return self.position_embedding.weight[start : start + length]  # rows of the table
        return self.position_table[start : start + length]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx [B, T] token ids -> logits [B, T, V], and the mean cross-entropy if targets [B, T].

        With an empty ``cache``, the keys and values of these T positions are stored in it (prefill);
        ``step`` then continues one position at a time.
        """
        B, T = idx.shape
        context = self.config.context_length
        if context < T:
            raise ValueError(f"sequence of {T} tokens exceeds context_length {context}")
        if cache is not None and cache.length:
            raise ValueError("forward fills an empty cache; continue with step(), one position per call")
        x = self.token_embedding(idx)  # [B, T, C]
        x = x + self.positions(0, T)  # + [T, C], broadcast over B: [B, T, C]
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)  # [B, T, C]
        if cache is not None:
            cache.length = T
        x = self.ln_final(x)  # [B, T, C]
        logits = self.head(x)  # [B, T, V]
        if targets is None:
            return logits, None
        # [B*T, V] against [B*T]
        loss = F.cross_entropy(logits.view(B * T, -1).float(), targets.reshape(B * T))
        return logits, loss

    def step(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One decoding step: idx [B] (the newest token of each row) -> next-token logits [B, V].

        The same computation as ``forward`` for the position after the ``cache.length`` cached ones,
        in eval mode (no dropout), with fewer tensor operations: a step of a 4.8M-parameter model takes
        about a millisecond on a CPU, so per-operation overhead counts.
        """
        if self.training:
            raise RuntimeError("step() decodes without dropout: call model.eval() first")
        if cache.length >= self.config.context_length:
            raise ValueError(f"the cache is full ({cache.length} positions): clear() it and refill it")
        x = self.token_embedding(idx) + self.positions(cache.length, 1)  # [B, C] + [1, C]: [B, C]
        for i, block in enumerate(self.blocks):
            x = block.step(x, cache, i)  # [B, C]
        cache.length += 1
        return project(self.head, self.ln_final(x), cache)  # [B, V]

    def new_cache(self) -> KVCache:
        """An empty KV cache for this model."""
        return KVCache(self.config)
