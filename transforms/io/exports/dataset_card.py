"""The dataset card (``README.md``) of the Parquet export: what HF ``datasets`` and people read.

The YAML header declares the Parquet parts as the ``train`` split, so both
``load_dataset("parquet", data_files=...)`` and ``load_dataset("<export>/parquet")`` load them.
"""

import json
from typing import Any, Mapping

PARTS_GLOB = "part-*.parquet"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def dataset_card(stats: Mapping[str, Any], vocab: Mapping[str, Any], command: str) -> str:
    """The card's Markdown.

    Args:
        stats: The export's ``stats.json`` figures (documents, sequences, tokens, padding ...).
        vocab: ``__vocab.json`` (``size``, ``specials``, ``ranges``).
        command: The command that built the corpus.
    """
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        f"    path: \"{PARTS_GLOB}\"",
        "---",
        "",
        "# Packed token corpus",
        "",
        f"Built by mediabeam: documents in one global vocabulary, shuffled with seed "
        f"{stats['shuffle_seed']} and packed ({stats['packing']}) into sequences of {stats['seq_len']} "
        f"tokens, document boundaries kept. Parts `{PARTS_GLOB}` in name order are the global order.",
        "",
        "## Counts",
        "",
        _row("documents", "sequences", "tokens", "padding tokens", "padding fraction", "export shards"),
        _row(*["---"] * 6),
        _row(stats["documents"], stats["sequences"], stats["tokens"], stats["padding"],
             f"{stats['padding_fraction']:.4f}", stats["shards"]),
        "",
        "## Columns",
        "",
        "- `input_ids` (list<int32>, length seq_len): token ids; padding is the `pad` id.",
        "- `position_ids` (list<int32>): position inside the piece of document; restarts at 0 at every "
        "document start and every sequence start (padding counts from 0 too).",
        "- `document_ids` (list<int32>): index of the token's document in the global shuffled order; "
        "-1 on padding. Mask attention between different ids.",
        "- `keys` (list<string>): keys of the documents in the sequence, in order.",
        "",
        "## Vocabulary",
        "",
        f"{vocab.get('size')} ids. Special tokens: "
        + ", ".join(f"`{name}` = {i}" for name, i in sorted(vocab.get("specials", {}).items(), key=lambda kv: kv[1]))
        + ".",
        "",
        _row("range", "layout"),
        _row("---", "---"),
        *(_row(f"`{kind}`", f"`{json.dumps(layout, sort_keys=True)}`")
          for kind, layout in sorted(vocab.get("ranges", {}).items())),
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        f"ds = load_dataset(\"parquet\", data_files=\"{PARTS_GLOB}\", split=\"train\")",
        "```",
        "",
        "## Command",
        "",
        "```",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)
