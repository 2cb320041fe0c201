"""Hand-worked examples for token_alignment with the bundled CLIP tokenizer.

Vocabulary words are one token each; any other word is one token per character ("tiger" → 5 tokens).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nulltext.bundled.data import vocabulary_words
from nulltext.bundled.tokenizer import build_tokenizer
from nulltext.editing.token_alignment import (
    PromptMismatchError,
    refine_alignment,
    replace_mapper,
    reweight_vector,
    word_token_indices,
    word_token_spans,
)

CAPTION = "a red circle on a blue background"


@pytest.fixture(scope="module")
def tok():
    """The bundled tokenizer with a short sequence length."""
    return build_tokenizer(vocabulary_words(), 32)


@pytest.fixture(scope="module")
def L(tok) -> int:
    """The sequence length, read from the tokenizer."""
    return tok.model_max_length


# word_token_spans


def test_spans_single_token_words(tok):
    assert word_token_spans("a red circle", tok) == [("a", [1]), ("red", [2]), ("circle", [3])]


def test_spans_multi_token_word(tok):
    assert word_token_spans("a tiger", tok) == [("a", [1]), ("tiger", [2, 3, 4, 5, 6])]
    assert word_token_spans("a tiger circle", tok) == [
        ("a", [1]),
        ("tiger", [2, 3, 4, 5, 6]),
        ("circle", [7]),
    ]


def test_spans_punctuation_is_part_of_the_word(tok):
    # "circle." → circle, . : two tokens
    assert word_token_spans("a red circle.", tok) == [("a", [1]), ("red", [2]), ("circle.", [3, 4])]


def test_spans_empty_prompt(tok):
    assert word_token_spans("", tok) == []


def test_spans_too_long_prompt(tok, L):
    prompt = " ".join(["tiger"] * L)  # 5 tokens a word
    with pytest.raises(PromptMismatchError, match=f"at most {L}"):
        word_token_spans(prompt, tok)


def test_spans_longest_prompt_that_fits(tok, L):
    prompt = " ".join(["red"] * (L - 2))
    spans = word_token_spans(prompt, tok)
    assert spans[-1] == ("red", [L - 2])


class _MergingTokenizer:
    """A stand-in tokenizer whose whole-prompt tokenization is shorter than its words' together."""

    model_max_length, bos_token_id, eos_token_id = 16, 0, 9

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        ids = {"ab": [1, 2], "cd": [3]}.get(text, [1, 2])  # "ab cd" → 2 tokens, not 3
        return SimpleNamespace(input_ids=ids)


def test_spans_total_mismatch_raises():
    with pytest.raises(PromptMismatchError, match="3 tokens one by one but to 2 together"):
        word_token_spans("ab cd", _MergingTokenizer())


# word_token_indices


def test_indices_by_index(tok):
    assert word_token_indices("a tiger circle", 0, tok) == [1]
    assert word_token_indices("a tiger circle", 1, tok) == [2, 3, 4, 5, 6]
    assert word_token_indices("a tiger circle", 2, tok) == [7]


def test_indices_by_text(tok):
    assert word_token_indices("a tiger circle", "tiger", tok) == [2, 3, 4, 5, 6]
    assert word_token_indices("a tiger circle", "Tiger,", tok) == [2, 3, 4, 5, 6]
    assert word_token_indices("a red Circle.", "circle", tok) == [3, 4]  # "circle." is 2 tokens


def test_indices_repeated_word(tok):
    assert word_token_indices(CAPTION, "a", tok) == [1, 5]


def test_indices_unknown_word(tok):
    with pytest.raises(PromptMismatchError) as info:
        word_token_indices("a red circle", "tiger", tok)
    message = str(info.value)
    assert "'tiger'" in message and "['a', 'red', 'circle']" in message
    assert "\n" not in message


def test_indices_out_of_range(tok):
    for index in (3, -1):
        with pytest.raises(PromptMismatchError, match="3 words"):
            word_token_indices("a red circle", index, tok)


# replace_mapper


