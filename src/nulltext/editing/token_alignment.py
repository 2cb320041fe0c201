"""Token-level correspondences between prompts for Prompt-to-Prompt editing (Hertz et al. 2022, §3.2).

A position is an index into the text encoder's input: position 0 is the start token (BOS), the
prompt's tokens follow, then the end token (EOS), then padding up to L = `tokenizer.model_max_length`.
Cross-attention maps have one channel per position, so editing an attention map means saying, for
each target position, which source positions it takes its attention from.
"""

from __future__ import annotations

import math
import string
from typing import TYPE_CHECKING

import torch
from nulltext.errors import NulltextError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Span = tuple[str, list[int]]
Pair = tuple[int | None, int | None]


class PromptMismatchError(NulltextError, ValueError):
    """A prompt, or a pair of prompts, that cannot be aligned as asked."""


def _sequence_length(tokenizer: PreTrainedTokenizerBase) -> int:
    """The text encoder's sequence length L."""
    return int(tokenizer.model_max_length)


def _content_ids(text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of `text` without start, end or padding tokens."""
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _tokenize(prompt: str, tokenizer: PreTrainedTokenizerBase) -> tuple[list[Span], list[int]]:
    """Word spans of `prompt` and its token ids from BOS to EOS (no padding), checked to fit in L."""
    spans: list[Span] = []
    position = 1  # position 0 is BOS
    for word in prompt.split():
        count = len(_content_ids(word, tokenizer))
        spans.append((word, list(range(position, position + count))))
        position += count
    content = _content_ids(prompt, tokenizer)
    if len(content) != position - 1:
        raise PromptMismatchError(
            f"the words of {prompt!r} tokenize to {position - 1} tokens one by one "
            f"but to {len(content)} together"
        )
    length = _sequence_length(tokenizer)
    if len(content) + 2 > length:
        raise PromptMismatchError(
            f"prompt {prompt!r} is {len(content) + 2} tokens long with its start and end tokens, "
            f"but the text encoder takes at most {length}"
        )
    return spans, [tokenizer.bos_token_id, *content, tokenizer.eos_token_id]


def word_token_spans(prompt: str, tokenizer: PreTrainedTokenizerBase) -> list[Span]:
    """Each whitespace-separated word of `prompt` with its token positions (BOS is position 0)."""
    return _tokenize(prompt, tokenizer)[0]


def _normalise(word: str) -> str:
    """A word compared case-insensitively and without surrounding punctuation."""
    return word.strip(string.punctuation).casefold()


def word_token_indices(prompt: str, word: str | int, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token positions of a word given by its index in the prompt's words or by its text (all occurrences)."""
    spans = word_token_spans(prompt, tokenizer)
    words = [w for w, _ in spans]
    if isinstance(word, bool) or not isinstance(word, (int, str)):
        raise TypeError(f"a word is given by its index (int) or its text (str), not {type(word).__name__}")
    if isinstance(word, int):
        if not 0 <= word < len(spans):
            raise PromptMismatchError(
                f"word index {word} is out of range: prompt {prompt!r} has {len(words)} words {words}"
            )
        return list(spans[word][1])
    key = _normalise(word)
    matches = [positions for w, positions in spans if key and _normalise(w) == key]
    if not matches:
        raise PromptMismatchError(f"word {word!r} is not in prompt {prompt!r}, whose words are {words}")
    return sorted(p for positions in matches for p in positions)


def replace_mapper(source: str, target: str, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Word-swap matrix M with target_attention[..., n] = Σ_w source_attention[..., w] · M[w, n].

    Words are paired by index. A pair with equal token counts maps token to token; otherwise every
    source token of it maps to every target token of it with weight 1/m (m = target token count), so
    each row sums to 1 and the word's attention mass is shared evenly over its target tokens. BOS maps
    to BOS, EOS to EOS, and padding diagonally after EOS as far as it fits in L: when the target is
    longer, the last source padding rows map nowhere; when it is shorter, the last target padding
    columns receive nothing (zero attention).
    """
    source_spans, source_ids = _tokenize(source, tokenizer)
    target_spans, target_ids = _tokenize(target, tokenizer)
    if len(source_spans) != len(target_spans):
        raise PromptMismatchError(
            f"word swap needs prompts of equal length: source has {len(source_spans)} words, "
            f"target has {len(target_spans)} — use refine mode (--mode refine)"
        )
    length = _sequence_length(tokenizer)
    mapper = torch.zeros(length, length)  # (tokens_source, tokens_target)
    mapper[0, 0] = 1.0  # BOS
    for (_, source_positions), (_, target_positions) in zip(source_spans, target_spans):
        if len(source_positions) == len(target_positions):
            for s, t in zip(source_positions, target_positions):
                mapper[s, t] = 1.0
        else:
            for s in source_positions:
                for t in target_positions:
                    mapper[s, t] = 1.0 / len(target_positions)
    source_end, target_end = len(source_ids) - 1, len(target_ids) - 1  # EOS positions
    for k in range(length - max(source_end, target_end)):  # EOS, then padding
        mapper[source_end + k, target_end + k] = 1.0
    return mapper


def _score(a: int, b: int) -> int:
    """Needleman–Wunsch substitution score: +1 for identical tokens, −1 otherwise (gaps score 0)."""
    return 1 if a == b else -1


def _align(source: list[int], target: list[int]) -> list[Pair]:
    """Global alignment of two token-id sequences as (source index | None, target index | None) pairs.

    best[i][j] is the best score aligning source[i:] with target[j:]; the walk from (0, 0) takes, among
    the optimal moves, first a diagonal step, then skipping a source token, then inserting a target
    token. So matches come as early as possible, and in a changed region the dropped source tokens
    come before the new target tokens. With gaps at 0 and mismatches at −1 a diagonal step on
    different tokens is never optimal: the alignment is a longest common subsequence.
    """
    n, m = len(source), len(target)
    best = [[0] * (m + 1) for _ in range(n + 1)]  # (n + 1, m + 1)
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best[i][j] = max(
                _score(source[i], target[j]) + best[i + 1][j + 1], best[i + 1][j], best[i][j + 1]
            )
    pairs: list[Pair] = []
    i = j = 0
    while i < n or j < m:
        if i < n and j < m and best[i][j] == _score(source[i], target[j]) + best[i + 1][j + 1]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif i < n and best[i][j] == best[i + 1][j]:
            pairs.append((i, None))
            i += 1
        else:
            pairs.append((None, j))
            j += 1
    return pairs


def refine_alignment(
    source: str, target: str, tokenizer: PreTrainedTokenizerBase
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refinement mapping: for each target position, the source position it takes attention from, and its alpha.

    The token ids from BOS to EOS are aligned globally (see `_align` for the scoring and the
    deterministic tie-breaking). A target token aligned to an identical source token gets that
    position and alpha 1; a new target token gets alpha 0 (it keeps its own attention) and, as a
    harmless index, the source position it was aligned against or else the last source position
    before it. Padding after EOS maps to the matching padding position (alpha 1) as far as it fits
    in L; target padding positions left over keep their own attention (own position, alpha 0).
    """
    _, source_ids = _tokenize(source, tokenizer)
    _, target_ids = _tokenize(target, tokenizer)
    length = _sequence_length(tokenizer)
    mapper = torch.arange(length)  # (tokens_target,) source position per target position
    alphas = torch.zeros(length)  # (tokens_target,)
    last_source = 0
    for i, j in _align(source_ids, target_ids):
        if i is not None:
            last_source = i
        if j is None:
            continue
        mapper[j] = last_source
        alphas[j] = float(i is not None and source_ids[i] == target_ids[j])
    source_pad, target_pad = len(source_ids), len(target_ids)  # first padding positions
    for k in range(length - max(source_pad, target_pad)):
        mapper[target_pad + k] = source_pad + k
        alphas[target_pad + k] = 1.0
    return mapper, alphas


def reweight_vector(prompt: str, scales: dict[str, float], tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Per-position attention scale: 1 everywhere except the tokens of the given words (all occurrences)."""
    weights = torch.ones(_sequence_length(tokenizer))  # (tokens,)
    for word, scale in scales.items():
        if not math.isfinite(scale):
            raise ValueError(f"scale for word {word!r} must be finite, got {scale}")
        for position in word_token_indices(prompt, word, tokenizer):
            weights[position] = float(scale)
    return weights
