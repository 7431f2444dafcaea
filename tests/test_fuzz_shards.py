"""Bounded fuzzing of the tar reader and the shard sink with Hypothesis.

Archives are generated (GNU and PAX formats; long, non-UTF-8, unsafe and extension-less names;
duplicate keys; PAX records, including crafted ``size`` and ``GNU.sparse.*`` ones) and then
mutated (truncation, bit flips, crafted headers: sizes of 2**80, negative base-256 sizes, other
member types). For every case:

* the reader raises nothing: all damage is a dead letter (no exception type is allowed out);
* each case finishes in under 10 s (``signal.setitimer`` per example);
* accounting holds: records read = samples + dead letters, and the sink's manifest agrees;
* the product read back from Parquet equals the samples the reader accepted, and the dead
  letters read back equal those it emitted;
* memory stays under a cap: the peak traced by ``tracemalloc`` while reading and writing one
  case is below 32 MiB (inputs are < 64 kB; budgets are 1 MiB per member, 64 kB of headers),
  so no size claimed by a header is ever allocated.

Runs are seeded (``derandomize=True``) and bounded: 100 examples per test by default, under a
minute together; set ``MEDIABEAM_FUZZ_EXAMPLES=5000`` to fuzz longer.
"""

import io
import json
import os
import signal
import tarfile
import tempfile
import tracemalloc
from contextlib import contextmanager

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.budgets import Budgets
from schemas.common import MediaSample
from schemas.tables import TableSpec
from transforms.errors import DEAD_LETTER_TAG
from transforms.io.layout import join
from transforms.io.read_shards import ReadShardFn
from transforms.io.sink import ShardSinkFn
from transforms.io.writers import ParquetWriter, read_dead_letters_jsonl

EXAMPLES = int(os.environ.get("MEDIABEAM_FUZZ_EXAMPLES", "100"))
CASE_SECONDS = 10
MEMORY_CAP = 32 << 20
BUDGETS = Budgets(member_bytes=1 << 20, header_bytes=64 << 10, sample_members=8)
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SAMPLE_SCHEMA = pa.schema([("key", pa.string()), ("source", pa.string()),
                           ("members", pa.map_(pa.string(), pa.binary()))])


def samples_table(rows):
    return pa.table({"key": [r.key for r in rows], "source": [r.source for r in rows],
                     "members": [sorted(r.members.items()) for r in rows]}, schema=SAMPLE_SCHEMA)


def samples_from_table(table):
    return [MediaSample(r["key"], r["source"], dict(r["members"])) for r in table.to_pylist()]


def sample_sort_key(sample):
    return sample.key, sorted(sample.members.items())


SAMPLES = TableSpec("samples", SAMPLE_SCHEMA, samples_table, samples_from_table, sample_sort_key)


class CaseTimeout(Exception):
    """One fuzz case ran past ``CASE_SECONDS``."""


@contextmanager
def time_limit(seconds):
    def expire(signum, frame):
        raise CaseTimeout(f"case ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


keys = st.sampled_from(["a", "b", "c", "dir/d", "caf\udce9", "x" * 120])
exts = st.sampled_from(["wav", "jpg", "json", "seg.jpg", "TXT"])
odd_names = st.sampled_from(["../up.wav", "/abs.wav", "noext", ".hidden", "dir/", "a..b", "é/ü.wav"])
names = st.one_of(st.builds(lambda k, e: f"{k}.{e}", keys, exts), odd_names)
pax_records = st.dictionaries(
    st.sampled_from(["comment", "size", "path", "GNU.sparse.major", "GNU.sparse.realsize", "mtime"]),
    st.one_of(st.text(max_size=30), st.integers(0, 2**70).map(str)), max_size=2)
members = st.lists(st.tuples(names, st.binary(max_size=700), pax_records), min_size=1, max_size=8)


def build_tar(entries, fmt):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for name, data, pax in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if fmt == tarfile.PAX_FORMAT:
                info.pax_headers = dict(pax)
            try:
                tar.addfile(info, io.BytesIO(data))
            except (ValueError, UnicodeError):
                continue  # tarfile itself refuses this name in this format
    return buf.getvalue()


def header_offsets(data):
    """Offsets of every header block tarfile finds before the first damage."""
    offsets = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
            for info in tar:
                offsets += [info.offset, info.offset_data - 512]
    except (tarfile.TarError, ValueError, OverflowError):
        pass
    return sorted(set(offsets)) or [0]


def set_size(block, size):
    field = (size % 256**12).to_bytes(12, "big") if size < 0 else b"\x80" + size.to_bytes(11, "big")
    block[124:136] = field


def fix_checksum(block):
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


@st.composite
def mutated(draw):
    data = bytearray(build_tar(draw(members), draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "size", "type", "garbage"]))
        if not data:
            break
        if kind == "truncate":
            del data[draw(st.integers(0, len(data) - 1)):]
        elif kind == "flip":
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "garbage":
            pos = draw(st.integers(0, len(data) - 1))
            data[pos:pos + 16] = draw(st.binary(min_size=16, max_size=16))
        else:
            at = draw(st.sampled_from(header_offsets(bytes(data))))
            block = bytearray(data[at:at + 512].ljust(512, b"\0"))
            if kind == "size":
                set_size(block, draw(st.sampled_from([2**80, -1, -(2**40), 2**33, 1 << 21, 513])))
            else:
                block[156:157] = draw(st.sampled_from([b"S", b"2", b"1", b"6", b"x", b"g", b"L", b"K", b"V", b"5"]))
            fix_checksum(block)
            data[at:at + 512] = block
    return bytes(data)


