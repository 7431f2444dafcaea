"""Output tables: how each job's rows become Arrow tables and back, for ``ShardSink``.

A :class:`TableSpec` is everything the sink needs to know about one output table; jobs declare
theirs next to their record type (e.g. ``schemas/documents.py``) and hand it to
``transforms.io.sink.ShardSink``.
"""

import dataclasses
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa

Row = Any


def no_fields(rows: Sequence[Row]) -> Dict[str, Any]:
    """Default ``manifest_fields``: nothing beyond the sink's own counts."""
    return {}


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One output table.

    Attributes:
        name: Table name and product folder (``[a-z][a-z0-9_]*``), e.g. ``"documents"``.
        schema: Arrow schema of the product files.
        to_table: Rows (NamedTuples with ``.source`` and ``.key``) to an Arrow table.
        from_table: The inverse, used to reload kept rows for ``--retry-dead-letters``.
        sort_key: Deterministic row order within a shard (ties must be identical rows).
        manifest_fields: Extra per-shard figures for the manifest (counts, token totals ...).
        webdataset_members: ``row -> [(member name, bytes)]`` for the WebDataset writer;
            None when the table has no WebDataset form.
    """

    name: str
    schema: pa.Schema
    to_table: Callable[[Sequence[Row]], pa.Table]
    from_table: Callable[[pa.Table], List[Row]]
    sort_key: Callable[[Row], Any]
    manifest_fields: Callable[[Sequence[Row]], Dict[str, Any]] = no_fields
    webdataset_members: Optional[Callable[[Row], List[Tuple[str, bytes]]]] = None

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"table name {self.name!r} must match [a-z][a-z0-9_]*")
