"""The seeded global shuffle of a corpus and its split into export shards.

The order of the documents is a pure function of ``(seed, key)``: documents are sorted by
``(hash64(seed, key), key)``, so every runner, worker count and input sharding gives the same
order, and no step ever needs to see the whole corpus at once. The export shards split the
64-bit hash space into ``num_shards`` equal ranges: shard ``i`` holds exactly the documents
whose hash falls in its range, so each shard is ordered and packed on its own, in parallel,
and shards ``0, 1, …, N-1`` concatenated are the global order.
"""

import hashlib
from typing import Tuple

HASH_BITS = 64


def hash64(seed: int, key: str) -> int:
    """A 64-bit keyed hash of a document key (BLAKE2b, keyed with the seed).

    Keys that are not valid Unicode (lone surrogates from undecodable file names) hash
    through ``surrogatepass``, so every key has a hash.

    Args:
        seed: The shuffle seed, ``0 <= seed < 2**64``.
        key: The document's key.
    """
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogatepass"), digest_size=8, key=seed.to_bytes(8, "little")
    ).digest()
    return int.from_bytes(digest, "big")


def order_key(seed: int, key: str) -> Tuple[int, str]:
    """The sort key of a document in the global order: ``(hash64(seed, key), key)``."""
    return hash64(seed, key), key


def shard_of(hash_value: int, num_shards: int) -> int:
    """The export shard of a document hash: shard ``i`` holds ``[i·2⁶⁴/N, (i+1)·2⁶⁴/N)``."""
    return (hash_value * num_shards) >> HASH_BITS


def shard_for_key(seed: int, key: str, num_shards: int) -> int:
    """The export shard of the document ``key``."""
    return shard_of(hash64(seed, key), num_shards)


def check_seed(seed: int) -> None:
    """Raises ``ValueError`` unless ``0 <= seed < 2**64`` (the hash key is 8 bytes)."""
    if not 0 <= seed < 1 << HASH_BITS:
        raise ValueError(f"shuffle seed {seed} must be in [0, 2**64)")
