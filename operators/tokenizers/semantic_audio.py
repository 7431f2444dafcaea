"""Semantic + acoustic audio tokens in the style of SemantiCodec (arXiv 2405.00233).

Front end (as SemantiCodec): 16 kHz, FIRST channel only (no downmix), Kaldi log-mel fbank
(128 bins, 25 ms / 10 ms, Hanning, no dither), normalised as ``(x + 4.2677393) / (2·4.5689974)``,
cut into 10.24 s windows of 1024 × 128 (the last one zero-padded), each split into 16 × 16
patches: 64 time × 8 frequency = 512 patches per window, 50 patches per second.

Tokens, one row per group of ``g`` neighbouring patches (the ``g`` frequency patches that
follow each other within one time step; ``g`` = 1, 2, 4):

* semantic: index of the nearest k-means centroid of the group's mean patch feature, from a
  pluggable patch encoder (default: low-frequency 2-D DCT, no weights needed);
* acoustic: ``n_acoustic`` residual-VQ indices of what the semantic centroid leaves
  unexplained, i.e. of ``mel_patches − semantic_decoder[semantic]``.

Layout ``[T, 1 + n_acoustic]``. SemantiCodec counts rates as tokens per second with one
semantic and one acoustic token per row, so ``g`` = 1/2/4 gives its rates 100/50/25
(``rows/s = 50/g``). The exact bitrate is ``rows/s × Σ log2(codebook sizes)``.

Decoding maps tokens back to the normalised mel (semantic decoder + acoustic codewords), then
to a waveform with Griffin-Lim on the pseudo-inverse of the mel filters, so reconstruction
quality can be measured. A model is a folder (``model.json`` + ``.npy`` arrays); the default
one ships in ``operators/assets/semantic_audio`` (made by ``mediabeam make-tokenizer-assets``).
"""

import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np

from operators.asset_paths import asset_path
from operators.kernels import nearest, rvq
from operators.media import kaldi_fbank
from operators.media.audio import decode_audio
from operators.media.ffmpeg_io import MediaBudgetExceeded
from operators.tokenizers.base import MediaError, TokenOutput, rms_dbfs
from operators.tokenizers.encoders import PatchEncoder, encoder_from_spec
from operators.tokenizers.model_folder import load_array, load_model_info, model_version, save_model_folder
from schemas.budgets import DEFAULT_BUDGETS

SAMPLE_RATE = 16000
NORM_MEAN = -4.2677393
NORM_STD = 4.5689974
WINDOW_FRAMES = 1024
PATCH = 16
FREQ_PATCHES = kaldi_fbank.NUM_MEL_BINS // PATCH
PATCH_DIM = PATCH * PATCH
PATCHES_PER_SECOND = 100 / PATCH * FREQ_PATCHES
RATE_TO_GROUP = {100: 1, 50: 2, 25: 4}
DEFAULT_MODEL_DIR = asset_path("semantic_audio")


def decode_first_channel(data: bytes | str, sample_rate: int = SAMPLE_RATE, max_seconds: Optional[float] = None,
                         media_seconds: float = DEFAULT_BUDGETS.media_seconds,
                         audio_samples: int = DEFAULT_BUDGETS.audio_samples) -> np.ndarray:
    """Decodes the first channel of the first audio stream to float32 at ``sample_rate``.

    See :func:`operators.media.audio.decode_audio` for the budgets and errors.
    """
    return decode_audio(data, sample_rate, max_seconds, first_channel=True,
                        media_seconds=media_seconds, audio_samples=audio_samples)


def normalise(fbank: np.ndarray) -> np.ndarray:
    """SemantiCodec's fbank normalisation."""
    return ((fbank - NORM_MEAN) / (2 * NORM_STD)).astype(np.float32)


