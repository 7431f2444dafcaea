"""Packing documents into fixed-length training sequences, keeping document boundaries.

Documents are laid out one after the other, in the order given, over rows of ``seq_len``
tokens, in one of two modes (:data:`PACKING_MODES`):

* ``whole``: a document that fits in a sequence is never split: when it does not fit in the
  room left in the current sequence, that room is padded (``pad_id``) and the document starts
  the next sequence. A document longer than ``seq_len`` cannot fit anywhere, so it is split:
  it starts right where the previous document ended and runs on over as many sequences as
  it needs. Best when a split document is useless (an image cut in two).
* ``concat``: documents run end to end and are cut at every ``seq_len`` boundary, as
  Megatron's ``GPTDataset`` does: no padding but the last sequence's.

Either way a piece of a split document is a document of its own to the attention mask (its
positions restart at 0 at the sequence start) and keeps the document's id, and the last
sequence is padded to ``seq_len``.

Per token the packer gives the document id (the document's index in the order, offset by
``first_document_id``; -1 on padding) and the position inside its piece of document, which
restarts at 0 at every document start and every sequence start. A run of padding counts
positions from 0 like a document does, so a trainer can derive attention masks (same
document id) or flash-attention varlen boundaries (``position_ids == 0``) directly.
"""

from typing import NamedTuple, Sequence

import numpy as np

PAD_DOCUMENT = -1
"""``document_ids`` value of padding tokens."""
PACKING_MODES = ("whole", "concat")


class PackedSequences(NamedTuple):
    """Packed sequences: three ``[num_sequences, seq_len]`` int32 arrays and counts.

    Attributes:
        tokens: Token ids; padding is the vocabulary's pad id.
        document_ids: The document each token belongs to; ``PAD_DOCUMENT`` on padding.
        position_ids: Position inside the token's piece of document (or run of padding).
        num_tokens: Document tokens (everything but padding).
        num_padding: Padding tokens.
    """

    tokens: np.ndarray
    document_ids: np.ndarray
    position_ids: np.ndarray
    num_tokens: int
    num_padding: int

    @property
    def num_sequences(self) -> int:
        """How many sequences there are."""
        return int(self.tokens.shape[0])

    @property
    def padding_fraction(self) -> float:
        """Padding tokens over all tokens (0.0 when there are no sequences)."""
        total = self.num_tokens + self.num_padding
        return self.num_padding / total if total else 0.0


def document_starts(lengths: np.ndarray, seq_len: int, mode: str = "whole") -> np.ndarray:
    """Where each document starts in the flat stream of ``num_sequences · seq_len`` slots.

    Args:
        lengths: Tokens per document, in packing order.
        seq_len: Tokens per sequence.
        mode: One of :data:`PACKING_MODES`.

    Returns:
        int64 start offsets; document ``i`` occupies ``[starts[i], starts[i] + lengths[i])``.
    """
    if mode == "concat":
        return np.cumsum(lengths) - lengths
    starts = np.empty(len(lengths), dtype=np.int64)
    pos = 0
    for i, n in enumerate(lengths.tolist()):
        room = seq_len - pos % seq_len
        if n <= seq_len and n > room and room != seq_len:
            pos += room
        starts[i] = pos
        pos += n
    return starts


def pack_documents(
    documents: Sequence[np.ndarray], seq_len: int, pad_id: int, first_document_id: int = 0, mode: str = "whole"
) -> PackedSequences:
    """Packs ``documents`` (1-D integer token arrays, in order) into ``seq_len`` sequences.

    Args:
        documents: The documents' tokens, in the order they are packed.
        seq_len: Tokens per sequence (at least 1).
        pad_id: Token id of padding.
        first_document_id: Document id of ``documents[0]`` (ids count up from it).
        mode: One of :data:`PACKING_MODES` (see the module docstring).

    Raises:
        ValueError: ``seq_len`` below 1, an unknown mode, or document ids beyond int32.
    """
    if mode not in PACKING_MODES:
        raise ValueError(f"packing mode {mode!r}: choose from {PACKING_MODES}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    if first_document_id < 0 or first_document_id + len(documents) > np.iinfo(np.int32).max:
        raise ValueError("document ids must fit in int32")
    lengths = np.array([d.size for d in documents], dtype=np.int64)
    starts = document_starts(lengths, seq_len, mode)
    used = int(starts[-1] + lengths[-1]) if len(documents) else 0
    total = -(-used // seq_len) * seq_len
    num_tokens = int(lengths.sum())
    tokens = np.full(total, pad_id, dtype=np.int32)
    document_ids = np.full(total, PAD_DOCUMENT, dtype=np.int32)
    if num_tokens:
        into = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(num_tokens)
        tokens[into] = np.concatenate([np.asarray(d).ravel() for d in documents])
        document_ids[into] = np.repeat(np.arange(len(documents), dtype=np.int64) + first_document_id, lengths)
    segment_start = np.zeros(total, dtype=bool)
    segment_start[::seq_len] = True
    segment_start[starts[starts < total]] = True
    ends = starts + lengths
    segment_start[ends[ends < total]] = True
    slots = np.arange(total, dtype=np.int64)
    position_ids = slots - np.maximum.accumulate(np.where(segment_start, slots, 0)) if total else slots
    shape = (total // seq_len, seq_len)
    return PackedSequences(
        tokens.reshape(shape),
        document_ids.reshape(shape),
        position_ids.astype(np.int32).reshape(shape),
        num_tokens,
        total - num_tokens,
    )
