"""What a target caption changes in the source caption, word by word: the replaced, inserted and
deleted words of an edit, the words local blend marks with `--blend auto`, and the edits that are
likely to fail because the source caption does not name what they change.

Words are compared as Prompt-to-Prompt's token alignment compares them (case-insensitive, without
surrounding punctuation); the diff is difflib's longest matching blocks over the two word lists, so
"a cat sitting next to a mirror" → "a tiger sitting next to a mirror" is one replacement, cat → tiger.
No torch: the command line prints the changes before any model is loaded.
"""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass
from typing import Literal

from nulltext.errors import NulltextError, short

ChangeKind = Literal["replaced", "inserted", "deleted"]
# words that say where or how, not what: never a region for local blend
FUNCTION_WORDS = frozenset("a an the of on in at to into onto by with and or next near from for is are its".split())


class BlendWordsError(NulltextError, ValueError):
    """`--blend auto` with captions that change no word local blend could mark."""


@dataclass(frozen=True)
class WordChange:
    """One run of changed words: the source's words it removes and the target's words it puts in."""

    kind: ChangeKind
    source: tuple[str, ...]  # words of the source caption (empty for an insertion)
    target: tuple[str, ...]  # words of the target caption (empty for a deletion)

    def __str__(self) -> str:
        before, after = (f'"{" ".join(words)}"' for words in (self.source, self.target))
        return {"replaced": f"{before} → {after}", "inserted": f"+ {after}", "deleted": f"− {before}"}[self.kind]


def _key(word: str) -> str:
    """A word compared case-insensitively and without surrounding punctuation (as token alignment does)."""
    return word.strip(string.punctuation).casefold()


def _opcodes(source: str, target: str) -> tuple[list[str], list[str], list[tuple[str, int, int, int, int]]]:
    a, b = source.split(), target.split()
    matcher = difflib.SequenceMatcher(None, [_key(w) for w in a], [_key(w) for w in b], autojunk=False)
    return a, b, matcher.get_opcodes()


def word_diff(source: str, target: str) -> list[WordChange]:
    """The changes that turn the source caption's words into the target's, in reading order."""
    a, b, opcodes = _opcodes(source, target)
    kinds = {"replace": "replaced", "insert": "inserted", "delete": "deleted"}
    return [WordChange(kinds[op], tuple(a[i1:i2]), tuple(b[j1:j2])) for op, i1, i2, j1, j2 in opcodes if op != "equal"]


def describe(changes: list[WordChange]) -> str:
    """One line: `"cat" → "tiger"; + "red"`, or "no word changed"."""
    return "; ".join(map(str, changes)) or "no word changed"


def auto_blend_words(source: str, targets: list[str]) -> list[str]:
    """The words local blend marks for these edits: every changed word, of the source and of each target,
    except function words ("a", "of", "on", …) and words that also stand unchanged in a caption (marking a
    word marks all its occurrences). BlendWordsError if none remains."""
    words: list[str] = []
    for target in targets:
        a, b, opcodes = _opcodes(source, target)
        unchanged = {_key(w) for op, i1, i2, _, _ in opcodes if op == "equal" for w in a[i1:i2]}
        for op, i1, i2, j1, j2 in opcodes:
            # an insertion before a word refines it ("a cat" → "a red cat"): that word is the region too
            refined = [a[i1]] if op == "insert" and i1 < len(a) else []
            for w in (a[i1:i2] + b[j1:j2] + refined) if op != "equal" else []:
                if _key(w) and _key(w) not in (unchanged - {_key(v) for v in refined}) | FUNCTION_WORDS \
                        and _key(w) not in map(_key, words):
                    words.append(w.strip(string.punctuation))
    if not words:
        raise BlendWordsError(f"--blend auto: no target changes a word of the source caption {short(repr(source), 60)} "
                              "that local blend could mark — name the region with --blend WORDS or --mask FILE")
    return words


def edit_preview(source: str, targets: list[str]) -> tuple[list[str], list[str]]:
    """What a page shows while the targets are typed: one line per target ("edit 1: "cat" → "tiger""), and
    the words `--blend auto` would mark (none while no target changes a word it could mark)."""
    lines = [f"edit {i}: {describe(word_diff(source, t))}" for i, t in enumerate(targets, 1)]
    try:
        return lines, auto_blend_words(source, targets)
    except BlendWordsError:
        return lines, []


def unnamed_region_warnings(source: str, targets: list[str]) -> list[str]:
    """One line per target that replaces no word and appends words after the source caption's last one
    ("a photo" → "a photo of a tiger"): the source caption names nothing they could replace, and
    Prompt-to-Prompt edits what the source caption names. Inserting before a word ("a cat" → "a red
    cat") refines that word and is not warned of."""
    out = []
    for target in targets:
        a, b, opcodes = _opcodes(source, target)
        changed = [(op, i1, j1, j2) for op, i1, _, j1, j2 in opcodes if op != "equal"]
        if changed and all(op == "insert" for op, *_ in changed) and any(i1 == len(a) for _, i1, _, _ in changed):
            added = ", ".join(f'"{" ".join(b[j1:j2])}"' for _, _, j1, j2 in changed)
            out.append(f"target {short(repr(target), 60)} only adds {added} after the source caption: if it should "
                       "replace something in the photo, name that thing in the source caption (re-invert with --prompt)")
    return out
