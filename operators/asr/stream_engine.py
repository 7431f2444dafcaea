"""Live ASR: arbitrary PCM pieces in, transcript deltas out, state as numpy (no Beam import).

Wraps :class:`operators.asr.streaming.StreamingASR` for live streams whose audio arrives in
pieces of any size. Per stream, the state is a dict of numpy arrays holding

* the operator's cache-aware ``StreamState`` (one stream; ``asr/<field>``) without its key/value
  cache: two thirds fewer bytes to batch, split, code and store per stream. The engine keeps
  the key/value cache each step produced in memory (``operators.asr.kv_memo``) and rebuilds it
  from the attention cache only for a stream it does not hold (one matrix product per layer),
* an incremental NeMo front end (``operators.asr.live_frontend``): the samples the next mel
  frames still need, and the mel frames waiting for a full chunk (fewer than ``8C`` frames),
* the last emitted token (so a delta decodes with the right word boundary),
* with endpointing on: the endpointer's counters and the current utterance's tokens.

Its size is fixed by the model and the largest piece, never by the stream's length. Mel frames
are computed as soon as their window is complete, chunks are stepped as soon as they are full,
and the end of the stream (``finalize``) flushes the last (shorter) chunk, so the concatenated
deltas equal ``StreamingASR.transcribe`` of the whole audio. ``step`` advances many streams
with batched operator steps: this is what makes throughput grow with concurrency. It implements
the :class:`operators.streaming.engine.StreamEngine` contract.

Endpointing (``operators.asr.endpointing``, optional): after each step the chunk's encoder frames
are flagged silent (CTC blank and no voice: by energy, or by Silero VAD's speech probability,
``operators.asr.live_vad``); when an endpoint rule fires, the tokens up
to that frame close the utterance, a ``final`` event carries its whole text, and the stream's
encoder and decoder state restart for the next utterance (the next chunk is a first chunk). The
end of the stream closes the last utterance the same way.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from operators.asr.endpointing import EndpointConfig, Endpointer, voiced_frames
from operators.asr.kv_memo import KeyValueMemo
from operators.asr.live_frontend import IncrementalFrontEnd
from operators.asr.live_vad import LiveSpeechDetector
from operators.asr.silero_vad import load_silero_vad
from operators.asr.state import STATE_BATCH_AXES, state_from_numpy, state_to_numpy
from operators.asr.streaming import StreamingASR
from operators.streaming.engine import StreamEngine
from operators.tokenizers.base import MediaError

__all__ = ["LiveASR", "AsrDelta", "SampleFormatError"]

State = Dict[str, np.ndarray]

# The operator state fields a stream stores (``cache_last_kv`` is rebuilt, see the module doc).
STORED_STATE_AXES = {name: axis for name, axis in STATE_BATCH_AXES.items() if name != "cache_last_kv"}


class SampleFormatError(MediaError):
    """Audio whose format the model cannot take (sample rate, encoding, odd byte count)."""


AsrDelta = Dict[str, object]  # what one step adds to a transcript: text, tokens, audio_end_s


class LiveASR(StreamEngine):
    """Per-stream live front end + chunker around a ``StreamingASR`` operator.

    Args:
        asr: The operator (its attention context fixes the chunk size).
        endpointing: Endpoint rules (``None``: no endpointing, the stream is one utterance and
            no utterance ``final`` events are emitted). Needs the CTC decoder.
    """

    event_name = "partial"

    def __init__(self, asr: StreamingASR, endpointing: Optional[EndpointConfig] = None):
        if endpointing is not None and endpointing.vad not in ("energy", "silero"):
            raise ValueError(f"voice-activity detector {endpointing.vad!r}: use 'energy' or 'silero'")
        if endpointing is not None and asr.decoder != "ctc":
            raise ValueError("endpointing needs the CTC decoder (it reads the CTC blank run); "
                             "pass decoder='ctc' or turn endpointing off")
        self.asr = asr
        self.endpointing = endpointing
        self.mel = asr.config.mel
        self.frontend = IncrementalFrontEnd(self.mel)
        self.chunk, self.first_frames, self.later_frames = asr.chunk_sizes()
        self._kv_memo = KeyValueMemo()
        self.speech = None
        if endpointing is not None and endpointing.vad == "silero":
            self.speech = LiveSpeechDetector(load_silero_vad(endpointing.vad_model or None), self.mel.hop_length,
                                             self.mel.win_length // 2)

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def chunk_seconds(self) -> float:
        """Audio per later step (e.g. 1.12 s at ``[70, 13]``)."""
        return self.later_frames * self.mel.hop_length / self.mel.sample_rate

    def init_state(self) -> State:
        """The state of a new stream."""
        state = {**self._initial_operator_state(), **self.frontend.init_state()}
        if self.speech is not None:
            state.update(self.speech.init_state())
        state.update(
            steps=np.zeros((), np.int64),
            done=np.zeros((), np.bool_),
            prev_token=np.full((), -1, np.int64),
            ep_frames=np.zeros((), np.int64),  # endpointer: encoder frames seen
            ep_length=np.zeros((), np.int64),  # endpointer: frames in the utterance
            ep_trailing=np.zeros((), np.int64),  # endpointer: its trailing silent frames
            utt_index=np.zeros((), np.int64),  # utterances closed so far
            utt_start=np.zeros((), np.int64),  # first mel frame of the utterance
            utt_tokens=np.zeros(0, np.int64),  # the utterance's tokens so far
        )
        return state

    def _initial_operator_state(self) -> State:
        arrays = state_to_numpy(self.asr.initial_state(1))
        return {f"asr/{name}": arrays[name] for name in STORED_STATE_AXES}

    def decode(self, kind: int, sample_rate: int, payload: bytes) -> np.ndarray:
        """PCM payload → float32 samples; raises ``SampleFormatError`` naming the problem.

        ``kind`` 0 with no payload (a bare end-of-stream frame) gives no samples.
        """
        if int(kind) == 0 and not payload:
            return np.zeros(0, np.float32)
        if int(kind) not in (1, 2):
            raise SampleFormatError(f"payload kind {kind} is not PCM audio (1 = s16le, 2 = f32le): this is a speech "
                                    "model; send audio (`mediabeam send FILE --media audio` sends a video's sound)")
        if sample_rate != self.sample_rate:
            raise SampleFormatError(f"sample rate {sample_rate} Hz; this model takes {self.sample_rate} Hz mono")
        width = 2 if int(kind) == 1 else 4
        if len(payload) % width:
            raise SampleFormatError(f"{len(payload)} payload bytes is not a whole number of {width}-byte samples")
        if width == 2:
            return np.frombuffer(payload, "<i2").astype(np.float32) / 32768.0
        samples = np.frombuffer(payload, "<f4").astype(np.float32)
        if not np.all(np.isfinite(samples)):
            raise SampleFormatError("float samples contain NaN or infinity")
        return samples

    def step(self, inputs: Sequence[np.ndarray], states: Sequence[State]) -> Tuple[List[List[AsrDelta]], List[State]]:
        """Adds each stream's samples and steps every chunk they complete, ready streams batched."""
        return self._drain(self._push(states, inputs, False))

    def finalize(self, state: State) -> List[AsrDelta]:
        """Ends a stream: computes its last mel frames and steps its last (shorter) chunks."""
        return self.finalize_many([state])[0]

    def finalize_many(self, states: Sequence[State]) -> List[List[AsrDelta]]:
        """Ends several streams, their last chunks stepped in batches."""
        outputs, ended = self._drain(self._push(states, [np.zeros(0, np.float32)] * len(states), True))
        for output, state in zip(outputs, ended):
            if self.endpointing is not None and len(state["utt_tokens"]):
                output.append(self._final(state, int(state["frames"]), "eos"))
        return outputs

    def _push(self, states: Sequence[State], inputs: Sequence[np.ndarray], final: bool) -> List[State]:
        """The front end (and the speech detector, when on) takes each stream's new samples."""
        pushed = self.frontend.push(states, inputs, final)
        if self.speech is None:
            return pushed
        return self.speech.push(pushed, inputs, [int(state["frames"]) for state in states])

    def _drain(self, states: List[State]) -> Tuple[List[List[AsrDelta]], List[State]]:
        outputs: List[List[AsrDelta]] = [[] for _ in states]
        while True:
            ready = [i for i, state in enumerate(states) if self._ready(state)]
            if not ready:
                return outputs, states
            for i, (delta, state) in zip(ready, self._step_batch([states[i] for i in ready])):
                states[i] = state
                outputs[i].extend(delta)

    def _width(self, state: State) -> int:
        return self.first_frames if int(state["steps"]) == 0 else self.later_frames

    def _ready(self, state: State) -> bool:
        """Whether the stream has a chunk to step now (a full one, or its last one)."""
        if bool(state["done"]):
            return False
        return state["mel"].shape[1] >= self._width(state) or bool(state["final"])

    def _step_batch(self, states: Sequence[State]) -> List[Tuple[List[AsrDelta], State]]:
        """One batched operator step for streams that are all ``_ready``.

        Returns per stream ``(outputs, state)``: the partial delta, and with endpointing the
        ``final`` of each utterance the step closed; none when the stream ended with nothing
        left to step (its state is then done).
        """
        results: List[Tuple[List[AsrDelta], State]] = [([], s) for s in states]
        rows, chunks, lengths = [], [], []
        for i, state in enumerate(states):
            width = self._width(state)
            n = min(width, state["mel"].shape[1])
            if n == 0:  # ended with nothing left to step
                done = dict(state)
                done["done"] = np.asarray(True)
                results[i] = ([], done)
                continue
            rows.append(i)
            chunks.append(state["mel"][:, :n])
            lengths.append(n)
        if not rows:
            return results
        width = max(max(lengths), 1)
        features = np.zeros((len(rows), self.mel.n_mels, width), np.float32)
        for j, chunk in enumerate(chunks):
            features[j, :, : chunk.shape[1]] = chunk
        stored = {name: np.concatenate([states[i][f"asr/{name}"] for i in rows], axis=axis)
                  for name, axis in STORED_STATE_AXES.items()}
        stored["cache_last_kv"] = self._kv_caches([states[i]["asr/cache_last_channel"] for i in rows],
                                                  stored["cache_last_channel"])
        batch_state = state_from_numpy(stored)
        output, new_state = self.asr.step(
            torch.from_numpy(features).to(self.asr.dtype), torch.tensor(lengths, dtype=torch.long), batch_state
        )
        arrays = state_to_numpy(new_state)
        best = None
        if self.endpointing is not None:
            with torch.no_grad():
                best = self.asr.model.ctc_head(output.encoded).argmax(-1).numpy()
        hop_s = self.mel.hop_length / self.mel.sample_rate
        for j, i in enumerate(rows):
            state = dict(states[i])
            for name, axis in STORED_STATE_AXES.items():
                state[f"asr/{name}"] = arrays[name][(slice(None),) * axis + (slice(j, j + 1),)].copy()
            stepped = state["asr/cache_last_channel"]
            n = lengths[j]
            state["mel"] = state["mel"][:, n:].copy()
            state["voice"] = state["voice"][n:].copy()
            state["steps"] = np.asarray(int(state["steps"]) + 1, np.int64)
            consumed = int(state["frames"]) - state["mel"].shape[1]
            tokens = [int(t) for t in output.tokens[j]]
            if best is None:
                results[i] = ([self._delta(state, tokens, consumed * hop_s)], state)
            else:
                frames = best[j, : int(output.encoded_len[j])]
                results[i] = self._endpoint(state, states[i], frames, tokens, consumed - n, n)
            if bool(state["final"]) and state["mel"].shape[1] == 0:
                state["done"] = np.asarray(True)
            self._kv_memo.forget(states[i]["asr/cache_last_channel"])
            if state["asr/cache_last_channel"] is stepped and not bool(state["done"]):  # not restarted or ended
                self._kv_memo.put(stepped, arrays["cache_last_kv"][:, j : j + 1].copy())
        return results

    def _kv_caches(self, att_caches: Sequence[np.ndarray], att_batch: np.ndarray) -> np.ndarray:
        """The batch's key/value cache: each stream's from its last step where the memo has it,
        rebuilt from its attention cache (``att_batch``, the streams' caches concatenated) otherwise."""
        kv: List[Optional[np.ndarray]] = [self._kv_memo.get(att) for att in att_caches]
        missing = [j for j, found in enumerate(kv) if found is None]
        if missing:
            att = torch.from_numpy(att_batch[:, missing] if len(missing) < len(kv) else att_batch)
            rebuilt = self.asr.model.encoder.kv_cache_from(att.to(self.asr.dtype)).numpy()
            for n, j in enumerate(missing):
                kv[j] = rebuilt[:, n : n + 1]
        return np.concatenate(kv, axis=1)

    def _delta(self, state: State, tokens: List[int], audio_end_s: float) -> AsrDelta:
        """The partial event fields of ``tokens`` (moves the stream's last token on)."""
        anchor = int(state["prev_token"])
        if tokens:
            state["prev_token"] = np.asarray(tokens[-1], np.int64)
        return {"text": self.delta_text(anchor, tokens), "tokens": tokens, "audio_end_s": round(audio_end_s, 3)}

    def _final(self, state: State, end_frame: int, reason: str) -> AsrDelta:
        """The ``final`` event fields of the stream's current utterance (its state restarts)."""
        hop_s = self.mel.hop_length / self.mel.sample_rate
        tokens = [int(t) for t in state["utt_tokens"]]
        fields = {"event": "final", "reason": reason, "utterance": int(state["utt_index"]),
                  "text": self.asr.vocabulary.decode(tokens) if tokens else "",
                  "start_s": round(int(state["utt_start"]) * hop_s, 3), "end_s": round(end_frame * hop_s, 3)}
        state["utt_index"] = np.asarray(int(state["utt_index"]) + 1, np.int64)
        state["utt_start"] = np.asarray(end_frame, np.int64)
        state["utt_tokens"] = np.zeros(0, np.int64)
        state["prev_token"] = np.full((), -1, np.int64)
        return fields

    def _endpoint(self, state: State, before: State, best: np.ndarray, tokens: List[int], first_mel: int,
                  n_mel: int) -> Tuple[List[AsrDelta], State]:
        """Ends the utterance if an endpoint falls in the chunk just stepped: partial delta and final.

        ``best`` is the CTC arg-max of the chunk's encoder frames; ``first_mel``/``n_mel`` the
        stream mel frames it covered. At an endpoint, the chunk's mel frames after it go back to
        the stream, which restarts there with a fresh encoder and decoder (a first chunk); the
        tokens decoded past the endpoint are dropped, the fresh encoder decodes them again.
        """
        config = self.endpointing
        hop_s = self.mel.hop_length / self.mel.sample_rate
        blank = self.asr.blank
        voiced = voiced_frames(before["voice"][:n_mel], len(best), config.voice_threshold)
        endpointer = Endpointer(config, self.later_frames / self.chunk * hop_s,
                                {"frames": int(state["ep_frames"]), "length": int(state["ep_length"]),
                                 "trailing": int(state["ep_trailing"])})
        start = endpointer.frames
        ends = endpointer.feed((best == blank) & ~voiced)
        end = ends[0] - start if ends else len(best)
        # Which frame emitted each token (CTC collapse, continuing from the last frame's label).
        emitted_at, previous = [], int(before["asr/last_token"][0])
        for t, label in enumerate(best.tolist()):
            if label != blank and label != previous:
                emitted_at.append(t)
            previous = label
        kept = [tok for tok, t in zip(tokens, emitted_at) if t <= end]
        end_mel = first_mel + min(n_mel, max(1, round((end + 1) * n_mel / max(len(best), 1))))
        outputs = [self._delta(state, kept, end_mel * hop_s)]
        state["utt_tokens"] = np.concatenate([state["utt_tokens"], kept]).astype(np.int64)
        if not ends:
            state.update({f"ep_{k}": np.asarray(v, np.int64) for k, v in endpointer.state.items()})
            return outputs, state
        if len(state["utt_tokens"]):
            outputs.append(self._final(state, end_mel, "endpoint"))
        else:  # nothing was said: the silence is dropped without an event
            state["utt_start"] = np.asarray(end_mel, np.int64)
            state["prev_token"] = np.full((), -1, np.int64)
        back = end_mel - first_mel
        state["mel"] = np.concatenate([before["mel"][:, back:n_mel], state["mel"]], axis=1)
        state["voice"] = np.concatenate([before["voice"][back:n_mel], state["voice"]])
        state.update(self._initial_operator_state())
        state.update(steps=np.zeros((), np.int64), ep_frames=np.asarray(ends[0] + 1, np.int64),
                     ep_length=np.zeros((), np.int64), ep_trailing=np.zeros((), np.int64))
        return outputs, state

    def delta_text(self, anchor: int, tokens: Sequence[int]) -> str:
        """Text that ``tokens`` add after token ``anchor`` (-1: start), word boundaries kept."""
        vocab = self.asr.vocabulary
        if not tokens:
            return ""
        if anchor < 0:
            return vocab.decode(list(tokens))
        before = vocab.decode([anchor])
        both = vocab.decode([anchor, *tokens])
        return both[len(before):] if both.startswith(before) else vocab.decode(list(tokens))


