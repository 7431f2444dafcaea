"""Token id ⇄ text: character labels or a SentencePiece model (NeMo's two tokenizer kinds)."""

from typing import List, Sequence


class CharVocabulary:
    """Character labels (NeMo ``decoder.vocabulary`` of char models)."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        self._index = {label: i for i, label in enumerate(self.labels)}

    @property
    def size(self) -> int:
        return len(self.labels)

    def encode(self, text: str) -> List[int]:
        """Maps characters to ids, skipping characters outside the vocabulary."""
        return [self._index[ch] for ch in text if ch in self._index]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.labels[i] for i in ids)


class SentencePieceVocabulary:
    """A SentencePiece model (NeMo ``tokenizer.model``), loaded from bytes."""

    def __init__(self, model_proto: bytes):
        import sentencepiece

        self.processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)

    @property
    def size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> List[int]:
        return list(self.processor.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode(list(ids))
