"""Model configuration: one dataclass and a few named presets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

POSITIONAL_KINDS = ("learned", "sinusoidal", "rotary")
# Upper bounds on the shape, checked before anything is allocated, so that a typo or a foreign
# checkpoint's hyperparameters cannot ask for absurd memory (every Unicode character fits the vocabulary).
SHAPE_LIMITS = dict(vocab_size=0x110000, context_length=2**20, d_model=2**16, num_heads=1024, num_blocks=1024)
MAX_WEIGHTS = 10**10  # embedding, positional and block values, (V + T) * C + 12 * N * C^2: 40 GB in fp32


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
        for name, limit in SHAPE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ValueError(f"{name} must be an integer from 1 to {limit}, got {value!r}")
        C = self.d_model
        weights = (self.vocab_size + self.context_length) * C + 12 * self.num_blocks * C * C
        if weights > MAX_WEIGHTS:
            raise ValueError(f"the shape needs {weights:.1e} weights, more than the limit {MAX_WEIGHTS:.0e}")
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

    @classmethod
    def from_hparams(cls, hparams: Mapping, vocab_size: int) -> GPTConfig:
        """The shape in a module's hyperparameters (older checkpoints lack some fields: the defaults)."""
        shape = {f.name: hparams[f.name] for f in fields(cls)[1:] if f.name in hparams}
        return cls(vocab_size=vocab_size, **shape)

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
