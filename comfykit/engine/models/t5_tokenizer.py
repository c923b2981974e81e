"""Google's T5 v1.1 SentencePiece tokenizer, offline, from the vendored Apache-2.0 vocabulary (`tokenizers` library).

>>> get_t5_tokenizer().encode("a photo of a cat")
[3, 9, 1202, 13, 3, 9, 1712]
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

T5_PAD, T5_EOS, T5_UNK = 0, 1, 2
VOCAB_FILE = Path(__file__).with_name("t5_tokenizer.json.gz")


class T5Tokenizer:
    """Text -> T5 token ids, as ComfyUI's `T5TokenizerFast` gives them (no start token; `</s>` = 1 ends a prompt)."""

    def __init__(self, vocab_file: Path = VOCAB_FILE):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError("the T5 tokenizer needs the `tokenizers` package: pip install tokenizers "
                              "(or pip install 'comfykit[engine]')") from None
        self._tok = Tokenizer.from_str(gzip.decompress(vocab_file.read_bytes()).decode("utf-8"))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without the end token (what ComfyUI keeps of each prompt segment)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def __call__(self, text: str) -> list[int]:
        """Token ids of `text` with the end token."""
        return [*self.encode(text), T5_EOS]

    @property
    def vocab_size(self) -> int:
        """Number of ids (32,100: 32,000 pieces and 100 sentinel tokens)."""
        return self._tok.get_vocab_size()


@lru_cache(maxsize=1)
def get_t5_tokenizer() -> T5Tokenizer:
    """The shared T5 tokenizer (read once per process; it is never mutated)."""
    return T5Tokenizer()
