"""What a target caption changes, word by word; `--blend auto` and the warning of an unnamed region."""

import pytest

from nulltext.editing.word_diff import (BlendWordsError, WordChange, auto_blend_words, describe,
                                        unnamed_region_warnings, word_diff)
from nulltext.evaluation.edit_cases import make_cases


def test_the_diff_names_replaced_inserted_and_deleted_words():
    assert word_diff("a cat sitting next to a mirror", "a tiger sitting next to a mirror") == [
        WordChange("replaced", ("cat",), ("tiger",))]
    assert word_diff("A white circle, on blue", "a green circle on blue") == [
        WordChange("replaced", ("white",), ("green",))]  # case and punctuation compared as the token aligner does
    changes = word_diff("a small cat on a mat", "a cat on a red mat with a hat")
    assert changes == [WordChange("deleted", ("small",), ()), WordChange("inserted", (), ("red",)),
                       WordChange("inserted", (), ("with", "a", "hat"))]
    assert describe(changes) == '− "small"; + "red"; + "with a hat"'
    assert describe(word_diff("a cat", "a cat")) == "no word changed"


def test_auto_blend_words_are_the_changed_words_a_mask_can_use():
    assert auto_blend_words("a cat on a mat", ["a tiger on a mat"]) == ["cat", "tiger"]
    # an adjective refines the word it stands before: that word is the region too
    assert auto_blend_words("a cat", ["a red cat"]) == ["red", "cat"]
    # function words and words that also stand unchanged would mark the wrong region
    assert auto_blend_words("a photo", ["a photo of a tiger"]) == ["tiger"]
    assert auto_blend_words("a cat and a dog", ["a cat and a cat"]) == ["dog"]
    # several targets: the union, each word once, in reading order
    assert auto_blend_words("a red circle", ["a blue circle", "a red square", "a blue circle"]) == \
        ["red", "blue", "circle", "square"]
    with pytest.raises(BlendWordsError, match="--blend WORDS or --mask"):
        auto_blend_words("a cat", ["a cat", "A cat."])


def test_auto_blend_words_are_the_benchmarks_ground_truth_words():
    """On the edit benchmark's 4 × 30 cases, `--blend auto` picks exactly the words the cases were built with."""
    cases = make_cases(30, seed=0, resolution=64)
    picked = [sorted(auto_blend_words(c.source_prompt, [c.target_prompt])) for c in cases]
    assert picked == [sorted(c.blend_words) for c in cases] and len(cases) == 120


def test_a_target_that_only_appends_words_is_warned_of():
    [warning] = unnamed_region_warnings("a photo", ["a photo of a tiger"])
    assert '"of a tiger"' in warning and "source caption" in warning and "\n" not in warning
    assert unnamed_region_warnings("a cat", ["a red cat", "a tiger", "a cat", "a"]) == []


@pytest.mark.parametrize("source, target, changes, words", [
    ("a cat on a mat", "a tiger on a mat", '"cat" → "tiger"', ["cat", "tiger"]),  # replacement
    ("a cat on a mat", "a black cat on a mat", '+ "black"', ["black", "cat"]),  # insertion before a word
    ("a small cat on a mat", "a cat on a mat", '− "small"', ["small"]),  # deletion
    ("a cat on a mat", "a golden retriever on a mat", '"cat" → "golden retriever"', ["cat", "golden", "retriever"]),
    ("a red circle", "a red hippopotamus", '"circle" → "hippopotamus"', ["circle", "hippopotamus"]),
    ("a cat on a mat", "a cat on a rug, in the sun", '"mat" → "rug, in the sun"', ["mat", "rug", "sun"]),
])
def test_a_table_of_caption_pairs(source, target, changes, words):
    """Replacements, insertions, deletions and multi-word changes: the printed change and the blend words."""
    assert describe(word_diff(source, target)) == changes
    assert auto_blend_words(source, [target]) == words


def test_local_blend_selects_every_token_of_a_word_of_many_tokens(tiny):
    """"hippopotamus" is 12 tokens of the tiny model's tokenizer (spelt out): `--blend auto` names the word,
    and local blend selects all 12 in the target and "circle"'s one in the source."""
    from nulltext.editing.prompt_to_prompt import _word_selectors
    from nulltext.editing.token_alignment import word_token_indices

    source, target = "a red circle", "a red hippopotamus"
    words = auto_blend_words(source, [target])
    selectors = _word_selectors(tiny.tokenizer, [source, target], words, "blend")  # (prompts, tokens)
    assert selectors[0].nonzero().flatten().tolist() == word_token_indices(source, "circle", tiny.tokenizer) == [3]
    assert selectors[1].nonzero().flatten().tolist() == word_token_indices(target, "hippopotamus", tiny.tokenizer)
    assert int(selectors[1].sum()) == 12
