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


class KVCache:
    """Keys and values of the positions seen so far, for every block.

    ``keys[i]`` / ``values[i]`` hold block i's tensors, [B, H, context_length, hs]; the first
    ``length`` positions are filled. Positions are absolute, so a full cache cannot slide:
    the caller starts a new cache (see ``lightning_gpt.generation``).
    """

    def __init__(self, config: GPTConfig):
        self.capacity = config.context_length
        self.keys: list[torch.Tensor | None] = [None] * config.num_blocks
        self.values: list[torch.Tensor | None] = [None] * config.num_blocks
        self.length = 0

    def append(self, block: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H, T, hs] after the filled part; return all keys and values so far."""
        if self.keys[block] is None:  # allocated on first use, in the dtype autocast produces
            B, H, _, hs = k.shape
            self.keys[block] = k.new_zeros(B, H, self.capacity, hs)
            self.values[block] = v.new_zeros(B, H, self.capacity, hs)
        keys, values = self.keys[block], self.values[block]
        end = self.length + k.shape[2]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]  # [B, H, length+T, hs]


def project(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``: [..., in] -> [..., out]. Batch-1 decoding on a multi-core CPU takes another route.

    Decoding one token is bound by reading the weights, and PyTorch computes a one-row ``addmm``
    on a single core. Viewing the weight as two halves [2, out/2, in] and using one batched matmul
    spreads them over two cores (a decoding step 1.3x faster on 2 cores; same numbers).
    """
    out_features, in_features = layer.weight.shape
    if (
        x.numel() != in_features  # more than one row: training, prefill, batches
        or out_features % 2
        or x.device.type != "cpu"
        or torch.is_grad_enabled()
        or torch.get_num_threads() < 2
    ):
        return layer(x)
    halves = layer.weight.view(2, out_features // 2, in_features).transpose(1, 2)  # [2, in, out/2]
    rows = x.reshape(1, 1, in_features).expand(2, 1, in_features)  # [2, 1, in]
    if layer.bias is None:
        y = torch.bmm(rows, halves)
    else:
        y = torch.baddbmm(layer.bias.view(2, 1, out_features // 2), rows, halves)  # [2, 1, out/2]
    return y.reshape(x.shape[:-1] + (out_features,))


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
        B, T, C = x.shape  # [B, T, C]
        q, k, v = project(self.qkv, x).split(C, dim=2)  # 3 x [B, T, C]
        # Split C into H heads of hs and move heads next to batch: [B, T, C] -> [B, H, T, hs]
        q = q.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)
        k = k.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)
        v = v.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)
        if cache is not None:
            if cache.length and T > 1:
                raise ValueError("a cache that holds positions accepts one new position per call")
            k, v = cache.append(block, k, v)  # [B, H, cached+T, hs]
        # softmax(q k^T / sqrt(hs)) v over earlier positions only: [B, H, T, hs]
        y = self.attend(q, k, v, is_causal=T > 1)  # one new query (T == 1) sees every cached position
        y = y.transpose(1, 2).reshape(B, T, C)  # concatenate heads: [B, T, H * hs] = [B, T, C]
        return self.proj_dropout(project(self.proj, y))  # output projection: [B, T, C]


class FeedForward(nn.Module):
    """Linear C -> 4C, ReLU, Linear 4C -> C, dropout."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, 4 * config.d_model, bias=config.bias)
        self.down = nn.Linear(4 * config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, T, C] -> [B, T, 4C] -> [B, T, C]
        return self.dropout(project(self.down, F.relu(project(self.up, x))))


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
        """idx [B, T] token ids -> logits [B, T, V], and the mean cross-entropy if targets [B, T]."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.context_length:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds context_length {self.config.context_length}"
            )
        x = self.token_embedding(idx)  # [B, T, C]
        x = x + self.positions(start, T)  # + [T, C], broadcast over B: [B, T, C]
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)  # [B, T, C]
        if cache is not None:
            cache.length += T
        x = self.ln_final(x)  # [B, T, C]
        logits = self.head(x)  # [B, T, V]
        if targets is None:
            return logits, None
        # [B*T, V] against [B*T]
        loss = F.cross_entropy(logits.view(B * T, -1).float(), targets.reshape(B * T))
        return logits, loss

    def new_cache(self) -> KVCache:
        """An empty KV cache for this model."""
        return KVCache(self.config)