def test_replace_single_token_swap_is_identity(tok, L):
    mapper = replace_mapper(CAPTION, "a green circle on a blue background", tok)
    assert mapper.shape == (L, L) and mapper.dtype == torch.float32
    assert torch.equal(mapper, torch.eye(L))


def test_replace_equal_token_counts_is_token_to_token(tok, L):
    # cat and dog are both 3 character tokens
    assert torch.equal(replace_mapper("a cat circle", "a dog circle", tok), torch.eye(L))


def test_replace_one_to_five_tokens(tok, L):
    # source: BOS0 a1 red2 circle3 EOS4 pad5..;  target: BOS0 a1 t2 i3 g4 e5 r6 circle7 EOS8 pad9..
    mapper = replace_mapper("a red circle", "a tiger circle", tok)
    expected = torch.zeros(L, L)
    expected[0, 0] = 1.0
    expected[1, 1] = 1.0
    expected[2, 2:7] = 0.2
    expected[3, 7] = 1.0
    for k in range(4, L - 4):  # EOS and padding shift by 4; the last 4 source rows do not fit
        expected[k, k + 4] = 1.0
    torch.testing.assert_close(mapper, expected, rtol=0, atol=0)

    assert mapper[2].tolist() == [0.0, 0.0] + [pytest.approx(0.2)] * 5 + [0.0] * (L - 7)
    assert mapper[3].nonzero().flatten().tolist() == [7]
    assert mapper[4].nonzero().flatten().tolist() == [8]
    rows = mapper.sum(dim=1)  # (tokens_source,)
    torch.testing.assert_close(rows[: L - 4], torch.ones(L - 4))  # every source row that fits keeps its mass
    assert rows[L - 4 :].tolist() == [0.0] * 4
    columns = mapper.sum(dim=0)  # (tokens_target,)
    one_to_one = [0, 1, *range(7, L)]
    torch.testing.assert_close(columns[one_to_one], torch.ones(len(one_to_one)))
    # a split word's columns each receive 1/m of each of its n source tokens: n/m = 1/5
    torch.testing.assert_close(columns[2:7], torch.full((5,), 0.2))


def test_replace_five_to_one_token(tok, L):
    # source: BOS0 a1 t2..r6 circle7 EOS8;  target: BOS0 a1 red2 circle3 EOS4
    mapper = replace_mapper("a tiger circle", "a red circle", tok)
    assert mapper[2:7, 2].tolist() == [1.0] * 5  # m = 1: each tiger token gives all its attention to red
    assert mapper[2:7].sum().item() == 5.0
    assert mapper[7].nonzero().flatten().tolist() == [3]
    assert mapper[8].nonzero().flatten().tolist() == [4]
    for k in range(9, L):
        assert mapper[k].nonzero().flatten().tolist() == [k - 4]
    columns = mapper.sum(dim=0)  # (tokens_target,)
    assert columns[2].item() == 5.0
    assert columns[L - 4 :].tolist() == [0.0] * 4  # no source padding left for the last target columns


def test_replace_preserves_attention_over_real_tokens(tok, L):
    mapper = replace_mapper("a red circle", "a tiger circle", tok)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, L, generator=generator)  # (pixels, tokens_source)
    attention = logits.softmax(dim=-1)  # (pixels, tokens_source)
    mapped = attention @ mapper  # (pixels, tokens_target)
    torch.testing.assert_close(mapped[:, :9].sum(dim=-1), attention[:, :5].sum(dim=-1))
    torch.testing.assert_close(mapped[:, 2:7], attention[:, 2:3].expand(-1, 5) / 5)
    torch.testing.assert_close(mapped[:, 7], attention[:, 3])
    torch.testing.assert_close(mapped[:, 8:], attention[:, 4 : L - 4])


def test_replace_word_count_mismatch(tok):
    with pytest.raises(PromptMismatchError) as info:
        replace_mapper(CAPTION, "a red circle on a big blue background", tok)
    message = str(info.value)
    assert message == (
        "word swap needs prompts of equal length: source has 7 words, target has 8 "
        "— use refine mode (--mode refine)"
    )
    assert "7 words" in message and "8" in message and "refine" in message


