"""Exact deduplication: which copy of a group of documents with the same media hash is kept.

The choice depends only on the candidates, never on the order they arrive in, so every runner
and worker count keeps the same copy: a copy already written by an earlier run (``--resume``,
``--retry-dead-letters``) if there is one, else the smallest ``(source, key)`` (ties, which a
hostile shard repeating a key can make, broken by the tokens' bytes).
"""

from typing import NamedTuple, Sequence

DUPLICATE_REASON = "exact duplicate"


class Candidate(NamedTuple):
    """One document of a same-hash group.

    Attributes:
        written: Already in the output from an earlier run (it stays; it cannot be un-written).
        source: Shard of the sample.
        key: Key of the sample.
        tokens: The document's token bytes (the last tie-breaker).
    """

    written: bool
    source: str
    key: str
    tokens: bytes


def kept_index(candidates: Sequence[Candidate]) -> int:
    """Index of the candidate that is kept (see the module docstring).

    Raises:
        ValueError: If ``candidates`` is empty.
    """
    if not candidates:
        raise ValueError("a duplicate group has at least one document")
    return min(range(len(candidates)),
               key=lambda i: (not candidates[i].written, candidates[i].source, candidates[i].key, candidates[i].tokens))
