"""The ``quality`` table of ``evaluate-tokenizers``: one row per sample and tokenizer setting.

``<output>/quality/<shard name>-00000.parquet``. A measure that does not apply to a row (PSNR of
audio, PESQ of silence, ASR figures without speech recognition) is null.
"""

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import pyarrow as pa

from schemas.tables import TableSpec


class QualityRow(NamedTuple):
    """One media item through one tokenizer setting and back.

    Attributes:
        key: Sample key.
        source: Input shard.
        member: Member extension that was tokenized (``jpg``, ``wav`` ...).
        modality: ``image``, ``video`` or ``audio``.
        tokenizer: Registry name (``jpeg``, ``opus`` ...).
        tokenizer_version: The tokenizer's version (codec settings are encoded in it).
        setting: The swept options of this row, ``"bitrate=6000"``; ``"default"`` when none.
        num_tokens: Token entries of the item (``T × C``, BOS/EOS included).
        source_bytes: Size of the tokenized member as stored in the shard.
        duration_s: Seconds of media tokenized (null for images).
        tokens_per_s: ``num_tokens / duration_s``.
        bits: Bits of the tokens (see ``operators/quality/rate.py``).
        bits_per_s: ``bits / duration_s``.
        psnr_db: PSNR of the decoded image or frames against what the tokenizer saw (inf if identical).
        ssim: Mean SSIM (7×7 window) of the same.
        cnn_top1_agree: 1.0 when the split-computing ``TinyCNN``'s top-1 class of the decoded image
            is that of the image the tokenizer saw, else 0.0 (null with ``--no-cnn``).
        x3d_top1_agree: 1.0 when X3D's top-1 class of the decoded clip is that of the clip the
            tokenizer saw, else 0.0 (null without ``--x3d-*`` flags); its mean is the agreement rate.
        pesq_wb: Wide-band PESQ MOS-LQO of the decoded audio (16 kHz; null without speech).
        stoi: STOI of the decoded audio.
        mel_distance_db: Mean |Δ log-mel| in dB.
        asr_text_original: Transcript of the original audio.
        asr_text_decoded: Transcript of the decoded audio.
        asr_wer: WER of ``asr_text_decoded`` against ``asr_text_original``.
        asr_word_errors: Word edits behind ``asr_wer``.
        asr_reference_words: Words of ``asr_text_original``.
        reference_text: A person's transcript (the sample's ``transcript.txt`` member), if any.
        reference_wer: WER of ``asr_text_original`` against ``reference_text``: the recogniser's
            own accuracy on this recording.
        reference_word_errors: Word edits behind ``reference_wer``.
        reference_words: Words of ``reference_text``.
    """

    key: str
    source: str
    member: str
    modality: str
    tokenizer: str
    tokenizer_version: str
    setting: str
    num_tokens: int
    source_bytes: int
    duration_s: Optional[float] = None
    tokens_per_s: Optional[float] = None
    bits: float = 0.0
    bits_per_s: Optional[float] = None
    psnr_db: Optional[float] = None
    ssim: Optional[float] = None
    cnn_top1_agree: Optional[float] = None
    x3d_top1_agree: Optional[float] = None
    pesq_wb: Optional[float] = None
    stoi: Optional[float] = None
    mel_distance_db: Optional[float] = None
    asr_text_original: Optional[str] = None
    asr_text_decoded: Optional[str] = None
    asr_wer: Optional[float] = None
    asr_word_errors: Optional[int] = None
    asr_reference_words: Optional[int] = None
    reference_text: Optional[str] = None
    reference_wer: Optional[float] = None
    reference_word_errors: Optional[int] = None
    reference_words: Optional[int] = None


class Setting(NamedTuple):
    """One tokenizer configuration to evaluate.

    Attributes:
        tokenizer: Registry name.
        label: The swept options, ``"bitrate=6000"`` (``"default"`` when none).
        kwargs: Constructor keyword arguments.
    """

    tokenizer: str
    label: str
    kwargs: Dict[str, Any]


_TYPES = {
    "num_tokens": pa.int64(), "source_bytes": pa.int64(), "asr_word_errors": pa.int64(), "asr_reference_words": pa.int64(),
    "reference_word_errors": pa.int64(), "reference_words": pa.int64(),
}
_STRINGS = ("key", "source", "member", "modality", "tokenizer", "tokenizer_version", "setting",
            "asr_text_original", "asr_text_decoded", "reference_text")
_REQUIRED = ("key", "source", "member", "modality", "tokenizer", "tokenizer_version", "setting", "num_tokens", "source_bytes",
             "bits")

QUALITY_SCHEMA = pa.schema(
    [pa.field(name, pa.string() if name in _STRINGS else _TYPES.get(name, pa.float64()), nullable=name not in _REQUIRED)
     for name in QualityRow._fields],
    metadata={"mediabeam.table": "quality", "mediabeam.schema_version": "1"},
)


def quality_table(rows: Sequence[QualityRow]) -> pa.Table:
    """Builds a ``QUALITY_SCHEMA`` table from rows (in the given order)."""
    return pa.table({name: [getattr(r, name) for r in rows] for name in QUALITY_SCHEMA.names}, schema=QUALITY_SCHEMA)


def quality_rows(table: pa.Table) -> List[QualityRow]:
    """The inverse of :func:`quality_table`."""
    return [QualityRow(**{name: record[name] for name in QualityRow._fields}) for record in table.to_pylist()]


def _quality_order(row: QualityRow) -> Tuple[str, str, str, str]:
    return row.key, row.tokenizer, row.setting, row.member


def _quality_fields(rows: Sequence[QualityRow]) -> Dict[str, Any]:
    settings = sorted({f"{r.tokenizer}:{r.setting}" for r in rows})
    return {"samples": len({r.key for r in rows}), "settings": settings}


QUALITY_TABLE = TableSpec(
    name="quality",
    schema=QUALITY_SCHEMA,
    to_table=quality_table,
    from_table=quality_rows,
    sort_key=_quality_order,
    manifest_fields=_quality_fields,
)
