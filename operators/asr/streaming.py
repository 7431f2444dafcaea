"""Cache-aware streaming FastConformer ASR, NeMo-compatible (no Beam import).

The operator reproduces the cache mechanics of NVIDIA NeMo's cache-aware streaming FastConformer
(Noroozi et al., *Stateful Conformer with Cache-based Inference for Streaming ASR*): a causal
``dw_striding`` ×8 subsampling with a 9-frame pre-encode cache, relative-position self-attention
over a cache of the last ``L`` normalised attention inputs, causal depthwise convolutions over a
cache of the last ``kernel−1`` frames, and CTC / RNNT greedy heads whose decoding continues across
chunk boundaries. Module and parameter names are NeMo's, so NeMo state dicts load as they are.

The streaming core is pure: ``step(features, lengths, state) -> (output, state)``, where the state
is a :class:`operators.asr.state.StreamState` of tensors, batched over independent streams (streams
join or leave a batch between steps with ``concat_states`` / ``select_streams`` there).

Chunking (frames after subsampling are 80 ms; ``C = R + 1`` for ``att_context [L, R]``): a
stream's first step takes ``8C − 7`` mel frames and every later step ``8C`` mel frames (1.12 s
of audio at ``[70, 13]``), each step yields ``C`` encoder frames. A shorter chunk ends the stream;
a zero-length chunk leaves the stream's state unchanged. The concatenated outputs equal the
offline forward with the same attention mask (``encode``) for every length.
"""

from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from operators.asr.config import chunk_sizes
from operators.asr.frontend import log_mel
from operators.asr.model import FastConformerASR
from operators.asr.state import StreamState


class StepOutput(NamedTuple):
    """What one streaming step returns.

    Attributes:
        encoded: ``[B, C, d]`` encoder frames of this step (frames past ``encoded_len`` are padding).
        encoded_len: ``[B]`` valid encoder frames per stream.
        tokens: New token ids per stream, decoded greedily.
    """

    encoded: torch.Tensor
    encoded_len: torch.Tensor
    tokens: List[List[int]]


