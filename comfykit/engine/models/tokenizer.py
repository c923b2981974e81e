"""OpenAI CLIP's byte-pair tokenizer, offline, from the vendored MIT vocabulary (a small pure-Python BPE)."""

from __future__ import annotations

import gzip
import html
import re
from functools import lru_cache
from pathlib import Path

import regex

BOS, EOS = 49406, 49407
VOCAB_FILE = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")

_WORD = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                      regex.IGNORECASE)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


class CLIPTokenizer:
    """Text -> CLIP token ids; `"a photo of a cat"` -> [49406, 320, 1125, 539, 320, 2368, 49407]."""

    def __init__(self, vocab_file: Path = VOCAB_FILE):
        merges = gzip.open(vocab_file, "rt", encoding="utf-8").read().split("\n")[1:49152 - 256 - 2 + 1]
        pairs = [tuple(m.split()) for m in merges]
        self.byte_encoder = _bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab] + ["".join(p) for p in pairs] + ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {p: i for i, p in enumerate(pairs)}
        self._cache: dict[str, list[int]] = {}

    def _bpe(self, token: str) -> list[int]:
        if token in self._cache:
            return self._cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = [self.encoder[w] for w in word]
        self._cache[token] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without the start/end tokens."""
        text = re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip().lower()
        ids: list[int] = []
        for piece in _WORD.findall(text):
            ids += self._bpe("".join(self.byte_encoder[b] for b in piece.encode("utf-8")))
        return ids

    def __call__(self, text: str) -> list[int]:
        """Token ids of `text` with the start and end tokens."""
        return [BOS, *self.encode(text), EOS]


@lru_cache(maxsize=1)
def get_tokenizer() -> CLIPTokenizer:
    """The shared tokenizer (the vocabulary is read once per process; it is never mutated)."""
    return CLIPTokenizer()
