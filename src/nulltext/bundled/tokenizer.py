"""A small vocabulary in CLIP's BPE format for the bundled model.

CLIP's own vocabulary has 49,408 tokens; with the bundled model's 64-wide text encoder its embedding
table alone would be 12 MB, half the size budget, for words the model never saw. So the bundled
tokenizer keeps CLIP's exact format and algorithm (byte-level BPE, lower-casing, `</w>` word ends,
`<|startoftext|>`/`<|endoftext|>`) and CLIP's 512 byte-level base tokens, and learns merges only for
the words of the training captions, until each of them is one token. Any other word still
tokenizes, into one token per character ("tiger" → t, i, g, e, r</w>): that is how multi-token words
arise and are handled, as with real CLIP.

The result is a stock `transformers.CLIPTokenizer`, saved with `save_pretrained`.
"""

from __future__ import annotations

from collections import Counter

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2/CLIP's reversible byte → character map

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges, most frequent pair first, until every word is a single symbol."""
    byte_map = bytes_to_unicode()
    corpus = {}
    for w in words:
        symbols = [byte_map[b] for b in w.encode("utf-8")]
        symbols[-1] += "</w>"
        corpus[w] = symbols
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols in corpus.values():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += 1
        if not pairs:
            return merges
        best = max(pairs, key=lambda p: (pairs[p], p))  # deterministic tie-break
        merges.append(best)
        for w, symbols in corpus.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            corpus[w] = merged


def build_tokenizer(words: list[str], model_max_length: int) -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary is CLIP's byte tokens plus one token per word in `words`."""
    base = list(bytes_to_unicode().values())
    vocab_list = base + [c + "</w>" for c in base]
    merges = learn_merges(sorted(set(words)))
    vocab_list += ["".join(m) for m in merges]
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=model_max_length,
    )
    for w in words:  # each caption word must be exactly one token
        ids = tokenizer(w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"bundled tokenizer splits {w!r} into {len(ids)} tokens")
    return tokenizer


def write_vocab_files(folder) -> None:
    """Also write vocab.json and merges.txt, which transformers 4's slow CLIPTokenizer reads."""
    import json
    from pathlib import Path

    folder = Path(folder)
    spec = json.loads((folder / "tokenizer.json").read_text())["model"]
    (folder / "vocab.json").write_text(json.dumps(spec["vocab"], ensure_ascii=False) + "\n")
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
