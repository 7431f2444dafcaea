"""DedupDocuments: exact deduplication on the media hash across the whole corpus (one GroupByKey).

Documents are grouped by ``media_sha1``; in each group one copy is kept
(``operators.corpus.dedup.kept_index``: a copy an earlier run already wrote, else the smallest
``(source, key)``) and the others become ``Filtered`` records with reason ``"exact duplicate"``,
counted in their shard's accounting. Written copies take part only as hashes and keys.
"""

from typing import Iterable, Iterator, Tuple

import apache_beam as beam

from operators.corpus.dedup import DUPLICATE_REASON, Candidate, kept_index
from schemas.common import Filtered
from schemas.documents import DocumentRow
from transforms.corpus.documents import FILTERED_TAG
from transforms.errors import count

STAGE = "Dedup"


class KeyNewDocument(beam.DoFn):
    """A document of this run → ``(media_sha1, ("new", row))``."""

    def process(self, row: DocumentRow) -> Iterator[Tuple[str, tuple]]:
        yield row.media_sha1, ("new", row)


class KeyWrittenDocument(beam.DoFn):
    """A document an earlier run wrote → ``(media_sha1, ("written", source, key))``."""

    def process(self, row: DocumentRow) -> Iterator[Tuple[str, tuple]]:
        yield row.media_sha1, ("written", row.source, row.key)


class KeepOnePerHash(beam.DoFn):
    """Emits the kept new document of a same-hash group; the other new ones as ``Filtered``."""

    def process(self, element: Tuple[str, Iterable[tuple]]) -> Iterator:
        _, entries = element
        entries = list(entries)
        candidates = [Candidate(False, e[1].source, e[1].key, e[1].tokens.tobytes()) if e[0] == "new"
                      else Candidate(True, e[1], e[2], b"") for e in entries]
        kept = kept_index(candidates)
        for index, entry in enumerate(entries):
            if entry[0] != "new":
                continue
            row = entry[1]
            if index == kept:
                yield row
            else:
                count(STAGE, "duplicates")
                yield beam.pvalue.TaggedOutput(FILTERED_TAG, Filtered(row.key, row.source, DUPLICATE_REASON))


class DedupDocuments(beam.PTransform):
    """``{"rows": new documents, "written": documents already in the output}`` →
    ``{"rows": kept documents, "filtered": duplicates}``."""

    def expand(self, inputs):
        new = inputs["rows"] | "KeyNewDocuments" >> beam.ParDo(KeyNewDocument())
        written = inputs["written"] | "KeyWrittenDocuments" >> beam.ParDo(KeyWrittenDocument())
        kept = ((new, written) | "AllDocumentHashes" >> beam.Flatten()
                | "GroupByMediaHash" >> beam.GroupByKey()
                | "KeepOnePerHash" >> beam.ParDo(KeepOnePerHash()).with_outputs(FILTERED_TAG, main="rows"))
        return {"rows": kept.rows, FILTERED_TAG: kept[FILTERED_TAG]}
