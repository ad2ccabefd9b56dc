"""Character-level tokenizer: id = rank of the character in the sorted vocabulary."""

from __future__ import annotations

import numpy as np

from lightning_gpt.errors import UserError


class UnknownCharacterError(ValueError, UserError):
    """Text holds characters that are not in the vocabulary."""


def _code_points(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as uint32, without a Python loop over characters (a lone surrogate,
    which Python makes of bytes that are not UTF-8 in arguments and stdin, is its own code point)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class CharTokenizer:
    """Maps each character of a sorted vocabulary (a plain string: checkpoint-safe) to its index."""

    def __init__(self, vocab: str):
        if not vocab:
            raise ValueError("the vocabulary is empty")
        points = _code_points(vocab)
        if np.any(np.diff(points.astype(np.int64)) <= 0):
            raise ValueError("the vocabulary must be sorted characters without repeats")
        self.vocab = vocab
        self._points = points
        # Lookup table code point -> id (-1 = not in the vocabulary), for vectorized encoding.
        self._table = np.full(int(points[-1]) + 1, -1, dtype=np.int32)
        self._table[points] = np.arange(len(points), dtype=np.int32)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Vocabulary = the sorted set of characters in ``text`` (never ``set()`` order)."""
        if not text:
            raise ValueError("cannot build a vocabulary from empty text")
        return cls(np.unique(_code_points(text)).tobytes().decode("utf-32-le", "surrogatepass"))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def unknown_characters(self, text: str) -> list[str]:
        """Characters of ``text`` missing from the vocabulary, sorted, each once."""
        points = np.unique(_code_points(text))
        return [chr(p) for p in points[~np.isin(points, self._points)]]

    def encode(self, text: str, dtype: np.dtype | type = np.int64) -> np.ndarray:
        """Text -> ids [len(text)]. Raises UnknownCharacterError naming any unknown characters."""
        points = _code_points(text)
        inside = points < len(self._table)
        ids = self._table[np.where(inside, points, 0)]
        if not (inside.all() and (ids >= 0).all()):
            names = ", ".join(repr(c) for c in self.unknown_characters(text))
            raise UnknownCharacterError(f"characters not in the vocabulary: {names}")
        return ids.astype(dtype, copy=False)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Ids -> text."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self._points)):
            raise ValueError(f"token ids must be in [0, {len(self._points)})")
        return self._points[ids].tobytes().decode("utf-32-le", "surrogatepass")
