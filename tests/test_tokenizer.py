import numpy as np
import pytest

from lightning_gpt.tokenizer import CharTokenizer, UnknownCharacterError


def test_round_trip_on_full_corpus(shakespeare):
    tokenizer = CharTokenizer.from_text(shakespeare)
    ids = tokenizer.encode(shakespeare)
    assert ids.shape == (1_115_394,)
    assert tokenizer.decode(ids) == shakespeare


def test_vocabulary_is_65_sorted_characters(shakespeare):
    tokenizer = CharTokenizer.from_text(shakespeare)
    assert tokenizer.vocab_size == 65
    assert list(tokenizer.vocab) == sorted(set(shakespeare))
    assert tokenizer.vocab[0] == "\n" and tokenizer.vocab[1] == " "
    assert tokenizer.encode("First").tolist() == [tokenizer.vocab.index(c) for c in "First"]


def test_vocabulary_does_not_depend_on_text_order():
    assert CharTokenizer.from_text("cab").vocab == CharTokenizer.from_text("bca").vocab == "abc"


def test_unknown_characters_are_named():
    tokenizer = CharTokenizer(" abc")
    with pytest.raises(UnknownCharacterError, match=r"'é'.*'€'"):
        tokenizer.encode("a café costs 2€")
    # the error names characters once each, including ones beyond the table
    assert tokenizer.unknown_characters("zz😀") == ["z", "😀"]
    with pytest.raises(UnknownCharacterError, match="'d'"):  # one past the lookup table's end
        tokenizer.encode("d")
    # a lone surrogate (Python's escape for a byte that is not UTF-8) is one more unknown character
    assert tokenizer.unknown_characters("a\udcff") == ["\udcff"]
    surrogates = CharTokenizer.from_text("ab\udcff")  # a raw UnicodeDecodeError before
    assert surrogates.decode(surrogates.encode("\udcffa")) == "\udcffa"
    for ids in ([4], [-1]):  # past the end; and negative, which NumPy would read from the end
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 4\)"):
            tokenizer.decode(ids)


def test_non_ascii_vocabulary_and_compact_dtype():
    text = "héllo wörld 😀 ünïcode"
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode(text, np.uint8)
    assert ids.dtype == np.uint8
    assert tokenizer.decode(ids) == text
    with pytest.raises(ValueError, match="token ids"):
        tokenizer.decode([tokenizer.vocab_size])
    assert tokenizer.decode([]) == "" and len(tokenizer.encode("")) == 0  # nothing to look up


def test_an_empty_vocabulary_is_refused():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")


def test_vocabulary_must_be_sorted_and_unique():
    with pytest.raises(ValueError, match="sorted"):
        CharTokenizer("ba")
    with pytest.raises(ValueError, match="sorted"):
        CharTokenizer("aab")
