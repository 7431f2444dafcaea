"""Text → token ids: UTF-8 bytes by default, or any local Hugging Face ``tokenizer.json``.

Both tokenizers are deterministic, need no download and report their own id space (``size``)
and a ``version`` that pins the meaning of their ids (for a ``tokenizer.json``: a content
hash of the file), so ``__vocab.json`` records exactly which text vocabulary a corpus used.
"""

import hashlib
from typing import Optional

import numpy as np

BYTE_TEXT_TOKENIZER = "utf8-bytes"


class ByteTextTokenizer:
    """Text as its UTF-8 bytes: id ``b`` is byte ``b`` (256 ids, nothing to download)."""

    name = BYTE_TEXT_TOKENIZER
    version = "1"
    size = 256

    def encode(self, text: str) -> np.ndarray:
        """UTF-8 bytes of ``text`` as int32 ids."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: np.ndarray) -> str:
        """The text the ids spell (invalid UTF-8 is replaced, never raised)."""
        return np.asarray(ids).astype(np.uint8).tobytes().decode("utf-8", "replace")


class HFTextTokenizer:
    """A local Hugging Face ``tokenizers`` file (``tokenizer.json`` of GPT-2, Llama, ...).

    Special tokens of the file are not added (documents carry their own BOS/EOS markers).

    Args:
        path: The ``tokenizer.json`` file.

    Raises:
        ValueError: If the file is missing or not a ``tokenizers`` file.
    """

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        try:
            with open(path, "rb") as f:
                content = f.read()
            self._tokenizer = Tokenizer.from_str(content.decode("utf-8"))
        except Exception as err:  # OSError, bad UTF-8 or the library's own (plain) Exception
            raise ValueError(f"{path!r} is not a readable Hugging Face tokenizer.json: {err}") from err
        self.path = path
        self.name = f"hf-tokenizers:{path.replace(chr(92), '/').rsplit('/', 1)[-1]}"
        self.version = "sha256-" + hashlib.sha256(content).hexdigest()[:16]
        self.size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` (no special tokens added) as int32."""
        return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids: np.ndarray) -> str:
        """The text of ``ids`` (exact for byte-level BPE tokenizers such as GPT-2's)."""
        return self._tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)


def build_text_tokenizer(path: Optional[str] = None):
    """UTF-8 bytes when ``path`` is None, else the ``tokenizer.json`` at ``path``."""
    return ByteTextTokenizer() if path is None else HFTextTokenizer(path)
