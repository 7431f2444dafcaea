"""ExportCorpus: the documents table in, shuffled and packed training exports out.

The graph: read the documents parts → key each document by its export shard (a hash range,
``operators.corpus.shuffle``) → count documents per shard (the side input that gives each
shard its first global document id) → per shard: sort into the global order, pack, write
every format → one last step writes the root MDS index, the Megatron blend, the dataset card
and ``stats.json``. Every file's bytes depend only on the documents, the seed, ``seq_len``
and the number of export shards: the same on any runner and any worker count.

Layout under ``<output>/__export/`` (``docs/exports.md``)::

    megatron/part-NNNNN.{bin,idx}   megatron/data_args.txt ("<tokens> part-NNNNN" pairs)
    mds/index.json                  mds/part-NNNNN/{index.json,shard.NNNNN.mds}
    parquet/part-NNNNN.parquet      parquet/README.md
    stats.json
"""

import hashlib
import json
from typing import Any, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from operators.corpus.packing import pack_documents
from operators.corpus.shuffle import order_key, shard_for_key
from schemas.exports import (
    DOCUMENT_COLUMNS,
    EXPORT_DIR,
    STATS_FILE,
    ExportDocument,
    ExportShardStats,
    mds_columns,
)
from transforms.errors import count
from transforms.io.exports import mds
from transforms.io.exports.dataset_card import dataset_card
from transforms.io.exports.megatron import indexed_dataset
from transforms.io.exports.parquet import packed_table
from transforms.io.layout import join, write_atomic
from transforms.io.writers import parquet_bytes

STAGE = "Export"


class ExportConfig(NamedTuple):
    """What the export needs besides the documents.

    Attributes:
        output_dir: The job's output folder (exports go to ``<output_dir>/__export``).
        formats: Formats to write, from ``schemas.exports.EXPORT_FORMATS``.
        seq_len: Tokens per packed sequence.
        packing: Packing mode (``operators.corpus.packing.PACKING_MODES``).
        seed: Shuffle seed.
        num_shards: Export shards (hash ranges), each packed and written by one worker.
        vocab: ``__vocab.json`` (``size``, ``specials`` with ``pad`` ...).
        token_dtype: Dtype name of tokens in Megatron and MDS files.
        command: The command that built the corpus (for the dataset card).
    """

    output_dir: str
    formats: Tuple[str, ...]
    seq_len: int
    packing: str
    seed: int
    num_shards: int
    vocab: Dict[str, Any]
    token_dtype: str
    command: str

    def path(self, relative: str) -> str:
        """Absolute path of a file relative to ``<output_dir>/__export``."""
        return join(self.output_dir, f"{EXPORT_DIR}/{relative}")


def part_name(shard: int) -> str:
    """The name every format gives export shard ``shard``."""
    return f"part-{shard:05d}"


def document_order(seed: int, doc: ExportDocument) -> Tuple[int, str, str, bytes]:
    """Sort key of the global order: ``(hash64(seed, key), key)``; equal keys (the same key in
    two input shards) by source, then by a digest of the tokens, so ties never depend on
    arrival order (documents equal in all four are equal documents)."""
    digest = hashlib.blake2b(np.ascontiguousarray(doc.tokens).view(np.uint8), digest_size=16).digest()
    return (*order_key(seed, doc.key), doc.source, digest)


class ReadDocuments(beam.DoFn):
    """Reads one documents part; emits ``(export shard, ExportDocument)`` per row."""

    def __init__(self, seed: int, num_shards: int):
        self._seed = seed
        self._num_shards = num_shards

    def process(self, path: str) -> Iterator[Tuple[int, ExportDocument]]:
        with FileSystems.open(path) as f:
            table = pq.read_table(f, columns=list(DOCUMENT_COLUMNS))
        tokens = table.column("tokens").combine_chunks()
        offsets = tokens.offsets.to_numpy()
        values = tokens.values.to_numpy(zero_copy_only=False).astype(np.int32)
        for i, (key, source) in enumerate(zip(table.column("key").to_pylist(), table.column("source").to_pylist())):
            doc = ExportDocument(key, source, values[offsets[i] : offsets[i + 1]].copy())
            yield shard_for_key(self._seed, key, self._num_shards), doc


def shard_key(element: Tuple[int, ExportDocument]) -> Tuple[int, None]:
    """``(shard, None)``: what the per-shard document count needs of a keyed document."""
    return element[0], None


def first_document_id(shard: int, counts: Mapping[int, int]) -> int:
    """Global id of a shard's first document: the documents of every lower shard."""
    return sum(n for s, n in counts.items() if s < shard)