class StreamingASR:
    """The ASR operator: offline and cache-aware streaming transcription with explicit state.

    Args:
        model: A :class:`FastConformerASR` (weights loaded, put in eval mode here).
        vocabulary: Maps token ids to text (:class:`CharVocabulary` / :class:`SentencePieceVocabulary`).
        att_context: Default ``[L, R]`` (any of a multi-look-ahead model's contexts).
        decoder: ``"rnnt"`` or ``"ctc"``; default RNNT for hybrid models, as NeMo.
    """

    def __init__(
        self,
        model: FastConformerASR,
        vocabulary,
        att_context: Optional[Sequence[int]] = None,
        decoder: Optional[str] = None,
    ):
        self.model = model.eval()
        self.vocabulary = vocabulary
        self.config = model.config
        self.att_context = tuple(att_context or self.config.encoder.att_context_size[0])
        self.decoder = decoder or ("ctc" if self.config.rnnt is None else "rnnt")
        if self.decoder not in ("ctc", "rnnt") or (self.decoder == "rnnt" and self.config.rnnt is None):
            raise ValueError(f"decoder {self.decoder!r} is not available for this model")
        self.blank = self.config.vocab_size

    def with_context(self, att_context: Sequence[int]) -> "StreamingASR":
        """The same operator (shared weights) at another look-ahead, e.g. ``[70, 0]``."""
        return StreamingASR(self.model, self.vocabulary, att_context, self.decoder)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def chunk_sizes(self) -> Tuple[int, int, int]:
        """``(C, first_mel, later_mel)`` for this operator's context (see :func:`chunk_sizes`)."""
        return chunk_sizes(self.att_context, self.config.encoder.att_context_style)

    def features(self, audio: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features ``[B, mels, F]`` and frame counts of mono float waveforms."""
        lengths = torch.tensor([len(a) for a in audio], dtype=torch.long)
        batch = torch.zeros(len(audio), max(1, int(lengths.max())) if len(audio) else 1)
        for row, samples in enumerate(audio):
            batch[row, : len(samples)] = torch.as_tensor(np.asarray(samples, dtype=np.float32))
        features, frames = log_mel(batch, lengths, self.config.mel)
        return features.to(self.dtype), frames

    def initial_state(self, batch: int) -> StreamState:
        """The state of ``batch`` new streams."""
        encoder_state = self.model.encoder.initial_state(batch, self.att_context, self.dtype)
        last_token = torch.full((batch,), self.blank, dtype=torch.long)
        if self.decoder == "rnnt":
            rnnt = self.config.rnnt
            zeros = torch.zeros(rnnt.pred_rnn_layers, batch, rnnt.pred_hidden, dtype=self.dtype)
            with torch.no_grad():
                pred_out, (h, c) = self.model.decoder.predict(last_token, (zeros, zeros))
        else:
            h = c = torch.zeros(1, batch, 0, dtype=self.dtype)
            pred_out = torch.zeros(batch, 0, dtype=self.dtype)
        return StreamState(*encoder_state, last_token, h, c, pred_out)

    def _check_decoder_state(self, state: StreamState) -> None:
        batch = state.last_token.shape[0]
        if self.decoder == "rnnt":
            rnnt = self.config.rnnt
            expected = (rnnt.pred_rnn_layers, batch, rnnt.pred_hidden)
        else:
            expected = (1, batch, 0)
        for name in ("pred_h", "pred_c"):
            if tuple(getattr(state, name).shape) != expected:
                raise ValueError(
                    f"state.{name} has shape {tuple(getattr(state, name).shape)}, but the {self.decoder} "
                    f"decoder needs {expected}; build it with StreamingASR.initial_state"
                )

    def _decode(
        self, encoded: torch.Tensor, valid: torch.Tensor, state: StreamState
    ) -> Tuple[List[List[int]], StreamState]:
        """Greedy decoding of ``valid`` frames per stream, continuing from the decoder state."""
        if self.decoder == "ctc":
            best = self.model.ctc_head(encoded).argmax(-1)
            tokens, last = [], state.last_token.clone()
            for row in range(best.shape[0]):
                emitted, previous = [], int(last[row])
                for token in best[row, : int(valid[row])].tolist():
                    if token != self.blank and token != previous:
                        emitted.append(token)
                    previous = token
                tokens.append(emitted)
                last[row] = previous
            return tokens, state._replace(last_token=last)
        return self._rnnt_greedy(encoded, valid, state)

    def _rnnt_greedy(self, encoded, valid, state):
        decoder, joint = self.model.decoder, self.model.joint
        h, c, pred_out, last = state.pred_h, state.pred_c, state.pred_out, state.last_token.clone()
        tokens: List[List[int]] = [[] for _ in range(encoded.shape[0])]
        for t in range(encoded.shape[1]):
            active = valid > t
            for _ in range(self.config.rnnt.max_symbols):
                if not bool(active.any()):
                    break
                best = joint(encoded[:, t], pred_out).argmax(-1)
                emit = active & (best != self.blank)
                if not bool(emit.any()):
                    break
                new_out, (new_h, new_c) = decoder.predict(torch.where(emit, best, self.blank), (h, c))
                keep = emit.view(1, -1, 1)
                h, c = torch.where(keep, new_h, h), torch.where(keep, new_c, c)
                pred_out = torch.where(emit.view(-1, 1), new_out, pred_out)
                last = torch.where(emit, best, last)
                for row in torch.nonzero(emit).flatten().tolist():
                    tokens[row].append(int(best[row]))
                active = emit
        return tokens, state._replace(pred_h=h, pred_c=c, pred_out=pred_out, last_token=last)

    @torch.no_grad()
    def step(
        self, features: torch.Tensor, lengths: torch.Tensor, state: StreamState
    ) -> Tuple[StepOutput, StreamState]:
        """One streaming step for a batch of streams (see the module docstring for chunk sizes).

        Args:
            features: ``[B, mels, W]`` mel chunks, left-aligned; ``lengths [B]`` valid frames.
            state: The streams' state (from :meth:`initial_state`, :func:`concat_states` …).

        Returns:
            ``(StepOutput, next_state)``.

        Raises:
            ValueError: a state whose shapes do not fit the model, context or decoder, or a chunk
                longer than the step takes.
        """
        if not isinstance(state, StreamState):
            raise ValueError(f"state must be a StreamState, got {type(state).__name__}")
        self.model.encoder.check_state(state, self.att_context)
        self._check_decoder_state(state)
        if features.shape[0] != state.last_token.shape[0] or features.shape[1] != self.config.encoder.feat_in:
            raise ValueError(
                f"features have shape {tuple(features.shape)}; expected [{state.last_token.shape[0]}, "
                f"{self.config.encoder.feat_in}, frames] to match the state's streams"
            )
        encoded, valid, caches = self.model.encoder.step(features, lengths, tuple(state[:6]), self.att_context)
        state = StreamState(*caches, *state[6:])
        tokens, state = self._decode(encoded, valid, state)
        return StepOutput(encoded, valid, tokens), state

    @torch.no_grad()
    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Offline encoder forward with this operator's attention mask."""
        return self.model.encoder(features.to(self.dtype), lengths, self.att_context)

    @torch.no_grad()
    def transcribe_features(self, features: torch.Tensor, lengths: torch.Tensor) -> List[List[int]]:
        """Offline transcription to token ids (same greedy decoding as the streaming path)."""
        encoded, valid = self.encode(features, lengths)
        tokens, _ = self._decode(encoded, valid, self.initial_state(features.shape[0]))
        return tokens

    def iter_chunks(self, features: torch.Tensor, lengths: torch.Tensor) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Cuts whole utterances into the chunks that :meth:`step` takes (a stream simulator)."""
        _, first, later = self.chunk_sizes()
        offset, width = 0, first
        while True:
            remaining = (lengths - offset).clamp(min=0)
            if offset > 0 and not bool((remaining > 0).any()):
                return
            chunk = features[:, :, offset : offset + width]
            yield chunk, remaining.clamp(max=width)
            offset, width = offset + width, later

    @torch.no_grad()
    def transcribe_features_streaming(self, features: torch.Tensor, lengths: torch.Tensor) -> List[List[int]]:
        """Streaming transcription of whole utterances, step by step (equals the offline result)."""
        state = self.initial_state(features.shape[0])
        tokens: List[List[int]] = [[] for _ in range(features.shape[0])]
        for chunk, chunk_lengths in self.iter_chunks(features.to(self.dtype), lengths):
            output, state = self.step(chunk, chunk_lengths, state)
            for row, new in enumerate(output.tokens):
                tokens[row].extend(new)
        return tokens

    def transcribe(self, audio: Sequence[np.ndarray], streaming: bool = False) -> List[str]:
        """Transcribes 16 kHz mono waveforms, offline or through the streaming steps."""
        if not audio:
            return []
        features, frames = self.features(audio)
        run = self.transcribe_features_streaming if streaming else self.transcribe_features
        return [self.vocabulary.decode(ids) for ids in run(features, frames)]
