"""ReadAudio: audio inputs in, decoded 16 kHz ``AudioItem`` records out, with per-shard counts.

Every input is one shard, for the accounting and for the output:

* a WebDataset tar shard: one record per sample (its first audio member, else the audio
  track of its first video member; samples with neither are *filtered*, not failed);
* a folder: one record per audio file under it, keyed by its path relative to the folder
  with the extension kept, so ``cmd.wav`` and ``cmd.ogg`` (or ``a/cmd.wav`` and
  ``b/cmd.wav``) stay apart;
* a single audio file: one record keyed by its file name (extension kept).

Files are listed on one worker per shard and spread over the workers before decoding.
Undecodable payloads become dead letters.
"""

import os
from typing import Iterator, List, Mapping, Optional, Sequence, Set

import apache_beam as beam

from operators.media.audio import decode_audio
from operators.tokenizers.base import first_member
from schemas.asr import AudioItem, AudioRef
from schemas.budgets import DEFAULT_BUDGETS, Budgets
from schemas.common import Filtered, MediaSample
from transforms.errors import DEAD_LETTER_TAG, count, dead_letter
from transforms.io.read_shards import SHARD_STATS_TAG, ReadMediaShards, ShardStats
from transforms.io.retry import KeepKeys

LIST_STAGE = "ListAudio"
DECODE_STAGE = "DecodeAudio"
FILTERED_TAG = "filtered"
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".mp4", ".mkv")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
NO_AUDIO = "no audio or video member"


def is_tar_shard(source: str) -> bool:
    """Whether an input is read as a WebDataset tar shard (by its suffix)."""
    return source.lower().endswith(TAR_SUFFIXES)


def audio_files(folder: str) -> List[str]:
    """Audio files under ``folder`` (recursively, by suffix), sorted."""
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(AUDIO_SUFFIXES)
    )


class ListAudioFn(beam.DoFn):
    """Folder or single file → one ``AudioRef`` per audio file, then its ``ShardStats``."""

    def process(self, source: str) -> Iterator:
        if os.path.isdir(source):
            refs = [AudioRef(os.path.relpath(p, source).replace(os.sep, "/"), source, p) for p in audio_files(source)]
        else:
            refs = [AudioRef(os.path.basename(source), source, source)]
        count(LIST_STAGE, "files", len(refs))
        yield from refs
        yield beam.pvalue.TaggedOutput(SHARD_STATS_TAG, ShardStats(source, len(refs)))


class SampleAudioFn(beam.DoFn):
    """``MediaSample`` → ``AudioRef`` of its audio payload, or ``Filtered`` on ``FILTERED_TAG``."""

    def process(self, sample: MediaSample) -> Iterator:
        found = first_member(sample.members, "audio") or first_member(sample.members, "video")
        if found is None:
            count(LIST_STAGE, "no_audio")
            yield beam.pvalue.TaggedOutput(FILTERED_TAG, Filtered(sample.key, sample.source, NO_AUDIO))
            return
        yield AudioRef(sample.key, sample.source, found[1])


class DecodeAudioFn(beam.DoFn):
    """``AudioRef`` → ``AudioItem`` (mono float32); undecodable or over-budget payloads become
    dead letters.

    Args:
        sample_rate: Output rate in Hz.
        budgets: ``media_seconds`` and ``audio_samples`` cap every payload (checked by the decoder).
    """

    def __init__(self, sample_rate: int = 16000, budgets: Budgets = DEFAULT_BUDGETS):
        self._rate = sample_rate
        self._budgets = budgets

    def process(self, ref: AudioRef) -> Iterator:
        try:
            samples = decode_audio(ref.payload, sample_rate=self._rate, media_seconds=self._budgets.media_seconds,
                                   audio_samples=self._budgets.audio_samples)
        except Exception as err:  # noqa: BLE001 - the error policy: a bad file is a dead letter, not a failed job
            count(DECODE_STAGE, "dead_letters")
            yield dead_letter(ref.key, ref.source, DECODE_STAGE, err)
            return
        count(DECODE_STAGE, "files")
        yield AudioItem(ref.key, ref.source, samples)


class ReadAudio(beam.PTransform):
    """Apply to a pipeline root: ``{"audio": AudioItem, DEAD_LETTER_TAG: DeadLetter,
    "stats": ShardStats, FILTERED_TAG: Filtered}``.

    Args:
        sources: Input shards (tar files, folders, audio files), already expanded.
        keep: For a dead-letter retry: source → the keys to read again; every other record
            is dropped before decoding (the shard's counts, filtered ones included, come
            from the earlier run).
        budgets: Input budgets (``member_bytes``, ``media_seconds``, ``audio_samples``).
    """

    def __init__(self, sources: Sequence[str], keep: Optional[Mapping[str, Set[str]]] = None,
                 budgets: Budgets = DEFAULT_BUDGETS):
        super().__init__()
        self._tars = [s for s in sources if is_tar_shard(s)]
        self._others = [s for s in sources if not is_tar_shard(s)]
        self._keep = keep
        self._budgets = budgets

    def expand(self, pbegin):
        refs, dead, stats, filtered = [], [], [], []
        if self._tars:
            read = pbegin | "ReadTarShards" >> ReadMediaShards(self._tars, budgets=self._budgets)
            picked = read.samples | "PickAudio" >> beam.ParDo(SampleAudioFn()).with_outputs(FILTERED_TAG, main="refs")
            refs.append(picked.refs)
            dead.append(read[DEAD_LETTER_TAG])
            stats.append(read.shard_stats)
            filtered.append(picked[FILTERED_TAG])
        if self._others:
            listed = (
                pbegin
                | "ListSources" >> beam.Create(self._others)
                | "ListAudio" >> beam.ParDo(ListAudioFn()).with_outputs(SHARD_STATS_TAG, main="refs")
            )
            refs.append(listed.refs | "SpreadFiles" >> beam.Reshuffle())
            stats.append(listed[SHARD_STATS_TAG])
        refs_pc = refs | "AllRefs" >> beam.Flatten(pipeline=pbegin.pipeline)
        dead_pc = dead | "ReaderDeadLetters" >> beam.Flatten(pipeline=pbegin.pipeline)
        filtered_pc = filtered | "AllFiltered" >> beam.Flatten(pipeline=pbegin.pipeline)
        if self._keep is not None:
            keep = KeepKeys(dict(self._keep))
            refs_pc = refs_pc | "KeepRetriedRefs" >> beam.ParDo(keep)
            dead_pc = dead_pc | "KeepRetriedDeadLetters" >> beam.ParDo(keep)
            filtered_pc = filtered_pc | "KeepRetriedFiltered" >> beam.ParDo(keep)
        decode = DecodeAudioFn(budgets=self._budgets)
        decoded = refs_pc | "DecodeAudio" >> beam.ParDo(decode).with_outputs(DEAD_LETTER_TAG, main="audio")
        all_dead = (dead_pc, decoded[DEAD_LETTER_TAG]) | "AllReadDeadLetters" >> beam.Flatten()
        stats_pc = stats | "AllShardStats" >> beam.Flatten(pipeline=pbegin.pipeline)
        return {"audio": decoded.audio, DEAD_LETTER_TAG: all_dead, "stats": stats_pc, FILTERED_TAG: filtered_pc}