def read_and_write(data):
    """Reads ``data`` as a shard and writes it through the sink; returns what was accepted,
    what was written and the manifest, checking time and memory."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "fuzz.tar")
        with open(source, "wb") as f:
            f.write(data)
        out = os.path.join(tmp, "out")
        tracemalloc.start()
        try:
            with time_limit(CASE_SECONDS):
                emitted = list(ReadShardFn(BUDGETS).process(source))
                samples = [o for o in emitted if not isinstance(o, beam.pvalue.TaggedOutput)]
                tagged = [o for o in emitted if isinstance(o, beam.pvalue.TaggedOutput)]
                dead = [o.value for o in tagged if o.tag == DEAD_LETTER_TAG]
                stats = [o.value for o in tagged if o.tag == "shard_stats"]
                grouped = {"rows": samples, "dead_letters": dead, "stats": stats}
                manifest = next(iter(ShardSinkFn(out, SAMPLES, [ParquetWriter(3)]).process((source, grouped))))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < MEMORY_CAP, f"peak traced memory {peak} bytes"
        assert stats[0].records == len(samples) + len(dead) == manifest["records"]
        written = []
        for rel in manifest["files"]:
            if rel.endswith(".parquet"):
                written += samples_from_table(pq.read_table(join(out, rel)))
        assert written == sorted(samples, key=sample_sort_key)
        dead_back = []
        if manifest["dead_letter_file"]:
            with open(join(out, manifest["dead_letter_file"]), "rb") as f:
                dead_back = read_dead_letters_jsonl(f.read())
        assert sorted(dead_back) == sorted(dead)
        json.dumps(manifest)
        return samples, dead


@FUZZ
@given(mutated())
def test_mutated_archives_are_samples_or_dead_letters(data):
    read_and_write(data)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "caf\udce9", "l" * 150]),
                          st.sampled_from(["wav", "jpg"]), st.binary(max_size=300)), min_size=1, max_size=6),
       st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
def test_valid_archives_round_trip_exactly(entries, fmt):
    """Well-formed archives: consecutive members sharing a key form one sample (a repeated
    extension makes it a dead letter); every other sample comes back byte for byte."""
    data = build_tar([(f"{k}.{e}", payload, {}) for k, e, payload in entries], fmt)
    expected, current = [], None
    for key, ext, payload in entries:
        text_key = key.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\ufffd", "\\xe9")
        if current is None or current[0] != text_key:
            current = [text_key, {}, False]
            expected.append(current)
        current[2] = current[2] or ext in current[1]
        current[1][ext] = payload
    samples, dead = read_and_write(data)
    def order(pair):
        return pair[0], sorted(pair[1].items())

    assert sorted(((s.key, s.members) for s in samples), key=order) == sorted(
        ((k, m) for k, m, dup in expected if not dup), key=order)
    assert sorted(d.key for d in dead) == sorted(k for k, _, dup in expected if dup)
