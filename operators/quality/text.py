"""Word error rate: the word-level edit distance between a reference and a hypothesis transcript."""

from typing import NamedTuple, Sequence

import numpy as np


class WordErrors(NamedTuple):
    """Edit operations turning the reference words into the hypothesis words.

    Attributes:
        errors: Substitutions + deletions + insertions (the Levenshtein distance).
        reference_words: Words in the reference (a corpus WER is Σ errors / Σ reference_words).
    """

    errors: int
    reference_words: int

    @property
    def wer(self) -> float:
        """errors / reference words; against an empty reference, 0.0 if the hypothesis is
        empty too and 1.0 otherwise (any insertion is a whole error)."""
        if self.reference_words == 0:
            return float(self.errors > 0)
        return self.errors / self.reference_words


def words(text: str) -> list:
    """Lower-case whitespace-separated words (no other normalisation)."""
    return text.lower().split()


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences (unit costs).

    One NumPy pass per reference word: with ``a[j] = min(previous[j] + 1, previous[j-1] + cost)``
    the row is ``current[j] = min_k≤j (a[k] + j − k)``, a running minimum, so the insertion chain
    along the row needs no Python loop.
    """
    ids: dict = {}
    ref = np.array([ids.setdefault(w, len(ids)) for w in reference], np.int64)
    hyp = np.array([ids.setdefault(w, len(ids)) for w in hypothesis], np.int64)
    columns = np.arange(len(hyp) + 1)
    previous = columns.copy()
    for i, word in enumerate(ref, 1):
        best = np.empty_like(previous)
        best[0] = i
        best[1:] = np.minimum(previous[1:] + 1, previous[:-1] + (hyp != word))
        previous = columns + np.minimum.accumulate(best - columns)
    return int(previous[-1])


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """The word errors of ``hypothesis`` against ``reference`` (see :func:`words`)."""
    ref = words(reference)
    return WordErrors(edit_distance(ref, words(hypothesis)), len(ref))