def denormalise(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalise`."""
    return (x * (2 * NORM_STD) + NORM_MEAN).astype(np.float32)


def mel_patches(norm_fbank: np.ndarray) -> Tuple[np.ndarray, int]:
    """``[frames, 128]`` → (patches ``[n_time·8, 256]`` of the valid time steps, n_time).

    Frames are zero-padded to whole 10.24 s windows; only time steps that overlap the signal are
    returned (a window's padded tail produces no tokens). Order: time step, then frequency
    patch; each patch is 16 frames × 16 bins, row-major.
    """
    frames = norm_fbank.shape[0]
    windows = max(1, math.ceil(frames / WINDOW_FRAMES))
    padded = np.zeros((windows * WINDOW_FRAMES, kaldi_fbank.NUM_MEL_BINS), np.float32)
    padded[:frames] = norm_fbank
    n_time = math.ceil(frames / PATCH)
    p = padded[: n_time * PATCH].reshape(n_time, PATCH, FREQ_PATCHES, PATCH).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(p.reshape(n_time * FREQ_PATCHES, PATCH_DIM)), n_time


def unpatch(patches: np.ndarray, frames: int) -> np.ndarray:
    """Inverse of :func:`mel_patches`: ``[n_time·8, 256]`` → normalised fbank ``[frames, 128]``."""
    n_time = patches.shape[0] // FREQ_PATCHES
    x = patches.reshape(n_time, FREQ_PATCHES, PATCH, PATCH).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(x.reshape(n_time * PATCH, kaldi_fbank.NUM_MEL_BINS)[:frames])


class SemanticAudioModel(NamedTuple):
    """Everything the tokenizer needs (see the module docstring)."""

    group: int
    encoder: PatchEncoder
    semantic: np.ndarray
    semantic_decoder: np.ndarray
    acoustic: Tuple[np.ndarray, ...]
    info: Dict[str, Any]

    def codebook_sizes(self) -> Tuple[int, ...]:
        """Sizes of the semantic codebook then of each acoustic stage."""
        return (self.semantic.shape[0],) + tuple(c.shape[0] for c in self.acoustic)


def group_rows(patches: np.ndarray, group: int) -> np.ndarray:
    """Concatenates ``group`` neighbouring patches: ``[M, d]`` → ``[M/group, group·d]``."""
    return patches.reshape(patches.shape[0] // group, group * patches.shape[1])


def semantic_features(encoder: PatchEncoder, patches: np.ndarray, group: int) -> np.ndarray:
    """Mean encoder feature of each group of patches ``[M/group, F]``."""
    feats = np.asarray(encoder(patches), np.float32)
    return feats.reshape(feats.shape[0] // group, group, feats.shape[1]).mean(axis=1)


def clip_rows(encoder: PatchEncoder, wave: np.ndarray, group: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Waveform → (semantic features, mel targets ``[T, group·256]``, frames): what a model sees."""
    fb = normalise(kaldi_fbank.fbank(wave))
    if fb.shape[0] == 0:
        raise MediaError(f"audio shorter than one 25 ms frame ({wave.size} samples)")
    patches, _ = mel_patches(fb)
    return semantic_features(encoder, patches, group), group_rows(patches, group), fb.shape[0]


def encode_rows(model: SemanticAudioModel, feats: np.ndarray, targets: np.ndarray,
                device: str = "auto") -> np.ndarray:
    """Semantic + residual acoustic tokens ``[T, 1 + n_acoustic]`` int64 for prepared rows."""
    sem, _ = nearest.nearest(feats, model.semantic, device=device)
    tokens = np.empty((len(sem), 1 + len(model.acoustic)), np.int64)
    tokens[:, 0] = sem
    if model.acoustic:
        residual = targets - model.semantic_decoder[sem]
        tokens[:, 1:], _ = rvq.rvq_encode(residual, model.acoustic, device=device)
    return tokens


def decode_rows(model: SemanticAudioModel, tokens: np.ndarray) -> np.ndarray:
    """Tokens → mel targets ``[T, group·256]`` (semantic decoder + acoustic codewords)."""
    tokens = np.asarray(tokens, np.int64).reshape(-1, 1 + len(model.acoustic))
    out = model.semantic_decoder[tokens[:, 0]].astype(np.float32)
    if model.acoustic:
        out += rvq.rvq_decode(tokens[:, 1:], model.acoustic)
    return out


def griffin_lim(log_mel: np.ndarray, iterations: int = 32, seed: int = 0) -> np.ndarray:
    """Waveform whose Kaldi fbank approximates ``log_mel`` ``[frames, 128]``.

    The mel energies are mapped to a linear power spectrum with the pseudo-inverse of the
    filters, the pre-emphasis response is divided out, and the phase is found by Griffin-Lim
    on 25 ms Hann frames every 10 ms.
    """
    import torch

    length, hop, n_fft = kaldi_fbank.frame_sizes(SAMPLE_RATE)
    banks = kaldi_fbank.mel_banks().astype(np.float64)
    power = np.maximum(np.exp(log_mel.astype(np.float64)) @ np.linalg.pinv(banks).T, 0.0)
    omega = np.pi * np.arange(n_fft // 2 + 1) / (n_fft // 2)
    emphasis = np.abs(1 - kaldi_fbank.PREEMPHASIS * np.exp(-1j * omega)) ** 2
    mag = torch.from_numpy(np.sqrt(power / np.maximum(emphasis, 1e-3)).T.astype(np.float32))
    window = torch.from_numpy(kaldi_fbank.hanning(length).astype(np.float32))
    gen = torch.Generator().manual_seed(seed)
    angles = torch.exp(2j * math.pi * torch.rand(mag.shape, generator=gen))
    num = (log_mel.shape[0] - 1) * hop
    wave = torch.zeros(num)
    for _ in range(max(1, iterations)):
        # center=True frames are centred on i·hop; Kaldi's frame i is centred on i·hop + length/2.
        wave = torch.istft(mag * angles, n_fft, hop, length, window, center=True, length=num)
        spec = torch.stft(wave, n_fft, hop, length, window, center=True, return_complex=True)
        angles = torch.exp(1j * torch.angle(spec[:, : mag.shape[1]]))
    out = np.zeros(num + length, np.float32)
    out[length // 2: length // 2 + num] = wave.numpy()
    return out


def save_model(directory: str, model: SemanticAudioModel, float16: bool = False) -> None:
    """Writes ``model.json`` + arrays; ``float16`` halves the size of the shipped defaults.

    The semantic codebook stays float32: its nearest-centroid choices are the tokens.
    """
    arrays = {"semantic": model.semantic, "semantic_decoder": model.semantic_decoder}
    arrays.update({f"acoustic_{i}": a for i, a in enumerate(model.acoustic)})
    info = {**model.info, "group": model.group, "n_acoustic": len(model.acoustic),
            "codebook_sizes": list(model.codebook_sizes()), "encoder": model.encoder.spec}
    save_model_folder(directory, info, {
        name: arr.astype(np.float16 if float16 and name != "semantic" else np.float32)
        for name, arr in arrays.items()})


def load_model(directory: str, encoder_path: Optional[str] = None) -> SemanticAudioModel:
    """Reads a model folder; ``encoder_path`` overrides the encoder recorded in it."""
    info = load_model_info(directory, "semantic-audio", "audio")
    return SemanticAudioModel(
        group=int(info["group"]), encoder=encoder_from_spec(info["encoder"], encoder_path),
        semantic=load_array(directory, "semantic"),
        semantic_decoder=load_array(directory, "semantic_decoder"),
        acoustic=tuple(load_array(directory, f"acoustic_{i}") for i in range(int(info["n_acoustic"]))),
        info=info,
    )


class SemanticAudioTokenizer:
    """Audio → ``[T, 1 + n_acoustic]`` semantic + acoustic tokens, and back to a waveform.

    Args:
        model_dir: Model folder (default: the shipped ``assets/semantic_audio``).
        encoder_path: Plug-in patch encoder file replacing the model's encoder (its features
            must match the semantic codebook's dimension).
        max_seconds: Tokenize at most this many seconds from the start.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the VQ kernels.
        griffin_lim_iterations: Phase-retrieval iterations in :meth:`decode`.
        media_seconds: Budget: longest audio tokenized (longer payloads are refused) or decoded.
        audio_samples: Budget: most samples decoded from one payload.
    """

    name = "semantic-audio"
    modality = "audio"

    def __init__(self, model_dir: Optional[str] = None, encoder_path: Optional[str] = None,
                 max_seconds: Optional[float] = None, device: str = "auto",
                 griffin_lim_iterations: int = 16, media_seconds: float = DEFAULT_BUDGETS.media_seconds,
                 audio_samples: int = DEFAULT_BUDGETS.audio_samples):
        self.model_dir = model_dir or DEFAULT_MODEL_DIR
        self.encoder_path = encoder_path
        self.max_seconds = max_seconds
        self.device = device
        self.griffin_lim_iterations = griffin_lim_iterations
        self.media_seconds = media_seconds
        self.audio_samples = audio_samples
        self._model: Optional[SemanticAudioModel] = None
        self._version: Optional[str] = None

    @property
    def version(self) -> str:
        """Content hash of the model folder (and plug-in encoder): it pins what the tokens mean."""
        if self._version is None:
            self._version = model_version(self.model_dir, (self.encoder_path,))
        return self._version

    def codebook_sizes(self) -> Tuple[int, ...]:
        """Semantic then acoustic codebook sizes, from ``model.json`` (no weights loaded)."""
        info = load_model_info(self.model_dir, "semantic-audio", "audio")
        return tuple(int(k) for k in info["codebook_sizes"])

    @property
    def model(self) -> SemanticAudioModel:
        """The model, loaded on first use (constructors stay cheap)."""
        if self._model is None:
            self._model = load_model(self.model_dir, self.encoder_path)
        return self._model

    def rows_per_second(self) -> float:
        """Token rows per second of audio (50 / group)."""
        return PATCHES_PER_SECOND / self.model.group

    def bitrate_bps(self) -> float:
        """Exact bitrate: rows/s × Σ log2(codebook sizes)."""
        return self.rows_per_second() * sum(math.log2(k) for k in self.model.codebook_sizes())

    def encode_wave(self, wave: np.ndarray) -> TokenOutput:
        """Tokenizes a 16 kHz mono waveform."""
        feats, targets, frames = clip_rows(self.model.encoder, wave, self.model.group)
        tokens = encode_rows(self.model, feats, targets, self.device)
        return TokenOutput(tokens, {
            "duration_s": wave.size / SAMPLE_RATE, "sample_rate": SAMPLE_RATE, "frames": frames,
            "rows_per_s": self.rows_per_second(), "rate": 2 * self.rows_per_second(),
            "bitrate_bps": self.bitrate_bps(), "rms_dbfs": rms_dbfs(wave),
        })

    def encode(self, data: bytes) -> TokenOutput:
        """Tokenizes one encoded audio payload; raises ``MediaError`` on bad input."""
        return self.encode_wave(decode_first_channel(data, SAMPLE_RATE, self.max_seconds,
                                                     self.media_seconds, self.audio_samples))

    def decode_mel(self, tokens: np.ndarray, frames: Optional[int] = None) -> np.ndarray:
        """Tokens → Kaldi log-mel ``[frames, 128]`` (all time steps when ``frames`` is None).

        Raises:
            MediaBudgetExceeded: The tokens describe more than ``media_seconds`` of audio.
        """
        rows = np.size(tokens) // (1 + len(self.model.acoustic))
        seconds = rows / self.rows_per_second()
        if seconds > self.media_seconds:
            raise MediaBudgetExceeded("media_seconds", self.media_seconds,
                                      f"{rows} token rows decode to {seconds:.1f} s")
        rows = decode_rows(self.model, tokens)
        patches = rows.reshape(-1, PATCH_DIM)
        n = patches.shape[0] // FREQ_PATCHES * PATCH
        return denormalise(unpatch(patches, n if frames is None else frames))

    def decode(self, tokens: np.ndarray, frames: Optional[int] = None) -> np.ndarray:
        """Tokens → 16 kHz waveform (Griffin-Lim)."""
        return griffin_lim(self.decode_mel(tokens, frames), self.griffin_lim_iterations)


def log_mel_distance(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean absolute difference of two log-mel spectrograms in dB (over the shorter length)."""
    n = min(len(reference), len(other))
    return float(np.mean(np.abs(reference[:n] - other[:n])) * 10 / math.log(10))
