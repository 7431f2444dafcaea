"""Packing and the global shuffle: the numpy packer against a token-by-token reference, and
the shuffle's order and shard split against a plain sort."""

import random

import numpy as np
import pytest

from operators.corpus.packing import PAD_DOCUMENT, pack_documents
from operators.corpus.shuffle import check_seed, hash64, order_key, shard_for_key, shard_of


def reference_pack(documents, seq_len, pad_id, first_id=0, mode="whole"):
    """The packing rules written out one token at a time (see operators/corpus/packing.py)."""
    rows, row = [], []

    def close():
        run = seq_len - len(row)
        row.extend((pad_id, PAD_DOCUMENT, p) for p in range(run))
        rows.append(list(row))
        row.clear()

    for d, doc in enumerate(documents):
        if mode == "whole" and len(doc) <= seq_len and len(row) + len(doc) > seq_len and row:
            close()
        position = 0
        for token in doc:
            if len(row) == seq_len:
                rows.append(list(row))
                row.clear()
                position = 0
            row.append((int(token), first_id + d, position))
            position += 1
    if row:
        close()
    table = np.array(rows, dtype=np.int64).reshape(len(rows), seq_len, 3)
    return table[..., 0], table[..., 1], table[..., 2]


def random_documents(rng, count, max_len):
    return [rng.integers(3, 1000, size=int(rng.integers(0, max_len + 1)), dtype=np.int32) for _ in range(count)]


@pytest.mark.parametrize("mode", ["whole", "concat"])
@pytest.mark.parametrize("seed,seq_len,max_len", [(0, 8, 5), (1, 8, 20), (2, 16, 16), (3, 1, 3), (4, 32, 90)])
def test_packer_matches_the_reference(seed, seq_len, max_len, mode):
    rng = np.random.default_rng(seed)
    docs = random_documents(rng, 40, max_len)
    packed = pack_documents(docs, seq_len, pad_id=0, first_document_id=7, mode=mode)
    tokens, document_ids, position_ids = reference_pack(docs, seq_len, 0, first_id=7, mode=mode)
    np.testing.assert_array_equal(packed.tokens, tokens)
    np.testing.assert_array_equal(packed.document_ids, document_ids)
    np.testing.assert_array_equal(packed.position_ids, position_ids)
    assert packed.tokens.dtype == packed.document_ids.dtype == packed.position_ids.dtype == np.int32
    assert packed.num_tokens == sum(d.size for d in docs)
    assert packed.num_padding == int((document_ids == PAD_DOCUMENT).sum())
    assert packed.padding_fraction == pytest.approx(packed.num_padding / tokens.size)


def test_documents_come_back_in_order_and_whole():
    rng = np.random.default_rng(5)
    docs = random_documents(rng, 30, 25)
    packed = pack_documents(docs, 10, pad_id=2)
    flat_ids, flat_tokens = packed.document_ids.ravel(), packed.tokens.ravel()
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(flat_tokens[flat_ids == i], doc)
        if 0 < doc.size <= 10:  # fits: never split over two sequences
            assert len(np.unique(np.nonzero(packed.document_ids == i)[0])) == 1
    assert np.all(flat_tokens[flat_ids == PAD_DOCUMENT] == 2)


def test_concatenated_full_sequences_need_no_padding():
    docs = [np.arange(4, dtype=np.int32) + 10 * i for i in range(6)]
    packed = pack_documents(docs, 8, pad_id=0)
    assert packed.num_sequences == 3 and packed.num_padding == 0 and packed.padding_fraction == 0.0


def test_concat_mode_pads_only_the_last_sequence():
    docs = [np.full(5, i + 3, dtype=np.int32) for i in range(7)]  # 5 > 8 / 2: whole puts one per row
    whole, concat = (pack_documents(docs, 8, pad_id=0, mode=m) for m in ("whole", "concat"))
    assert whole.num_sequences == 7 and whole.num_padding == 7 * 3
    assert concat.num_sequences == 5 and concat.num_padding == 5 * 8 - 35
    np.testing.assert_array_equal(concat.tokens.ravel()[:35], np.concatenate(docs))


def test_empty_input_packs_to_nothing():
    packed = pack_documents([], 16, pad_id=0)
    assert packed.tokens.shape == (0, 16) and packed.num_tokens == 0 and packed.padding_fraction == 0.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="seq_len"):
        pack_documents([np.ones(3, np.int32)], 0, pad_id=0)
    with pytest.raises(ValueError, match="mode"):
        pack_documents([np.ones(3, np.int32)], 4, pad_id=0, mode="greedy")
    with pytest.raises(ValueError, match="int32"):
        pack_documents([np.ones(3, np.int32)], 4, pad_id=0, first_document_id=2**31)
    with pytest.raises(ValueError, match="seed"):
        check_seed(-1)
    check_seed(2**64 - 1)


def test_global_order_does_not_depend_on_input_order_or_sharding():
    keys = [f"sample-{i:05d}" for i in range(500)]
    expected = sorted(keys, key=lambda k: order_key(11, k))
    shuffled = list(keys)
    random.Random(3).shuffle(shuffled)
    assert sorted(shuffled, key=lambda k: order_key(11, k)) == expected
    assert expected != sorted(keys, key=lambda k: order_key(12, k))  # the seed matters
    assert expected != keys  # and it does shuffle
    for num_shards in (1, 2, 3, 7):
        shards = [[] for _ in range(num_shards)]
        for key in shuffled:  # every worker assigns on its own, in any order
            shards[shard_for_key(11, key, num_shards)].append(key)
        concatenated = [k for shard in shards for k in sorted(shard, key=lambda k: order_key(11, k))]
        assert concatenated == expected
        assert min(map(len, shards)) > 500 / num_shards / 2  # hash ranges are balanced


def test_shard_ranges_cover_the_hash_space():
    for num_shards in (1, 2, 5):
        assert shard_of(0, num_shards) == 0
        assert shard_of(2**64 - 1, num_shards) == num_shards - 1
        bounds = [shard_of(-(-i * 2**64 // num_shards), num_shards) for i in range(num_shards)]
        assert bounds == list(range(num_shards))
    assert hash64(1, "a\udcff") != hash64(1, "a")  # undecodable names hash too
