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


class CausalSelfAttention(nn.Module):
    """All heads at once: one Linear makes q, k, v for every head; SDPA applies the causal mask."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.attention_dropout = config.attention_dropout_p
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.proj_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rotary: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape  # [B, T, C]
        qkv = self.qkv(x)  # [B, T, 3C]
        # Split 3C into q, k, v of H heads of hs each and move heads next to batch:
        # [B, T, 3C] -> [B, T, 3, H, hs] -> [3, B, H, T, hs]
        qkv = qkv.view(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # 3 x [B, H, T, hs]
        if rotary is not None:
            q, k = rotate(q, rotary), rotate(k, rotary)
        y = self.attend(q, k, v, is_causal=True)  # softmax(q k^T / sqrt(hs)) v, causal: [B, H, T, hs]
        y = y.transpose(1, 2).reshape(B, T, C)  # concatenate heads: [B, T, H * hs] = [B, T, C]
        return self.proj_dropout(self.proj(y))  # output projection: [B, T, C]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool) -> torch.Tensor:
        """SDPA: [B, H, T, hs] queries over [B, H, S, hs] keys and values -> [B, H, T, hs]."""
        dropout_p = self.attention_dropout if self.training else 0.0
        if q.device.type != "cpu" or (q.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")):
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, dropout_p=dropout_p)
        # PyTorch's CPU attention is slower in bf16 than in fp32 (benchmarks/README.md), so attend in
        # fp32, outside autocast. Dropout on the attention weights forces the slow unfused kernel.
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), is_causal=is_causal, dropout_p=dropout_p
            )
        return y.to(q.dtype)


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


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, rotary: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), rotary)  # [B, T, C]
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


def rotary_table(length: int, head_size: int) -> torch.Tensor:
    """Cosines and sines of rotary position embeddings (RoFormer): [2, length, head_size / 2]."""
    frequency = 10000.0 ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.arange(length, dtype=torch.float32).unsqueeze(1) * frequency  # [length, hs/2]
    return torch.stack((angles.cos(), angles.sin()))


def rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Turn each pair (x[..., i], x[..., i + hs/2]) of queries or keys x [B, H, T, hs] by its
    position's angle, given table [2, T, hs/2] of those positions: q.k then depends on the distance."""
    cos, sin = table.to(x.dtype)  # [T, hs/2] each
    x1, x2 = x.chunk(2, dim=-1)  # [B, H, T, hs/2] each
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class GPT(nn.Module):
    """Token embedding + positional encoding (or rotary queries and keys), N blocks, final LayerNorm,
    tied output head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        if config.positional == "learned":
            self.position_embedding = nn.Embedding(config.context_length, config.d_model)
        elif config.positional == "sinusoidal":
            self.register_buffer(
                "position_table", sinusoidal_table(config.context_length, config.d_model), persistent=False
            )
        else:
            table = rotary_table(config.context_length, config.head_size)
            self.register_buffer("rotary_table", table, persistent=False)
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

    def positions(self, start: int, length: int) -> tuple[torch.Tensor | float, torch.Tensor | None]:
        """Positions start .. start+length-1: the encoding added to the embeddings [length, C] (or 0),
        and the rotary table [2, length, hs/2] (or None)."""
        if self.config.positional == "learned":
            return self.position_embedding.weight[start : start + length], None  # rows of the table
        if self.config.positional == "sinusoidal":
            return self.position_table[start : start + length], None
        return 0.0, self.rotary_table[:, start : start + length]

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx [B, T] token ids -> logits [B, T, V], and the mean cross-entropy if targets [B, T]."""
        B, T = idx.shape
        context = self.config.context_length
        if context < T:
            raise ValueError(f"sequence of {T} tokens exceeds context_length {context}")
        added, rotary = self.positions(0, T)
        x = self.token_embedding(idx) + added  # [B, T, C] + [T, C], broadcast over B: [B, T, C]
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, rotary)  # [B, T, C]
        x = self.ln_final(x)  # [B, T, C]
        logits = self.head(x)  # [B, T, V]
        if targets is None:
            return logits, None
        # [B*T, V] against [B*T]
        loss = F.cross_entropy(logits.view(B * T, -1).float(), targets.reshape(B * T))
        return logits, loss


# Generation: the same computation with a KV cache. The keys and values of earlier positions do not
# change, so after a prompt each new token needs only its own position.


class KVCache:
    """The keys and values of every block at the positions decoded so far (see ``decode``).

    Block i's are one buffer [2, B, H, context_length, hs] (keys, values), made again whenever a
    prompt fills it from position 0, in the batch size, dtype and device of that pass.
    """

    def __init__(self, config: GPTConfig):
        self.context_length = config.context_length
        self.kv: list[torch.Tensor | None] = [None] * config.num_blocks

    def update(self, block: int, start: int, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store kv [2, B, H, T, hs] at positions start .. start+T-1; return the keys and values of
        positions 0 .. start+T-1: 2 x [B, H, start+T, hs]."""
        if start == 0:
            _, B, H, _, hs = kv.shape
            self.kv[block] = kv.new_empty(2, B, H, self.context_length, hs)
        stored = self.kv[block]
        if stored is None:
            raise ValueError("fill the cache from position 0 (the prompt) first")
        end = start + kv.shape[3]
        stored[:, :, :, start:end] = kv
        return stored[:, :, :, :end].unbind(0)


def decode(model: GPT, idx: torch.Tensor, cache: KVCache, start: int = 0) -> torch.Tensor:
    """``model(idx)`` in eval mode for tokens at positions start .. start+T-1, the keys and values of
    the positions before ``start`` taken from ``cache``: idx [B, T] -> logits [B, T, V].

    ``start`` 0 fills the cache with a prompt; then each call adds one token (T = 1) at the next
    position. The computation of ``GPT.forward`` without dropout.
    """
    B, T = idx.shape
    H, C, context = model.config.num_heads, model.config.d_model, model.config.context_length
    if model.training:
        raise RuntimeError("decode() has no dropout: call model.eval() first")
    if start + T > context:
        raise ValueError(f"positions {start} .. {start + T - 1} exceed context_length {context}")
    if start > 0 and T > 1:
        raise ValueError("decode() fills the cache from position 0, then adds one token per call")
    added, rotary = model.positions(start, T)
    x = model.token_embedding(idx) + added  # [B, T, C]
    for i, block in enumerate(model.blocks):
        attn, ffn = block.attn, block.ffn
        qkv = attn.qkv(block.ln1(x))  # [B, T, 3C]
        qkv = qkv.view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)  # [3, B, H, T, hs]
        q, kv = qkv[0], qkv[1:]  # [B, H, T, hs], [2, B, H, T, hs]
        if rotary is not None:
            q, kv = rotate(q, rotary), torch.stack((rotate(kv[0], rotary), kv[1]))
        k, v = cache.update(i, start, kv)  # positions 0 .. start+T-1: 2 x [B, H, start+T, hs]
        y = attn.attend(q, k, v, is_causal=T > 1)  # one new query sees every position: [B, H, T, hs]
        x = x + attn.proj(y.transpose(1, 2).reshape(B, T, C))  # [B, T, C]
        x = x + ffn.down(F.relu(ffn.up(block.ln2(x))))  # [B, T, C]
    return model.head(model.ln_final(x))  # [B, T, V]
