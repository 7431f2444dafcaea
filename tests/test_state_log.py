"""``ShardStateLog``: replay, what a commit appends, rewriting, the states a worker wrote taken back
instead of decoded, and the DoFn writing only touched streams."""

import numpy as np
import pytest

from transforms.live.coder import NumpyTreeCoder
from transforms.live.state_log import (
    BOOK,
    END,
    RECORD_CODER,
    REWRITE_SLACK_BYTES,
    STATE,
    ShardStateLog,
    WrittenStates,
)

BOOK_TREE = {"streams": {"a": {"next": 3}}, "closed": {}}


def _state(seed: int, size: int = 1000) -> dict:
    return {"cache": np.random.default_rng(seed).standard_normal(size).astype(np.float32), "steps": np.int64(seed)}


def _replay(records):
    coded = [RECORD_CODER.encode(record) for record in records]  # what a runner stores
    return ShardStateLog([RECORD_CODER.decode(item) for item in coded])


def test_replay_last_record_wins_and_end_removes():
    coder = NumpyTreeCoder()
    records = [(BOOK, "", coder.encode({"v": 1})), (STATE, "a", coder.encode(_state(1))),
               (STATE, "b", coder.encode(_state(2))), (STATE, "a", coder.encode(_state(3))),
               (END, "b", b""), (BOOK, "", coder.encode({"v": 2}))]
    log = _replay(records)
    assert log.book() == {"v": 2}
    assert list(log) == ["a"] and "b" not in log and len(log) == 1
    np.testing.assert_array_equal(log["a"]["cache"], _state(3)["cache"])
    with pytest.raises(KeyError):
        log["b"]


def test_commit_appends_only_what_changed_and_replays_to_the_same_state():
    log = ShardStateLog()
    log["a"], log["b"] = _state(1), _state(2)
    rewrite, records = log.commit(BOOK_TREE)
    assert not rewrite and [(k, s) for k, s, _ in records] == [(BOOK, ""), (STATE, "a"), (STATE, "b")]
    bag = list(records)
    again = _replay(bag)
    again["a"] = _state(5)  # b is read by nobody and must not be re-coded
    rewrite, records = again.commit(BOOK_TREE)
    assert not rewrite and [(k, s) for k, s, _ in records] == [(STATE, "a")]  # the book did not change
    bag += records
    del again["a"]
    rewrite, records = again.commit({"streams": {}, "closed": {"a": 1.0}})
    assert [(k, s) for k, s, _ in records] == [(BOOK, ""), (END, "a")]
    bag += records
    final = _replay(bag)
    assert list(final) == ["b"] and final.book() == {"streams": {}, "closed": {"a": 1.0}}
    np.testing.assert_array_equal(final["b"]["cache"], _state(2)["cache"])
    assert final.commit({"streams": {}, "closed": {"a": 1.0}}) == (False, [])  # nothing to write


def test_log_is_rewritten_from_live_records_when_it_outgrows_them():
    size = REWRITE_SLACK_BYTES // 8  # float32: two streams of REWRITE_SLACK / 2 bytes each
    bag, log = [], ShardStateLog()
    log["a"], log["b"] = _state(1, size), _state(2, size)
    rewrites = []
    for step in range(8):
        rewrite, records = log.commit(BOOK_TREE)
        rewrites.append(rewrite)
        bag = list(records) if rewrite else bag + records
        assert sum(len(p) for _, _, p in bag) <= 2 * 2 * 4 * size + REWRITE_SLACK_BYTES + 4096
        log = _replay(bag)
        log["a"] = _state(10 + step, size)  # only a changes
    assert rewrites[0] is False and any(rewrites[1:])
    final = _replay(bag)
    assert sorted(final) == ["a", "b"]
    np.testing.assert_array_equal(final["b"]["cache"], _state(2, size)["cache"])
    np.testing.assert_array_equal(final["a"]["cache"], _state(16, size)["cache"])  # the last committed a


def test_empty_shard_clears_its_log_once():
    log = ShardStateLog()
    log["a"] = _state(1)
    _, records = log.commit(BOOK_TREE)
    shard = _replay(records)
    del shard["a"]
    assert shard.commit(None) == (True, [])  # clear the bag
    assert ShardStateLog().commit(None) == (False, [])  # nothing was there


def test_corrupt_record_kind_is_refused():
    with pytest.raises(ValueError, match="record kind 'bogus'"):
        ShardStateLog([("bogus", "a", b"")])


def test_written_states_come_back_for_their_own_record_only():
    """A state committed through ``WrittenStates`` is handed back (not decoded) for its record,
    as the same bytes object or equal bytes read back from a runner; a record with other
    contents (another worker wrote it, or a restore) is decoded; an ended stream is forgotten."""
    written = WrittenStates()
    log = ShardStateLog(written=written)
    log["a"], log["b"] = _state(1), _state(2)
    _, records = log.commit(BOOK_TREE)
    same = ShardStateLog(records, written)
    assert same["a"] is log["a"] and same.has_book(records[0][2])
    read_back = ShardStateLog([RECORD_CODER.decode(RECORD_CODER.encode(r)) for r in records], written)
    assert read_back["b"] is log["b"]
    with pytest.raises(ValueError):
        read_back["b"]["cache"][0] = 1.0  # kept states are read-only: an engine returns new ones
    other = ShardStateLog(records + [(STATE, "a", NumpyTreeCoder().encode(_state(7)))], written)
    assert other["a"] is not log["a"]
    np.testing.assert_array_equal(other["a"]["cache"], _state(7)["cache"])
    del same["a"]
    same.commit(BOOK_TREE)
    assert written.get("a", records[1][2]) is None and len(written) == 1


def test_written_states_stay_within_their_bytes():
    coder = NumpyTreeCoder()
    coded = {sid: coder.encode(_state(i, 1000)) for i, sid in enumerate("abc")}
    written = WrittenStates(max_bytes=2 * len(coded["a"]) + 10)
    for sid in "abc":
        written.put(sid, coded[sid], coder.decode(coded[sid]))
    assert len(written) == 2 and written.get("a", coded["a"]) is None  # least recently used went first
    assert written.get("c", coded["c"]) is not None
    WrittenStates(max_bytes=0).put("a", coded["a"], {})  # too big for the bound: not kept, no error