def load_live_asr(
    path: Optional[str] = None, att_context: Optional[Sequence[int]] = None, decoder: Optional[str] = None,
    endpointing: Optional[EndpointConfig] = None,
) -> LiveASR:
    """A ``LiveASR`` over a ``.nemo`` model (default: the embedded model in ``operators/assets``)."""
    from operators.asr.nemo_checkpoint import EMBEDDED_MODEL, load_nemo

    return LiveASR(load_nemo(path or EMBEDDED_MODEL, att_context, decoder), endpointing)


def random_live_asr(
    n_layers: int = 2, d_model: int = 64, n_heads: int = 4, subsampling_channels: int = 16,
    att_context: Sequence[int] = (70, 13), seed: int = 0, labels: str = "abcdefghijk ",
) -> LiveASR:
    """A ``LiveASR`` over a random-weight CTC model (tests; the large config for benchmarks)."""
    from operators.asr.config import EncoderConfig, ModelConfig
    from operators.asr.model import random_model
    from operators.asr.vocabulary import CharVocabulary

    encoder = EncoderConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                            subsampling_conv_channels=subsampling_channels)
    model = random_model(ModelConfig(encoder=encoder, vocab_size=len(labels)), seed=seed)
    return LiveASR(StreamingASR(model, CharVocabulary(list(labels)), att_context))
