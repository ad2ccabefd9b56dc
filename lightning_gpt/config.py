"""Model configuration: one dataclass and a few named presets."""

from __future__ import annotations

from dataclasses import dataclass, replace

POSITIONAL_KINDS = ("learned", "sinusoidal", "rotary")


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT. Defaults are the seed design (6 blocks, 8 heads, d_model 256, T 256)."""

    vocab_size: int = 65
    context_length: int = 256
    d_model: int = 256
    num_heads: int = 8
    num_blocks: int = 6
    dropout: float = 0.1
    attention_dropout: float | None = None  # dropout on attention weights; None: same as dropout
    positional: str = "learned"
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "num_heads", "num_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.positional not in POSITIONAL_KINDS:
            raise ValueError(f"positional must be one of {POSITIONAL_KINDS}, got {self.positional!r}")
        if self.positional == "rotary" and self.head_size % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.head_size}")

    @property
    def attention_dropout_p(self) -> float:
        """Dropout on the attention weights: ``attention_dropout``, or ``dropout`` when unset."""
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    @property
    def head_size(self) -> int:
        return self.d_model // self.num_heads


# Model shapes for Python users and tests; training recipes (shape + optimisation) are configs/*.yaml.
PRESETS: dict[str, GPTConfig] = {
    # The seed's table: d_model 256, 8 heads of 32, 6 blocks, T 256, dropout 0.1.
    "seed": GPTConfig(),
    # For tests: trains in seconds.
    "tiny": GPTConfig(context_length=32, d_model=32, num_heads=2, num_blocks=2, dropout=0.0),
}


def preset(name: str, **overrides: object) -> GPTConfig:
    """Return the named preset, with any fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