class WriteExportShard(beam.DoFn):
    """Orders, packs and writes one export shard in every format; emits its ``ExportShardStats``."""

    def __init__(self, config: ExportConfig):
        self._c = config

    def process(self, element: Tuple[int, Iterable[ExportDocument]], counts: Mapping[int, int]):
        shard, grouped = element
        c = self._c
        docs = sorted(grouped, key=lambda d: document_order(c.seed, d))
        first = first_document_id(shard, counts)
        tokens = [d.tokens for d in docs]
        packed = pack_documents(tokens, c.seq_len, int(c.vocab["specials"]["pad"]), first, c.packing)
        if packed.tokens.size and not 0 <= packed.tokens.min() <= packed.tokens.max() < int(c.vocab["size"]):
            raise ValueError(f"export shard {shard}: token ids {packed.tokens.min()}..{packed.tokens.max()} "
                             f"outside the vocabulary's {c.vocab['size']} ids (__vocab.json)")
        name = part_name(shard)
        files: Dict[str, bytes] = {}
        entries: List[Dict[str, Any]] = []
        if "megatron" in c.formats:
            files[f"megatron/{name}.bin"], files[f"megatron/{name}.idx"] = indexed_dataset(tokens, c.token_dtype)
        if "mds" in c.formats:
            arrays = {"tokens": packed.tokens.astype(c.token_dtype), "position_ids": packed.position_ids,
                      "document_ids": packed.document_ids}
            encoded = mds.encode_shards(mds_columns(c.seq_len, np.dtype(c.token_dtype)), arrays)
            files.update((f"mds/{name}/{file}", data) for file, data, _ in encoded)
            entries = [entry for _, _, entry in encoded]
            files[f"mds/{name}/{mds.INDEX_FILE}"] = mds.index_json(entries)
        if "parquet" in c.formats:
            files[f"parquet/{name}.parquet"] = parquet_bytes(packed_table(packed, [d.key for d in docs], first))
        for relative, data in files.items():
            write_atomic(c.path(relative), data)
        count(STAGE, "documents", len(docs))
        count(STAGE, "sequences", packed.num_sequences)
        yield ExportShardStats(shard, len(docs), packed.num_sequences, packed.num_tokens, packed.num_padding,
                               tuple(sorted(files)), tuple(mds.in_folder(entries, name)))


def export_stats(config: ExportConfig, shards: Sequence[ExportShardStats]) -> Dict[str, Any]:
    """The export's figures (``stats.json`` and the ``export`` field of ``summary.json``)."""
    tokens, padding = sum(s.tokens for s in shards), sum(s.padding for s in shards)
    return {
        "formats": list(config.formats),
        "seq_len": config.seq_len,
        "packing": config.packing,
        "shuffle_seed": config.seed,
        "shards": config.num_shards,
        "documents": sum(s.documents for s in shards),
        "sequences": sum(s.sequences for s in shards),
        "tokens": tokens,
        "padding": padding,
        "padding_fraction": round(padding / (tokens + padding), 6) if tokens + padding else 0.0,
        "token_dtype": config.token_dtype,
        "files": sorted(f for s in shards for f in s.files),
    }


class WriteExportIndex(beam.DoFn):
    """Writes what spans every shard: root MDS index, Megatron blend, dataset card, stats."""

    def __init__(self, config: ExportConfig):
        self._c = config

    def process(self, shards: List[ExportShardStats]) -> Iterator[Dict[str, Any]]:
        c = self._c
        shards = sorted(shards, key=lambda s: s.shard)
        stats = export_stats(c, shards)
        if "mds" in c.formats:
            write_atomic(c.path(f"mds/{mds.INDEX_FILE}"), mds.index_json([e for s in shards for e in s.mds_shards]))
        if "megatron" in c.formats:
            blend = " ".join(f"{s.tokens} {part_name(s.shard)}" for s in shards)  # relative: the folder moves
            write_atomic(c.path("megatron/data_args.txt"), (blend + "\n").encode())
        if "parquet" in c.formats:
            write_atomic(c.path("parquet/README.md"), dataset_card(stats, c.vocab, c.command).encode())
        write_atomic(c.path(STATS_FILE), json.dumps(stats, indent=1, sort_keys=True).encode())
        yield stats


class ExportCorpus(beam.PTransform):
    """Applied to a pipeline's root: reads ``parts`` (documents Parquet files) and writes the
    exports of ``config``; returns a PCollection holding the one stats dict.

    Args:
        parts: Paths of the documents table's parts.
        config: Formats, ``seq_len``, seed, export shards, vocabulary.
    """

    def __init__(self, parts: Sequence[str], config: ExportConfig):
        super().__init__()
        self._parts = sorted(parts)
        self._config = config

    def expand(self, root):
        c = self._config
        docs = (root | "ListDocumentParts" >> beam.Create(self._parts)
                | "ReadDocuments" >> beam.ParDo(ReadDocuments(c.seed, c.num_shards)))
        counts = docs | "ShardOfDocument" >> beam.Map(shard_key) | "CountPerShard" >> beam.combiners.Count.PerKey()
        return (docs | "GroupByExportShard" >> beam.GroupByKey()
                | "WriteExportShard" >> beam.ParDo(WriteExportShard(c), counts=beam.pvalue.AsDict(counts))
                | "AllShards" >> beam.combiners.ToList()
                | "WriteExportIndex" >> beam.ParDo(WriteExportIndex(c)))