# refine_alignment


def test_refine_insertion(tok, L):
    # source: BOS0 a1 red2 circle3 EOS4;  target: BOS0 a1 b2 i3 g4 red5 circle6 EOS7
    mapper, alphas = refine_alignment("a red circle", "a big red circle", tok)
    assert mapper.shape == (L,) and mapper.dtype == torch.long
    assert alphas.shape == (L,) and alphas.dtype == torch.float32
    assert mapper[:8].tolist() == [0, 1, 1, 1, 1, 2, 3, 4]  # new tokens point at the last source token before
    assert alphas[:8].tolist() == [1, 1, 0, 0, 0, 1, 1, 1]
    # padding: target 8 + k ← source 5 + k for the L - 8 positions left
    assert mapper[8:].tolist() == list(range(5, 5 + L - 8))
    assert alphas[8:].tolist() == [1.0] * (L - 8)


def test_refine_deletion(tok, L):
    # source: BOS0 a1 b2 i3 g4 red5 circle6 EOS7;  target: BOS0 a1 red2 circle3 EOS4
    mapper, alphas = refine_alignment("a big red circle", "a red circle", tok)
    assert mapper[:5].tolist() == [0, 1, 5, 6, 7]
    assert alphas[:5].tolist() == [1.0] * 5
    assert mapper[5 : L - 3].tolist() == list(range(8, L))  # padding shifted back by 3
    assert alphas[5 : L - 3].tolist() == [1.0] * (L - 8)
    assert mapper[L - 3 :].tolist() == [L - 3, L - 2, L - 1]  # left over: own position,
    assert alphas[L - 3 :].tolist() == [0.0] * 3  # own attention


def test_refine_identical_prompts(tok, L):
    mapper, alphas = refine_alignment(CAPTION, CAPTION, tok)
    assert torch.equal(mapper, torch.arange(L))
    assert torch.equal(alphas, torch.ones(L))


def test_refine_substitution_drops_then_inserts(tok, L):
    # red (2) and blue (2) differ: red is dropped, blue is new and points at red
    mapper, alphas = refine_alignment("a red circle", "a blue circle", tok)
    assert torch.equal(mapper, torch.arange(L))
    assert alphas.tolist() == [1.0, 1.0, 0.0] + [1.0] * (L - 3)


def test_refine_repeated_token_matches_earliest(tok, L):
    # target: BOS0 a1 red2 red3 circle4 EOS5; the first red is the source's, the second is new
    mapper, alphas = refine_alignment("a red circle", "a red red circle", tok)
    assert mapper[:6].tolist() == [0, 1, 2, 2, 3, 4]
    assert alphas[:6].tolist() == [1, 1, 1, 0, 1, 1]
    assert mapper[6:].tolist() == list(range(5, 5 + L - 6))


def test_refine_prompt_too_long(tok, L):
    with pytest.raises(PromptMismatchError, match=f"at most {L}"):
        refine_alignment("a red circle", " ".join(["tiger"] * L), tok)


# reweight_vector


def test_reweight_multi_token_and_negative(tok, L):
    weights = reweight_vector("a tiger circle", {"tiger": 2.0, "circle": -0.5}, tok)
    expected = torch.ones(L)
    expected[2:7] = 2.0
    expected[7] = -0.5
    assert weights.shape == (L,)
    assert torch.equal(weights, expected)


def test_reweight_zero_on_repeated_word(tok, L):
    weights = reweight_vector(CAPTION, {"a": 0.0, "Blue": 3.0}, tok)
    assert weights[[1, 5]].tolist() == [0.0, 0.0]
    assert weights[6].item() == 3.0
    others = [p for p in range(L) if p not in (1, 5, 6)]
    assert weights[others].tolist() == [1.0] * len(others)


def test_reweight_empty_scales_is_ones(tok, L):
    assert torch.equal(reweight_vector(CAPTION, {}, tok), torch.ones(L))


def test_reweight_unknown_word(tok):
    with pytest.raises(PromptMismatchError, match="'tiger'"):
        reweight_vector("a red circle", {"tiger": 2.0}, tok)
