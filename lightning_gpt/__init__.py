"""lightning-gpt: a character-level GPT trained with PyTorch Lightning."""

from lightning_gpt.config import PRESETS, GPTConfig, preset
from lightning_gpt.model import GPT
from lightning_gpt.tokenizer import CharTokenizer

__all__ = ["GPT", "PRESETS", "CharTokenizer", "GPTConfig", "preset"]
__version__ = "0.1.0"
